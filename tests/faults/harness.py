"""Services as real processes, each with an environment of its own, that a test can kill, stop and
start again; plus the probes the fault tests read the outcome with (the database, the broker, the
mock providers), none of which goes through a test's proxy."""

import asyncio
import os
import signal
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import psycopg2

from common.broker import Topology
from email_service.mock_keys import generate_event_keys
from tests.factories import eventually
from tests.prometheus import Samples, parse

ROOT = Path(__file__).resolve().parents[2]
# Up to six services start cold at once on a busy 2-core CI machine; a healthy start waits none of it.
READY_TIMEOUT_SECONDS = 90.0
STOP_TIMEOUT_SECONDS = 30.0
# A receipt is posted a second after its send and, if refused, again 1, 2 and 4 s later.
DRAIN_TIMEOUT_SECONDS = 30.0
LOG_TAIL_CHARS = 8000


@dataclass(frozen=True)
class ServiceKind:
    module: str
    port_variable: str


KINDS: Mapping[str, ServiceKind] = {
    "gateway": ServiceKind("gateway", "GATEWAY_PORT"),
    "conversation_service": ServiceKind("conversation_service", "CONVERSATION_SERVICE_PORT"),
    "sms_service": ServiceKind("sms_service", "SMS_SERVICE_PORT"),
    "email_service": ServiceKind("email_service", "EMAIL_SERVICE_PORT"),
    "sms_provider": ServiceKind("sms_service.mock_provider", "SMS_PROVIDER_PORT"),
    "email_provider": ServiceKind("email_service.mock_provider", "EMAIL_PROVIDER_PORT"),
}


@dataclass
class Service:
    """One process of the stack. `env` is its whole environment; `start()` may be called again
    after it exited, with the same ports, as a supervisor would restart it."""

    name: str
    kind: ServiceKind
    port: int
    env: dict[str, str]
    log_path: Path
    process: asyncio.subprocess.Process | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def start(self) -> None:
        assert not self.running, f"{self.name} is already running"
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"----- start #{self.starts} of {self.name} -----\n".encode())
            log.flush()
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                self.kind.module,
                env=self.env,
                # Away from the developer's .env, which every process would otherwise read.
                cwd=self.log_path.parent,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )

    async def wait_ready(self, session: aiohttp.ClientSession, within: float = READY_TIMEOUT_SECONDS) -> None:
        async def ready() -> bool:
            assert self.running, f"{self.name} exited with {self.process and self.process.returncode}"
            return await self.readyz(session) == 200

        await eventually(ready, f"{self.name} ready", timeout=within, interval=0.1)

    async def readyz(self, session: aiohttp.ClientSession) -> int | None:
        """Its /readyz status, or None when nothing answers."""
        body = await self.readyz_body(session)
        return None if body is None else body[0]

    async def readyz_body(self, session: aiohttp.ClientSession) -> tuple[int, Any] | None:
        try:
            async with session.get(f"{self.url}/readyz", timeout=aiohttp.ClientTimeout(total=5)) as response:
                return response.status, await response.json()
        except (aiohttp.ClientError, TimeoutError):
            return None

    async def metrics(self, session: aiohttp.ClientSession) -> Samples:
        async with session.get(f"{self.url}/metrics", timeout=aiohttp.ClientTimeout(total=5)) as response:
            assert response.status == 200, await response.text()
            return parse(await response.text())

    async def kill(self) -> int:
        """SIGKILL: no cleanup of any kind, as the kernel's OOM killer or a pulled plug would do it."""
        assert self.process is not None and self.running
        self.process.send_signal(signal.SIGKILL)
        return await self.process.wait()

    async def terminate(self, within: float = STOP_TIMEOUT_SECONDS) -> tuple[int, float]:
        """SIGTERM, as an orchestrator stops a container; its exit status and how long it took."""
        assert self.process is not None and self.running
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(self.process.wait(), within)
        except TimeoutError:
            self.process.send_signal(signal.SIGKILL)
            await self.process.wait()
            raise AssertionError(f"{self.name} did not exit within {within:g}s of SIGTERM") from None
        return code, time.monotonic() - started

    async def restart(self, session: aiohttp.ClientSession) -> None:
        await self.start()
        await self.wait_ready(session)

    def log_tail(self) -> str:
        """The end of its log without the access-log lines, which would bury everything else."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else "(no log)"
        lines = [line for line in text.splitlines() if ' HTTP/1.1" ' not in line]
        return "\n".join(lines)[-LOG_TAIL_CHARS:]

    def log_count(self, fragment: str) -> int:
        return self.log_path.read_text(errors="replace").count(fragment) if self.log_path.exists() else 0


@dataclass
class Harness:
    """A stack of the processes a test asks for, on free ports, sharing one environment that each
    service can override (a proxied DATABASE_URL or AMQP_URL, a shorter grace period)."""

    base_env: dict[str, str]
    ports: dict[str, int]
    directory: Path
    namespace: str
    amqp_url: str
    database_url: str
    session: aiohttp.ClientSession
    services: dict[str, Service] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Service:
        return self.services[name]

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['gateway']}"

    def add(self, name: str, **overrides: str) -> Service:
        kind = KINDS[name]
        service = Service(
            name,
            kind,
            self.ports[name],
            {**self.base_env, **overrides},
            self.directory / f"{name}.log",
        )
        self.services[name] = service
        return service

    async def start(self, names: Iterable[str], overrides: Mapping[str, Mapping[str, str]] | None = None) -> None:
        """Start the named services at once and wait until every one is ready."""
        started = [self.add(name, **(overrides or {}).get(name, {})) for name in names]
        for service in started:
            await service.start()
        await asyncio.gather(*(service.wait_ready(self.session) for service in started))

    async def stop_all(self) -> None:
        for service in self.services.values():
            if service.running:
                assert service.process is not None
                service.process.send_signal(signal.SIGTERM)
        for service in self.services.values():
            if service.process is not None and service.process.returncode is None:
                try:
                    await asyncio.wait_for(service.process.wait(), STOP_TIMEOUT_SECONDS)
                except TimeoutError:
                    os.killpg(service.process.pid, signal.SIGKILL)
                    await service.process.wait()

    def logs(self) -> str:
        return "\n".join(f"===== {s.name} ({s.log_path}) =====\n{s.log_tail()}" for s in self.services.values())

    # Probes: straight to PostgreSQL, RabbitMQ and the mocks, never through a test's proxy.

    def query(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        [rows] = self.snapshot((sql, params))
        return rows

    def snapshot(self, *statements: tuple[str, Any]) -> list[list[tuple[Any, ...]]]:
        """Each (sql, params)'s rows, all read in one snapshot: a batch that commits between two of
        them is in both or in neither."""
        connection = psycopg2.connect(self.database_url)
        try:
            connection.set_session(isolation_level="REPEATABLE READ", readonly=True)
            with connection, connection.cursor() as cursor:
                results = []
                for sql, params in statements:
                    cursor.execute(sql, params)
                    results.append(cursor.fetchall())
                return results
        finally:
            connection.close()

    async def stored_count(self) -> int:
        return (await asyncio.to_thread(self.query, "SELECT count(*) FROM messages"))[0][0]

    async def queue_depths(self) -> dict[str, int]:
        """Ready messages of every queue and dead-letter queue of the test's namespace, and of the
        gateway's quarantine: a receipt whose signature failed would be there (a passive declare counts
        ready messages only, not those delivered and unacked)."""
        topology = Topology(self.namespace)
        depths: dict[str, int] = {}
        connection = await aio_pika.connect(self.amqp_url)
        async with connection:
            channel = await connection.channel()
            names = [name for spec in topology.queues for name in (spec.name, spec.dead_letter_name)]
            for name in [*names, topology.quarantine.name]:
                queue = await channel.declare_queue(name, passive=True)
                depths[name] = queue.declaration_result.message_count or 0
        return depths

    async def drained(self, within: float = DRAIN_TIMEOUT_SECONDS) -> None:
        """Wait until every queue and dead-letter queue of the namespace is empty: the stored count can
        be complete while the mocks' delivery receipts are still arriving and being queued."""

        async def empty() -> bool:
            return set((await self.queue_depths()).values()) == {0}

        try:
            await eventually(empty, "every queue empty", timeout=within, interval=0.25)
        except AssertionError:
            raise AssertionError(f"queues not empty after {within:g}s: {await self.queue_depths()}") from None

    async def provider_records(self, name: str) -> list[dict[str, Any]]:
        async with self.session.get(f"{self[name].url}/messages") as response:
            assert response.status == 200
            return (await response.json())["messages"]


def base_environment(ports: Mapping[str, int], database_url: str, amqp_url: str, namespace: str) -> dict[str, str]:
    env = {
        **os.environ,
        **{KINDS[name].port_variable: str(port) for name, port in ports.items()},
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
        "LOG_FORMAT": "text",
        "LOG_LEVEL": "INFO",
        "DATABASE_URL": database_url,
        "AMQP_URL": amqp_url,
        "BROKER_NAMESPACE": namespace,
        "SMS_PROVIDER_URL": f"http://127.0.0.1:{ports['sms_provider']}",
        "EMAIL_PROVIDER_URL": f"http://127.0.0.1:{ports['email_provider']}",
        "CONVERSATION_SERVICE_URL": f"http://127.0.0.1:{ports['conversation_service']}",
        "SHUTDOWN_GRACE_SECONDS": "5",
    }
    env.update(_receipt_callbacks(ports["gateway"]))
    # Signing on: the mocks sign every receipt and the gateway verifies each one.
    env.update(generate_event_keys())
    env["PUBLIC_BASE_URL"] = f"http://127.0.0.1:{ports['gateway']}"
    return env


def _receipt_callbacks(gateway_port: int) -> dict[str, str]:
    """Point the mocks' delivery receipts at this test's gateway: their defaults name the gateway on
    :8080, a developer's, whose data must not see these receipts."""
    return {
        "SMS_STATUS_CALLBACK_URL": f"http://127.0.0.1:{gateway_port}/api/webhooks/sms/status",
        "EMAIL_MOCK_EVENT_WEBHOOK_URL": f"http://127.0.0.1:{gateway_port}/api/webhooks/email/status",
        "SMS_MOCK_INBOUND_WEBHOOK_URL": f"http://127.0.0.1:{gateway_port}/api/webhooks/sms",
        "EMAIL_MOCK_INBOUND_WEBHOOK_URL": f"http://127.0.0.1:{gateway_port}/api/webhooks/email",
    }
