"""The whole stack started by bin/start.sh on ports of its own, against the test database and a broker
namespace of its own, so a developer's running stack and data are left alone."""

import asyncio
import os
import re
import signal
import socket
from pathlib import Path

import aiohttp
import pytest

from tests.factories import free_ports

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 90.0
STOP_TIMEOUT = 30.0
PORT_NAMES = (
    "GATEWAY_PORT",
    "SMS_SERVICE_PORT",
    "EMAIL_SERVICE_PORT",
    "CONVERSATION_SERVICE_PORT",
    "SMS_PROVIDER_PORT",
    "EMAIL_PROVIDER_PORT",
)
# Each process of bin/start.sh by the name its log lines carry, and the variable of its port.
PORT_OF_PROCESS = {
    "gateway": "GATEWAY_PORT",
    "sms_service": "SMS_SERVICE_PORT",
    "email_service": "EMAIL_SERVICE_PORT",
    "conversation_service": "CONVERSATION_SERVICE_PORT",
    "sms_provider": "SMS_PROVIDER_PORT",
    "email_provider": "EMAIL_PROVIDER_PORT",
}


def port_is_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class Stack:
    def __init__(self, process: asyncio.subprocess.Process, env: dict[str, str], log: Path) -> None:
        self.process = process
        self.env = env
        self.log = log
        self.ports = {name: int(env[name]) for name in PORT_NAMES}
        self.base_url = f"http://127.0.0.1:{self.ports['GATEWAY_PORT']}"

    def url_of(self, process: str) -> str:
        return f"http://127.0.0.1:{self.ports[PORT_OF_PROCESS[process]]}"

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def pids_of(self, process: str) -> list[int]:
        """Every pid the supervisor started `process` with, the first start first."""
        return [
            int(pid)
            for pid in re.findall(rf"^\[supervise\] {process} (?:re)?started \(pid (\d+)\)$", self.text(), re.M)
        ]


def stack_environment(
    database_url: str, database_owner_url: str, amqp_url: str, broker_namespace: str, **extra: str
) -> dict[str, str]:
    ports = free_ports(len(PORT_NAMES))
    port = dict(zip(PORT_NAMES, ports, strict=True))
    return {
        **os.environ,
        **{name: str(number) for name, number in port.items()},
        "SMS_PROVIDER_URL": f"http://127.0.0.1:{port['SMS_PROVIDER_PORT']}",
        "EMAIL_PROVIDER_URL": f"http://127.0.0.1:{port['EMAIL_PROVIDER_PORT']}",
        "CONVERSATION_SERVICE_URL": f"http://127.0.0.1:{port['CONVERSATION_SERVICE_PORT']}",
        "DATABASE_URL": database_url,
        # bin/start.sh migrates first, as the owner: of the test database, never the developer's.
        "DATABASE_OWNER_URL": database_owner_url,
        "AMQP_URL": amqp_url,
        "BROKER_NAMESPACE": broker_namespace,
        "START_TIMEOUT_SECONDS": str(START_TIMEOUT),
        **extra,
    }


async def launch(env: dict[str, str], log: Path) -> Stack:
    with log.open("wb") as output:
        process = await asyncio.create_subprocess_exec(
            str(ROOT / "bin" / "start.sh"),
            env=env,
            stdout=output,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    return Stack(process, env, log)


async def stop(stack: Stack) -> None:
    if stack.process.returncode is None:
        stack.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(stack.process.wait(), STOP_TIMEOUT)
        except TimeoutError:
            os.killpg(stack.process.pid, signal.SIGKILL)
            await stack.process.wait()


async def wait_until_ready(stack: Stack) -> None:
    deadline = asyncio.get_running_loop().time() + START_TIMEOUT + 30
    async with aiohttp.ClientSession() as session:
        while asyncio.get_running_loop().time() < deadline:
            assert stack.process.returncode is None, f"bin/start.sh exited early:\n{stack.text()[-5000:]}"
            if "the stack is ready" in stack.text():
                async with session.get(f"{stack.base_url}/readyz") as response:
                    assert response.status == 200
                return
            await asyncio.sleep(0.2)
    pytest.fail(f"stack not ready in time:\n{stack.text()[-5000:]}")
