"""Every service in-process on the real broker and database: a client's send and a provider's webhook
travel gateway → RabbitMQ → channel service → mock provider → status event → PostgreSQL → read API,
and the mock's delivery receipt comes back through the gateway's status webhook."""

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from common.mock_provider import MockBehaviour
from common.settings import ServiceSettings
from conversation_service.app import create_app as create_conversation_app
from conversation_service.settings import ConversationSettings
from email_service.app import create_app as create_email_app
from email_service.mock_provider import create_app as create_email_mock
from email_service.settings import EmailSettings
from gateway.app import create_app as create_gateway_app
from gateway.settings import GatewaySettings
from sms_service.app import create_app as create_sms_app
from sms_service.mock_provider import create_app as create_sms_mock
from sms_service.settings import SmsSettings
from tests.factories import eventually

pytestmark = pytest.mark.integration


@pytest.fixture
async def stack(
    aiohttp_server: Any, aiohttp_client: Any, database_url: str, amqp_url: str, broker_namespace: str
) -> dict[str, TestClient | TestServer]:
    broker = ServiceSettings(amqp_url=amqp_url, broker_namespace=broker_namespace).model_dump(exclude_unset=True)
    fast_retry = {"provider_backoff_initial_seconds": 0.01, "provider_backoff_max_seconds": 0.05}
    conversation = await aiohttp_server(
        create_conversation_app(ConversationSettings(**broker, database_url=database_url))
    )
    gateway_server = await aiohttp_server(
        create_gateway_app(GatewaySettings(**broker, conversation_service_url=str(conversation.make_url(""))))
    )
    quick_receipts = MockBehaviour(delivery_delay_seconds=0.05)
    sms_mock = await aiohttp_server(create_sms_mock(quick_receipts))
    email_mock = await aiohttp_server(
        create_email_mock(quick_receipts, event_webhook_url=str(gateway_server.make_url("/api/webhooks/email/status")))
    )
    await aiohttp_server(
        create_sms_app(
            SmsSettings(
                **broker,
                **fast_retry,
                sms_provider_url=str(sms_mock.make_url("")),
                sms_status_callback_url=str(gateway_server.make_url("/api/webhooks/sms/status")),
            )
        )
    )
    await aiohttp_server(
        create_email_app(EmailSettings(**broker, **fast_retry, email_provider_url=str(email_mock.make_url(""))))
    )
    gateway = await aiohttp_client(gateway_server)
    return {
        "gateway": gateway,
        "sms_mock": await aiohttp_client(sms_mock),
        "email_mock": await aiohttp_client(email_mock),
    }


async def message_status(gateway: TestClient, message_id: str) -> str | None:
    response = await gateway.get(f"/api/messages/{message_id}")
    return (await response.json())["status"] if response.status == 200 else None


async def recorded(mock: TestClient) -> list[dict[str, Any]]:
    return (await (await mock.get("/messages")).json())["messages"]


@pytest.mark.parametrize(
    ("path", "payload", "mock"),
    [
        ("/api/messages/sms", {"from": "+12016661234", "to": "+18045551234", "type": "sms", "body": "hi"}, "sms_mock"),
        (
            "/api/messages/email",
            {
                "from": "user@usehatchapp.com",
                "to": "contact@gmail.com",
                "body": "<b>hi</b>",
                "attachments": ["https://example.com/document.pdf"],
            },
            "email_mock",
        ),
    ],
)
async def test_a_send_is_sent_once_then_delivered_with_its_history(
    stack: dict[str, Any], path: str, payload: dict[str, Any], mock: str
) -> None:
    gateway: TestClient = stack["gateway"]

    response = await gateway.post(path, json=payload)
    assert response.status == 202
    message_id = (await response.json())["id"]

    async def is_delivered() -> bool:
        return await message_status(gateway, message_id) == "delivered"

    await eventually(is_delivered, f"message {message_id} to be delivered")
    stored = await (await gateway.get(f"/api/messages/{message_id}")).json()
    sends = await recorded(stack[mock])
    assert [send["idempotency_key"] for send in sends] == [message_id]
    assert stored["provider_message_id"] == sends[0]["id"]
    assert stored["attempts"] == 1
    assert [change["status"] for change in stored["history"]] == ["queued", "sent", "delivered"]
    assert stored["body"] == payload["body"]
    conversations = (await (await gateway.get("/api/conversations")).json())["conversations"]
    assert [(c["id"], c["message_count"]) for c in conversations] == [(1, 1)]


async def test_a_reply_by_webhook_joins_the_senders_conversation(stack: dict[str, Any]) -> None:
    gateway: TestClient = stack["gateway"]
    sent = await gateway.post(
        "/api/messages/sms", json={"from": "+12016661234", "to": "+18045551234", "type": "sms", "body": "hi"}
    )
    webhook = {
        "from": "+18045551234",
        "to": "+12016661234",
        "type": "sms",
        "messaging_provider_id": "reply-1",
        "body": "hello back",
        # After the send, whatever today is, so the conversation's order is the one asserted.
        "timestamp": (datetime.now(UTC) + timedelta(days=1)).isoformat(),
    }
    first = await gateway.post("/api/webhooks/sms", json=webhook)
    retried = await gateway.post("/api/webhooks/sms", json=webhook)
    assert (sent.status, first.status, retried.status) == (202, 202, 202)

    async def both_stored() -> bool:
        response = await gateway.get("/api/conversations/1/messages")
        return response.status == 200 and len((await response.json())["messages"]) == 2

    await eventually(both_stored, "the send and the reply in conversation 1")
    messages = (await (await gateway.get("/api/conversations/1/messages")).json())["messages"]
    assert [(m["direction"], m["body"]) for m in messages] == [("outbound", "hi"), ("inbound", "hello back")]
    listing = await (await gateway.get("/api/conversations")).json()
    conversations = listing["conversations"]
    assert len(conversations) == 1, listing
    assert conversations[0]["message_count"] == 2
