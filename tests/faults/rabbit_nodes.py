"""RabbitMQ nodes of a test's own, next to the machine's: each with its own node name, AMQP and
distribution ports, config, data and log directories, and an Erlang cookie under the test's directory;
alone (to run with a config the machine's node does not have, a short consumer_timeout) or joined into
a cluster. The machine's node on 5672 is never touched."""

import asyncio
import json
import os
import secrets
import shutil
import signal
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aio_pika

from tests.factories import eventually, free_ports

# The Debian wrapper in /usr/sbin switches to the rabbitmq user, who could not write the test's
# directories; the scripts it wraps run as whoever starts them.
_BIN = Path("/usr/lib/rabbitmq/bin")
READY_TIMEOUT_SECONDS = 60.0


def _tool(name: str) -> str:
    found = _BIN / name if (_BIN / name).exists() else shutil.which(name)
    assert found, f"{name} not found: the cluster tests need a RabbitMQ installation (3.10 or newer)"
    return str(found)


@dataclass
class RabbitNode:
    name: str
    port: int
    dist_port: int
    directory: Path
    home: Path
    consumer_timeout_ms: int | None = None
    # The node it joins as it starts (classic config peer discovery); the first node boots alone.
    joins: str | None = None
    process: asyncio.subprocess.Process | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def _environment(self) -> dict[str, str]:
        config = [f"listeners.tcp.default = 127.0.0.1:{self.port}"]
        advanced = "[]."
        if self.joins is not None:
            # It starts with the others; it may be up before the node it joins, so it keeps trying.
            config += [
                "cluster_formation.peer_discovery_backend = classic_config",
                f"cluster_formation.classic_config.nodes.1 = {self.joins}",
                "cluster_formation.discovery_retry_limit = 240",
                "cluster_formation.discovery_retry_interval = 250",
            ]
        if self.consumer_timeout_ms is not None:
            config.append(f"consumer_timeout = {self.consumer_timeout_ms}")
            # The broker checks consumer timeouts on its channel tick, once a minute by default.
            advanced = "[{rabbit, [{channel_tick_interval, 500}]}]."
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "rabbitmq.conf").write_text("\n".join(config) + "\n")
        (self.directory / "advanced.config").write_text(advanced + "\n")
        (self.directory / "enabled_plugins").write_text("[].\n")
        (self.directory / "rabbitmq-env.conf").write_text("")
        return {
            **os.environ,
            "HOME": str(self.home),
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            # Its own files throughout: the machine's config pins the listener to 5672.
            "RABBITMQ_CONF_ENV_FILE": str(self.directory / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(self.directory / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.directory / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.directory / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(self.directory / "data"),
            "RABBITMQ_LOG_BASE": str(self.directory / "log"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    async def start(self) -> None:
        assert not self.running
        environment = self._environment()
        with (self.directory / "server.out").open("ab") as out:
            self.process = await asyncio.create_subprocess_exec(
                _tool("rabbitmq-server"),
                env=environment,
                cwd=self.directory,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                # Its own process group: a kill reaches the beam and everything it started.
                start_new_session=True,
            )

    async def wait_ready(self, within: float = READY_TIMEOUT_SECONDS) -> None:
        async def answers() -> bool:
            assert self.running, f"{self.name} exited: {self.log_tail()}"
            try:
                connection = await aio_pika.connect(self.url, timeout=2)
            except Exception:
                return False
            await connection.close()
            return True

        await eventually(answers, f"{self.name} accepting AMQP connections", timeout=within, interval=0.25)

    async def ctl(self, *arguments: str) -> str:
        process = await asyncio.create_subprocess_exec(
            _tool("rabbitmqctl"),
            "-n",
            self.name,
            *arguments,
            env={**os.environ, "HOME": str(self.home)},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await process.communicate()
        assert process.returncode == 0, f"rabbitmqctl {' '.join(arguments)} on {self.name}: {output.decode()}"
        return output.decode()

    async def wait_clustered(self, names: tuple[str, ...], within: float = READY_TIMEOUT_SECONDS) -> None:
        async def all_running() -> bool:
            status = await self.ctl("cluster_status", "--formatter", "json")
            return set(json.loads(status)["running_nodes"]) == set(names)

        await eventually(all_running, f"{', '.join(names)} running as one cluster", timeout=within, interval=0.5)

    async def kill(self) -> None:
        """SIGKILL of the node's beam and its helpers, as a crashed machine would end it."""
        assert self.process is not None and self.running
        os.killpg(self.process.pid, signal.SIGKILL)
        await self.process.wait()

    def log_tail(self, chars: int = 3000) -> str:
        out = self.directory / "server.out"
        return out.read_text(errors="replace")[-chars:] if out.exists() else "(no output)"


@asynccontextmanager
async def rabbit_nodes(
    directory: Path, count: int, *, consumer_timeout_ms: int | None = None
) -> AsyncIterator[list[RabbitNode]]:
    """`count` fresh nodes, forming one cluster when more than one: the first, then the others at once;
    killed and left behind in `directory` afterwards."""
    run = uuid.uuid4().hex[:6]
    home = directory / "home"
    home.mkdir(parents=True, exist_ok=True)
    # Written before any node starts: nodes starting at once would each make a cookie of their own.
    cookie = home / ".erlang.cookie"
    cookie.write_text(secrets.token_hex(20))
    cookie.chmod(0o400)
    ports = free_ports(2 * count)
    names = tuple(f"msgtest-{run}-{index}@localhost" for index in range(count))
    nodes = [
        RabbitNode(
            names[index],
            ports[2 * index],
            ports[2 * index + 1],
            directory / f"node-{index}",
            home,
            consumer_timeout_ms,
            names[0] if index else None,
        )
        for index in range(count)
    ]
    try:
        # The first node is up before the others join it: a node that joins one still enabling its
        # feature flags can sync the older table layout and fail to boot (RabbitMQ 3.10 logs
        # schema_integrity_check_failed, table_attributes_mismatch).
        await nodes[0].start()
        await nodes[0].wait_ready()
        for node in nodes[1:]:
            await node.start()
        await asyncio.gather(*(node.wait_ready() for node in nodes[1:]))
        if count > 1:
            await nodes[0].wait_clustered(names)
        yield nodes
    finally:
        for node in nodes:
            if node.running:
                await node.kill()
