"""End to end: the whole stack started by bin/start.sh, toured by bin/test.sh, read back like a client."""

import asyncio
import signal
from typing import Any

import aiohttp
import pytest

from tests.e2e.stack import PORT_OF_PROCESS, ROOT, Stack, port_is_open, process_exists

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


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
    pids = [pid for process in PORT_OF_PROCESS for pid in stack.pids_of(process)]
    assert len(pids) == 6

    stack.process.send_signal(signal.SIGTERM)

    assert await asyncio.wait_for(stack.process.wait(), 30) == 0
    assert [name for name, port in stack.ports.items() if port_is_open(port)] == []
    assert [pid for pid in pids if process_exists(pid)] == []
    assert "[supervise] SIGTERM: stopping 6 processes" in stack.text()
    assert "[supervise] every process stopped" in stack.text()
    assert "killing it" not in stack.text(), "a process outstayed its grace"
