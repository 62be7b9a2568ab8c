"""The gateway's public API with a fake publisher: what a client sees, and what reaches the bus."""

from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from common.broker import BrokerUnavailable
from common.contracts import EMAIL_PROVIDER, SMS_PROVIDER, Contract, MessageReceived, SendMessage, inbound_message_id
from gateway.app import create_app
from gateway.settings import GatewaySettings

SMS = {
    "from": "+12016661234",
    "to": "+18045551234",
    "type": "sms",
    "body": "text message",
    "attachments": None,
    "timestamp": "2024-11-01T14:00:00Z",
}
EMAIL = {
    "from": "user@usehatchapp.com",
    "to": "contact@gmail.com",
    "body": "text or <b>html</b>",
    "attachments": ["https://example.com/document.pdf"],
    "timestamp": "2024-11-01T14:00:00Z",
}
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


class RecordingPublisher:
    def __init__(self) -> None:
        self.published: list[Contract] = []
        self.fail = False

    async def publish(self, contract: Contract) -> None:
        if self.fail:
            raise BrokerUnavailable("broker is down")
        self.published.append(contract)


@pytest.fixture
def publisher() -> RecordingPublisher:
    return RecordingPublisher()


@pytest.fixture
async def client(aiohttp_client: Any, publisher: RecordingPublisher) -> TestClient:
    settings = GatewaySettings(max_request_bytes=64 * 1024, conversation_service_url="http://127.0.0.1:1")
    return await aiohttp_client(create_app(settings, publisher=publisher))


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


async def test_idempotency_key_gives_the_same_message_id(client: TestClient) -> None:
    headers = {"Idempotency-Key": "order-42"}
    first = await (await client.post("/api/messages/sms", json=SMS, headers=headers)).json()
    second = await (await client.post("/api/messages/sms", json=SMS, headers=headers)).json()
    other = await (await client.post("/api/messages/sms", json=SMS)).json()
    # A key reused for another message must not make that message a "duplicate" that is never stored.
    reused = await (await client.post("/api/messages/sms", json={**SMS, "body": "other"}, headers=headers)).json()
    email = await (await client.post("/api/messages/email", json=EMAIL, headers=headers)).json()

    assert first["id"] == second["id"]
    assert len({first["id"], other["id"], reused["id"], email["id"]}) == 4


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


async def test_unknown_fields_in_a_webhook_are_ignored(client: TestClient) -> None:
    response = await client.post("/api/webhooks/sms", json={**SMS_WEBHOOK, "carrier": "acme", "segments": 1})

    assert response.status == 202


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


@pytest.mark.parametrize(
    ("path", "payload", "fields"),
    [
        ("/api/messages/sms", {**SMS, "to": "12"}, {"to"}),
        ("/api/messages/sms", {**SMS, "from": "+1555"}, {"from"}),
        ("/api/messages/sms", {**SMS, "type": "fax"}, {"type"}),
        ("/api/messages/sms", {k: v for k, v in SMS.items() if k != "body"}, {"body"}),
        ("/api/messages/sms", {**SMS, "body": 42}, {"body"}),
        ("/api/messages/sms", {**SMS, "body": "a\u0000b"}, {"body"}),
        ("/api/messages/sms", {**SMS, "body": "x" * 1601}, {"request"}),
        ("/api/messages/sms", {**SMS, "timestamp": "yesterday"}, {"timestamp"}),
        ("/api/messages/sms", {**SMS, "type": "mms", "attachments": "https://example.com/a.png"}, {"attachments"}),
        ("/api/messages/sms", {**SMS, "type": "mms", "attachments": ["not a url"]}, {"attachments.0"}),
        ("/api/messages/sms", {**SMS, "type": "mms", "attachments": []}, {"request"}),
        ("/api/messages/sms", {**SMS, "attachments": ["https://example.com/a.png"]}, {"request"}),
        (
            "/api/messages/sms",
            {**SMS, "type": "mms", "attachments": ["https://example.com/a\u0000.png"]},
            {"attachments.0"},
        ),
        ("/api/messages/sms", {**SMS, "timestamp": "9999-12-31T23:59:59-05:00"}, {"timestamp"}),
        ("/api/messages/email", {**EMAIL, "to": "not-an-email"}, {"to"}),
        ("/api/messages/email", {**EMAIL, "body": "  "}, {"request"}),
        ("/api/messages/email", {**EMAIL, "from": "a@b"}, {"from"}),
        (
            "/api/webhooks/sms",
            {k: v for k, v in SMS_WEBHOOK.items() if k != "messaging_provider_id"},
            {"messaging_provider_id"},
        ),
        ("/api/webhooks/email", {**EMAIL_WEBHOOK, "xillio_id": ""}, {"xillio_id"}),
        ("/messages/outbound/", {**SMS, "type": "carrier-pigeon"}, {"request"}),
    ],
)
async def test_invalid_input_is_a_422_naming_each_field(
    client: TestClient, publisher: RecordingPublisher, path: str, payload: dict[str, Any], fields: set[str]
) -> None:
    response = await client.post(path, json=payload)

    assert response.status == 422
    body = await response.json()
    assert body["error"] == "invalid_request"
    assert fields <= fields_at_fault(body), body
    assert all(detail["reason"] for detail in body["details"])
    assert publisher.published == []


async def test_malformed_json_is_a_400(client: TestClient, publisher: RecordingPublisher) -> None:
    response = await client.post("/api/messages/sms", data=b'{"from": ', headers={"Content-Type": "application/json"})

    assert response.status == 400
    assert (await response.json())["error"] == "malformed_request"
    assert publisher.published == []


@pytest.mark.parametrize(
    "raw",
    [b"[" * 20_000, b'{"from": "+12016661234", "body": "\\ud800"}', b"\xff\xfe{}"],
    ids=["nested too deep", "lone surrogate", "not utf-8"],
)
async def test_json_the_gateway_cannot_read_is_a_400_not_a_crash(
    client: TestClient, publisher: RecordingPublisher, raw: bytes
) -> None:
    response = await client.post("/api/messages/sms", data=raw, headers={"Content-Type": "application/json"})

    assert response.status == 400
    assert (await response.json())["error"] == "malformed_request"
    assert publisher.published == []


async def test_a_json_array_is_rejected_not_crashed_on(client: TestClient) -> None:
    response = await client.post("/api/messages/email", json=[EMAIL])

    assert response.status == 422


async def test_an_oversized_request_is_a_413_in_json(client: TestClient) -> None:
    response = await client.post("/api/messages/email", json={**EMAIL, "body": "x" * 100_000})

    assert response.status == 413
    assert "error" in await response.json()


async def test_broker_down_is_a_503_never_a_2xx(client: TestClient, publisher: RecordingPublisher) -> None:
    publisher.fail = True

    send = await client.post("/api/messages/sms", json=SMS)
    webhook = await client.post("/api/webhooks/sms", json=SMS_WEBHOOK)

    assert (send.status, webhook.status) == (503, 503)
    assert (await send.json())["error"] == "service_unavailable"


async def test_reads_answer_503_when_the_conversation_service_is_unreachable(client: TestClient) -> None:
    response = await client.get("/api/conversations")

    assert response.status == 503


async def test_reads_are_relayed_with_the_id_quoted_whole(aiohttp_client: Any, aiohttp_server: Any) -> None:
    seen: list[str] = []

    async def upstream(request: web.Request) -> web.Response:
        seen.append(request.raw_path)
        return web.json_response({"conversation_id": 7, "messages": [], "next_cursor": None}, status=200)

    upstream_app = web.Application()
    upstream_app.router.add_get("/{tail:.*}", upstream)
    server = await aiohttp_server(upstream_app)
    settings = GatewaySettings(conversation_service_url=str(server.make_url("")))
    client = await aiohttp_client(create_app(settings, publisher=RecordingPublisher()))

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
