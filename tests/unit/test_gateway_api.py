"""The gateway's public API with a fake publisher, key store and conversation_service, in the
development profile: what a client sees, and what reaches the bus."""

from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from common.contracts import EMAIL_PROVIDER, SMS_PROVIDER, MessageReceived, SendMessage, inbound_message_id
from gateway.app import create_app
from gateway.settings import GatewaySettings
from tests.factories import EMAIL_REQUEST as EMAIL
from tests.factories import SMS_REQUEST as SMS
from tests.fakes import FakeConversationService, MemoryKeyStore, RecordingPublisher

SMS_WEBHOOK = {
    "from": "+18045551234",
    "to": "+12016661234",
    "type": "sms",
    "messaging_provider_id": "message-1",
    "body": "text message",
    "attachments": None,
    "timestamp": "2024-11-01T14:00:00Z",
}
EMAIL_WEBHOOK = {
    "from": "contact@gmail.com",
    "to": "user@usehatchapp.com",
    "xillio_id": "message-3",
    "body": "<html><body>html is <b>allowed</b> here</body></html>",
    "attachments": ["https://example.com/received-document.pdf"],
    "timestamp": "2024-11-01T14:00:00Z",
}


# Nothing listens there: reads and a real key store find the conversation service unreachable.
UNREACHABLE_URL = "http://127.0.0.1:1"


@pytest.fixture
def publisher() -> RecordingPublisher:
    return RecordingPublisher()


@pytest.fixture
def key_store() -> MemoryKeyStore:
    return MemoryKeyStore()


@pytest.fixture
async def conversation_service(aiohttp_server: Any) -> Any:
    return await aiohttp_server(FakeConversationService(GatewaySettings().internal_service_token).app())


@pytest.fixture
async def client(
    aiohttp_client: Any, conversation_service: Any, publisher: RecordingPublisher, key_store: MemoryKeyStore
) -> TestClient:
    settings = GatewaySettings(
        max_request_bytes=64 * 1024, conversation_service_url=str(conversation_service.make_url(""))
    )
    return await aiohttp_client(create_app(settings, publisher=publisher, key_store=key_store))


def fields_at_fault(body: dict[str, Any]) -> set[str]:
    return {detail["field"] for detail in body["details"]}


async def test_sms_send_is_accepted_queued_and_published(client: TestClient, publisher: RecordingPublisher) -> None:
    response = await client.post("/api/messages/sms", json=SMS)

    assert response.status == 202
    body = await response.json()
    assert body["status"] == "queued"
    assert body["direction"] == "outbound"
    assert (body["from"], body["to"], body["type"]) == ("+12016661234", "+18045551234", "sms")
    assert body["timestamp"] == "2024-11-01T14:00:00Z"
    [command] = publisher.published
    assert isinstance(command, SendMessage)
    assert str(command.message_id) == body["id"]
    assert command.routing_key == "outbound.sms"
    assert response.headers["X-Correlation-ID"] == str(command.correlation_id)


async def test_phone_numbers_are_normalized_to_e164(client: TestClient, publisher: RecordingPublisher) -> None:
    response = await client.post("/api/messages/sms", json={**SMS, "to": "(804) 555-1234", "from": "201 666 1234"})

    assert response.status == 202
    content = publisher.published[0].content  # type: ignore[attr-defined]
    assert (content.from_address, content.to_address) == ("+12016661234", "+18045551234")


async def test_mms_carries_its_attachments_to_the_mms_route(client: TestClient, publisher: RecordingPublisher) -> None:
    mms = {**SMS, "type": "mms", "attachments": ["https://example.com/image.jpg"]}
    response = await client.post("/api/messages/sms", json=mms)

    assert response.status == 202
    assert (await response.json())["attachments"] == ["https://example.com/image.jpg"]
    assert publisher.published[0].routing_key == "outbound.mms"


async def test_email_addresses_are_lower_cased_so_a_conversation_has_one_spelling(
    client: TestClient, publisher: RecordingPublisher
) -> None:
    send = await client.post("/api/messages/email", json={**EMAIL, "to": "Contact@Gmail.com"})
    reply = await client.post("/api/webhooks/email", json={**EMAIL_WEBHOOK, "from": "CONTACT@gmail.com "})

    assert (send.status, reply.status) == (202, 202)
    assert (await send.json())["to"] == "contact@gmail.com"
    assert publisher.published[0].routing_key == "outbound.email"
    assert publisher.published[1].content.from_address == "contact@gmail.com"  # type: ignore[attr-defined]


async def test_a_repeated_idempotency_key_replays_the_first_response_and_publishes_once(
    client: TestClient, publisher: RecordingPublisher
) -> None:
    headers = {"Idempotency-Key": "order-42"}
    unstamped = {k: v for k, v in SMS.items() if k != "timestamp"}
    first = await client.post("/api/messages/sms", json=unstamped, headers=headers)
    repeat = await client.post("/api/messages/sms", json=unstamped, headers=headers)
    # The compatibility route is the same send, so the same key there is the same request.
    compat = await client.post("/messages/outbound/", json=unstamped, headers=headers)

    assert (first.status, repeat.status, compat.status) == (202, 202, 202)
    first_body = await first.json()
    # Equal bodies even where the first request left the time to the gateway.
    assert await repeat.json() == await compat.json() == first_body
    assert "Idempotent-Replayed" not in first.headers
    assert (repeat.headers["Idempotent-Replayed"], compat.headers["Idempotent-Replayed"]) == ("true", "true")
    [command] = publisher.published
    assert str(command.message_id) == first_body["id"]  # type: ignore[attr-defined]


async def test_different_idempotency_keys_are_different_messages(
    client: TestClient, publisher: RecordingPublisher
) -> None:
    responses = [
        await client.post("/api/messages/sms", json=SMS, headers={"Idempotency-Key": "order-1"}),
        await client.post("/api/messages/sms", json=SMS, headers={"Idempotency-Key": "order-2"}),
        await client.post("/api/messages/sms", json=SMS),
    ]

    assert [response.status for response in responses] == [202, 202, 202]
    assert len({(await response.json())["id"] for response in responses}) == 3
    assert len(publisher.published) == 3


@pytest.mark.parametrize(
    ("path", "payload"),
    [
        ("/api/messages/sms", {**SMS, "body": "another message"}),
        ("/api/messages/sms", {**SMS, "timestamp": "2024-11-01T15:00:00Z"}),
        ("/api/messages/email", EMAIL),
    ],
    ids=["other body", "other timestamp", "other channel"],
)
async def test_an_idempotency_key_used_with_a_different_request_is_a_422_naming_it(
    client: TestClient, publisher: RecordingPublisher, path: str, payload: dict[str, Any]
) -> None:
    headers = {"Idempotency-Key": "order-42"}
    first = await client.post("/api/messages/sms", json=SMS, headers=headers)
    reused = await client.post(path, json=payload, headers=headers)

    assert (first.status, reused.status) == (202, 422)
    body = await reused.json()
    assert fields_at_fault(body) == {"Idempotency-Key"}
    assert "different request" in body["message"]
    assert len(publisher.published) == 1


@pytest.mark.parametrize("key", ["", "k" * 256], ids=["empty", "too long"])
async def test_an_unusable_idempotency_key_is_a_422_naming_it(
    client: TestClient, publisher: RecordingPublisher, key_store: MemoryKeyStore, key: str
) -> None:
    response = await client.post("/api/messages/sms", json=SMS, headers={"Idempotency-Key": key})

    assert response.status == 422
    assert fields_at_fault(await response.json()) == {"Idempotency-Key"}
    assert (publisher.published, key_store.keys) == ([], {})


async def test_an_unreachable_key_store_is_a_503_and_nothing_is_sent(
    client: TestClient, publisher: RecordingPublisher, key_store: MemoryKeyStore
) -> None:
    key_store.reachable = False

    keyed = await client.post("/api/messages/sms", json=SMS, headers={"Idempotency-Key": "order-42"})
    assert keyed.status == 503
    assert (await keyed.json())["error"] == "service_unavailable"
    assert publisher.published == []
    # A send without a key does not need the store.
    unkeyed = await client.post("/api/messages/sms", json=SMS)
    assert unkeyed.status == 202
    assert len(publisher.published) == 1


async def test_webhooks_derive_the_message_id_from_the_provider_id(
    client: TestClient, publisher: RecordingPublisher
) -> None:
    sms = await client.post("/api/webhooks/sms", json=SMS_WEBHOOK)
    repeat = await client.post("/api/webhooks/sms", json=SMS_WEBHOOK)
    email = await client.post("/api/webhooks/email", json=EMAIL_WEBHOOK)

    assert (sms.status, repeat.status, email.status) == (202, 202, 202)
    sms_event, repeat_event, email_event = publisher.published
    assert isinstance(sms_event, MessageReceived) and isinstance(email_event, MessageReceived)
    assert sms_event.message_id == repeat_event.message_id == inbound_message_id(SMS_PROVIDER, "message-1")
    assert email_event.message_id == inbound_message_id(EMAIL_PROVIDER, "message-3")
    assert email_event.content.body == EMAIL_WEBHOOK["body"]
    assert (await email.json())["status"] == "received"


async def test_compatibility_routes_pick_the_channel_by_type(client: TestClient, publisher: RecordingPublisher) -> None:
    outbound_email = await client.post("/messages/outbound/", json={**EMAIL, "type": "email"})
    outbound_sms = await client.post("/messages/outbound/", json=SMS)
    inbound_email = await client.post(
        "/messages/inbound/",
        json={
            **{k: v for k, v in EMAIL_WEBHOOK.items() if k != "xillio_id"},
            "type": "email",
            "messaging_provider_id": "message-3",
        },
    )

    assert (outbound_email.status, outbound_sms.status, inbound_email.status) == (202, 202, 202)
    routing_keys = [contract.routing_key for contract in publisher.published]
    assert routing_keys == ["outbound.email", "outbound.sms", "inbound.email"]
    assert publisher.published[2].message_id == inbound_message_id(EMAIL_PROVIDER, "message-3")  # type: ignore[attr-defined]


async def test_broker_down_is_a_503_never_a_2xx(client: TestClient, publisher: RecordingPublisher) -> None:
    publisher.fail = True

    send = await client.post("/api/messages/sms", json=SMS)
    webhook = await client.post("/api/webhooks/sms", json=SMS_WEBHOOK)

    assert (send.status, webhook.status) == (503, 503)
    assert (await send.json())["error"] == "service_unavailable"


async def test_the_conversation_service_unreachable_is_a_503_for_reads_and_sends(aiohttp_client: Any) -> None:
    publisher = RecordingPublisher()
    settings = GatewaySettings(conversation_service_url=UNREACHABLE_URL)
    client = await aiohttp_client(create_app(settings, publisher=publisher, key_store=MemoryKeyStore()))

    read = await client.get("/api/conversations")
    # Who owns the sender is conversation_service's word: without it, nothing is sent.
    send = await client.post("/api/messages/sms", json=SMS)

    assert (read.status, send.status) == (503, 503)
    assert publisher.published == []


async def test_reads_are_relayed_with_the_id_quoted_whole(aiohttp_client: Any, aiohttp_server: Any) -> None:
    seen: list[str] = []

    async def upstream(request: web.Request) -> web.Response:
        seen.append(request.raw_path)
        return web.json_response({"conversation_id": 7, "messages": [], "next_cursor": None}, status=200)

    upstream_app = web.Application()
    upstream_app.router.add_get("/{tail:.*}", upstream)
    server = await aiohttp_server(upstream_app)
    settings = GatewaySettings(conversation_service_url=str(server.make_url("")))
    client = await aiohttp_client(create_app(settings, publisher=RecordingPublisher(), key_store=MemoryKeyStore()))

    relayed = await client.get("/api/conversations/7/messages", params={"limit": "5"})
    crafted = await client.get("/api/conversations/..%2Fhealthz/messages")

    assert (relayed.status, crafted.status) == (200, 200)
    assert (await relayed.json())["conversation_id"] == 7
    assert seen[0] == "/conversations/7/messages?limit=5"
    assert seen[1].startswith("/conversations/..%2Fhealthz/messages")


async def test_unknown_route_is_a_json_404(client: TestClient) -> None:
    response = await client.get("/api/nothing-here")

    assert response.status == 404
    assert (await response.json())["error"] == "not_found"


async def test_healthz_answers_without_a_broker(client: TestClient) -> None:
    response = await client.get("/healthz")

    assert response.status == 200
    assert (await response.json()) == {"status": "ok"}
