"""End to end: the whole stack started by bin/start.sh, toured by bin/test.sh, read back like a client.

The stack runs on ports of its own, against the test database and a broker namespace of its own, so
a developer's running stack and data are left alone.
"""

import asyncio
import os
import signal
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.factories import free_ports

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 90.0
PORT_NAMES = (
    "GATEWAY_PORT",
    "SMS_SERVICE_PORT",
    "EMAIL_SERVICE_PORT",
    "CONVERSATION_SERVICE_PORT",
    "SMS_PROVIDER_PORT",
    "EMAIL_PROVIDER_PORT",
)


def port_is_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Stack:
    def __init__(self, process: asyncio.subprocess.Process, env: dict[str, str], log: Path) -> None:
        self.process = process
        self.env = env
        self.log = log
        self.ports = {name: int(env[name]) for name in PORT_NAMES}
        self.base_url = f"http://127.0.0.1:{self.ports['GATEWAY_PORT']}"


@pytest.fixture
async def stack(
    database_url: str, database_owner_url: str, amqp_url: str, broker_namespace: str, tmp_path: Path
) -> AsyncIterator[Stack]:
    ports = free_ports(len(PORT_NAMES))
    env = {
        **os.environ,
        **dict(zip(PORT_NAMES, map(str, ports), strict=True)),
        "SMS_PROVIDER_URL": f"http://127.0.0.1:{ports[PORT_NAMES.index('SMS_PROVIDER_PORT')]}",
        "EMAIL_PROVIDER_URL": f"http://127.0.0.1:{ports[PORT_NAMES.index('EMAIL_PROVIDER_PORT')]}",
        "CONVERSATION_SERVICE_URL": f"http://127.0.0.1:{ports[PORT_NAMES.index('CONVERSATION_SERVICE_PORT')]}",
        "DATABASE_URL": database_url,
        # bin/start.sh migrates first, as the owner: of the test database, never the developer's.
        "DATABASE_OWNER_URL": database_owner_url,
        "AMQP_URL": amqp_url,
        "BROKER_NAMESPACE": broker_namespace,
        "START_TIMEOUT_SECONDS": str(START_TIMEOUT),
    }
    log = tmp_path / "stack.log"
    with log.open("wb") as output:
        process = await asyncio.create_subprocess_exec(
            str(ROOT / "bin" / "start.sh"),
            env=env,
            stdout=output,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    stack = Stack(process, env, log)
    try:
        await wait_until_ready(stack)
        yield stack
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                os.killpg(process.pid, signal.SIGKILL)
                await process.wait()


async def wait_until_ready(stack: Stack) -> None:
    deadline = asyncio.get_running_loop().time() + START_TIMEOUT + 30
    async with aiohttp.ClientSession() as session:
        while asyncio.get_running_loop().time() < deadline:
            assert stack.process.returncode is None, f"bin/start.sh exited early:\n{stack.log.read_text()[-5000:]}"
            if "the stack is ready" in stack.log.read_text():
                async with session.get(f"{stack.base_url}/readyz") as response:
                    assert response.status == 200
                return
            await asyncio.sleep(0.2)
    pytest.fail(f"stack not ready in time:\n{stack.log.read_text()[-5000:]}")


async def get_json(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def settled_conversations(session: aiohttp.ClientSession, base_url: str) -> list[dict[str, Any]]:
    """Conversations once every message is stored and every send has its delivery receipt."""
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        conversations = (await get_json(session, f"{base_url}/api/conversations"))["conversations"]
        statuses = [
            message["status"]
            for conversation in conversations
            for message in (await get_json(session, f"{base_url}/api/conversations/{conversation['id']}/messages"))[
                "messages"
            ]
        ]
        if len(statuses) == 6 and not {"queued", "sent"} & set(statuses):
            return conversations
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"pipeline did not settle: {conversations}")
        await asyncio.sleep(0.2)


async def test_the_tour_builds_two_conversations_a_client_can_read(stack: Stack) -> None:
    tour = await asyncio.create_subprocess_exec(
        str(ROOT / "bin" / "test.sh"),
        env={**stack.env, "BASE_URL": stack.base_url},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    tour_output, _ = await asyncio.wait_for(tour.communicate(), 60)
    assert tour.returncode == 0, tour_output.decode()
    assert tour_output.decode().count("HTTP 202") == 6

    async with aiohttp.ClientSession() as session:
        conversations = await settled_conversations(session, stack.base_url)
        by_participants = {tuple(c["participants"]): c for c in conversations}
        assert set(by_participants) == {
            ("+12016661234", "+18045551234"),
            ("contact@gmail.com", "user@usehatchapp.com"),
        }
        phone = by_participants[("+12016661234", "+18045551234")]
        email = by_participants[("contact@gmail.com", "user@usehatchapp.com")]
        # A fresh start numbers conversations from 1. Which one is first depends on which message the
        # consumer stored first, and it stores concurrently.
        assert {phone["id"], email["id"]} == {1, 2}
        assert f"Messages of the phone conversation: GET /api/conversations/{phone['id']}/messages" in (
            tour_output.decode()
        )
        assert (phone["message_count"], email["message_count"]) == (4, 2)
        assert phone["channels"] == ["mms", "sms"]
        # Most recent activity first: the email webhook came last.
        assert [c["id"] for c in conversations] == [email["id"], phone["id"]]

        phone_url = f"{stack.base_url}/api/conversations/{phone['id']}/messages"
        phone_messages = (await get_json(session, phone_url))["messages"]
        assert [(m["direction"], m["type"], m["status"]) for m in phone_messages] == [
            ("outbound", "sms", "delivered"),
            ("outbound", "mms", "delivered"),
            ("inbound", "sms", "received"),
            ("inbound", "mms", "received"),
        ]
        assert [m["timestamp"] for m in phone_messages] == sorted(m["timestamp"] for m in phone_messages)
        assert phone_messages[1]["attachments"] == ["https://example.com/image.jpg"]
        assert phone_messages[3]["attachments"] == ["https://example.com/received-image.jpg"]
        assert phone_messages[0]["provider_message_id"]
        first_send = await get_json(session, f"{stack.base_url}/api/messages/{phone_messages[0]['id']}")
        assert [change["status"] for change in first_send["history"]] == ["queued", "sent", "delivered"]
        assert phone_messages[2]["provider_message_id"] == "message-1"

        email_messages = (await get_json(session, f"{stack.base_url}/api/conversations/{email['id']}/messages"))[
            "messages"
        ]
        assert [(m["direction"], m["status"]) for m in email_messages] == [
            ("outbound", "delivered"),
            ("inbound", "received"),
        ]
        assert email_messages[1]["body"] == (
            "<html><body>This is an incoming email with <b>HTML</b> content</body></html>"
        )
        assert email_messages[0]["attachments"] == ["https://example.com/document.pdf"]

        sms_sent = await get_json(session, f"http://127.0.0.1:{stack.ports['SMS_PROVIDER_PORT']}/messages")
        assert len(sms_sent["messages"]) == 2


async def test_sigterm_stops_every_process(stack: Stack) -> None:
    stack.process.send_signal(signal.SIGTERM)
    await asyncio.wait_for(stack.process.wait(), 30)

    assert [name for name, port in stack.ports.items() if port_is_open(port)] == []
