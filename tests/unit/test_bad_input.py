"""Every kind of bad input a client or provider can send the public API, in one table: each is a 4xx
with a JSON body that names the field at fault and why, nothing is published, and never a 5xx.

The gateway runs with a fake publisher and key store; reads are relayed to the real read API of
conversation_service over a repository that must never be reached, since bad input stops before it.
A cursor is the exception, decoded by the repository: tests/unit/test_conversation_pagination.py has it.
"""

import asyncio
import json
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from common.accounts import ADDRESS_OWNER_PATH, DEVELOPMENT_ACCOUNT_ID, AddressOwner
from conversation_service.app import create_app as create_conversation_app
from conversation_service.settings import ConversationSettings
from gateway.app import create_app
from gateway.settings import GatewaySettings
from tests.factories import EMAIL_REQUEST as EMAIL
from tests.factories import SMS_REQUEST as SMS
from tests.fakes import MemoryKeyStore, RecordingPublisher

MAX_REQUEST_BYTES = 64 * 1024
MAX_STATUS_EVENTS = 20

MMS = {**SMS, "type": "mms", "attachments": ["https://example.com/image.jpg"]}
SMS_WEBHOOK = {**SMS, "from": "+18045551234", "to": "+12016661234", "messaging_provider_id": "message-1"}
EMAIL_WEBHOOK = {**EMAIL, "from": "contact@gmail.com", "to": "user@usehatchapp.com", "xillio_id": "message-3"}
MESSAGE_ID = "6f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9"


def without(payload: dict[str, Any], field: str) -> dict[str, Any]:
    return {name: value for name, value in payload.items() if name != field}


def case(name: str, path: str, payload: Any, status: int, field: str, *, method: str = "POST", **request: Any) -> Any:
    """One row: `payload` as JSON, or as the raw body when it is bytes."""
    return pytest.param(method, path, payload, request, status, field, id=name)


BAD_INPUT = [
    # Not JSON, or JSON the gateway cannot read.
    case("malformed JSON", "/api/messages/sms", b'{"from": ', 400, "request"),
    case("empty body", "/api/messages/email", b"", 400, "request"),
    case("not UTF-8", "/api/webhooks/sms", b"\xff\xfe{}", 400, "request"),
    case("lone surrogate", "/api/messages/sms", b'{"from": "+12016661234", "body": "\\ud800"}', 400, "request"),
    case("nested too deep", "/api/messages/sms", b"[" * 20_000, 400, "request"),
    case("a JSON array", "/api/messages/email", [EMAIL], 422, "request"),
    case("a JSON string", "/api/webhooks/email", "hello", 422, "request"),
    case("JSON null", "/api/messages/sms", b"null", 422, "request"),
    # Longer than the OpenAPI description allows, though not once its surrounding spaces are stripped.
    case(
        "padded past its length",
        "/api/webhooks/sms",
        {**SMS_WEBHOOK, "messaging_provider_id": "message-1" + " " * 255},
        422,
        "messaging_provider_id",
    ),
    case("phone padded past its length", "/api/messages/sms", {**SMS, "to": "+18045551234" + " " * 60}, 422, "to"),
    # Wrong JSON types.
    case("number for a phone", "/api/messages/sms", {**SMS, "from": 12016661234}, 422, "from"),
    case("number for a body", "/api/messages/sms", {**SMS, "body": 42}, 422, "body"),
    case("null body", "/api/messages/email", {**EMAIL, "body": None}, 422, "body"),
    case("list for an address", "/api/messages/email", {**EMAIL, "to": ["contact@gmail.com"]}, 422, "to"),
    case("number for a type", "/api/messages/sms", {**SMS, "type": 1}, 422, "type"),
    case(
        "number for a provider id",
        "/api/webhooks/sms",
        {**SMS_WEBHOOK, "messaging_provider_id": 7},
        422,
        "messaging_provider_id",
    ),
    # Missing fields.
    case("no from", "/api/messages/sms", without(SMS, "from"), 422, "from"),
    case("no to", "/api/messages/email", without(EMAIL, "to"), 422, "to"),
    case("no body", "/api/messages/sms", without(SMS, "body"), 422, "body"),
    case("no type", "/api/messages/sms", without(SMS, "type"), 422, "type"),
    case(
        "no provider id",
        "/api/webhooks/sms",
        without(SMS_WEBHOOK, "messaging_provider_id"),
        422,
        "messaging_provider_id",
    ),
    case("no xillio id", "/api/webhooks/email", without(EMAIL_WEBHOOK, "xillio_id"), 422, "xillio_id"),
    case("empty xillio id", "/api/webhooks/email", {**EMAIL_WEBHOOK, "xillio_id": ""}, 422, "xillio_id"),
    # Addresses.
    case("too short a phone", "/api/messages/sms", {**SMS, "to": "12"}, 422, "to"),
    case("invalid phone", "/api/messages/sms", {**SMS, "from": "+1555"}, 422, "from"),
    case("words for a phone", "/api/webhooks/sms", {**SMS_WEBHOOK, "from": "call me"}, 422, "from"),
    case("empty phone", "/api/messages/sms", {**SMS, "to": ""}, 422, "to"),
    case("email for a phone", "/api/messages/sms", {**SMS, "to": "contact@gmail.com"}, 422, "to"),
    case("not an email", "/api/messages/email", {**EMAIL, "to": "not-an-email"}, 422, "to"),
    case("email without a domain", "/api/messages/email", {**EMAIL, "from": "a@b"}, 422, "from"),
    case("phone for an email", "/api/webhooks/email", {**EMAIL_WEBHOOK, "from": "+18045551234"}, 422, "from"),
    # Attachments: a list of http(s) URLs, or null.
    case(
        "attachments a string",
        "/api/messages/sms",
        {**MMS, "attachments": "https://example.com/a.png"},
        422,
        "attachments",
    ),
    case(
        "attachments an object",
        "/api/messages/email",
        {**EMAIL, "attachments": {"url": "https://a.b"}},
        422,
        "attachments",
    ),
    case("attachment a number", "/api/messages/email", {**EMAIL, "attachments": [42]}, 422, "attachments.0"),
    case("attachment not a URL", "/api/messages/sms", {**MMS, "attachments": ["not a url"]}, 422, "attachments.0"),
    case(
        "attachment not http",
        "/api/webhooks/email",
        {**EMAIL_WEBHOOK, "attachments": ["ftp://example.com/a"]},
        422,
        "attachments.0",
    ),
    case(
        "attachment a script",
        "/api/messages/email",
        {**EMAIL, "attachments": ["javascript:alert(1)"]},
        422,
        "attachments.0",
    ),
    case(
        "attachment too long",
        "/api/messages/email",
        {**EMAIL, "attachments": ["https://example.com/" + "a" * 2048]},
        422,
        "attachments.0",
    ),
    case(
        "too many attachments",
        "/api/messages/email",
        {**EMAIL, "attachments": [f"https://example.com/{n}.pdf" for n in range(11)]},
        422,
        "attachments",
    ),
    case("mms without media", "/api/messages/sms", {**MMS, "attachments": []}, 422, "request"),
    case("sms with media", "/api/messages/sms", {**SMS, "attachments": ["https://example.com/a.png"]}, 422, "request"),
    # Timestamps: ISO 8601 date and time.
    case("words for a time", "/api/messages/sms", {**SMS, "timestamp": "yesterday"}, 422, "timestamp"),
    case("month 13", "/api/webhooks/sms", {**SMS_WEBHOOK, "timestamp": "2024-13-01T00:00:00Z"}, 422, "timestamp"),
    case("a date alone", "/api/messages/email", {**EMAIL, "timestamp": "2024-11-01"}, 422, "timestamp"),
    case("unix seconds", "/api/messages/sms", {**SMS, "timestamp": 1730469600}, 422, "timestamp"),
    case("unix seconds as text", "/api/webhooks/email", {**EMAIL_WEBHOOK, "timestamp": "1730469600"}, 422, "timestamp"),
    case(
        "past the year 9999 in UTC",
        "/api/messages/sms",
        {**SMS, "timestamp": "9999-12-31T23:59:59-05:00"},
        422,
        "timestamp",
    ),
    # Type.
    case("unknown type", "/api/messages/sms", {**SMS, "type": "fax"}, 422, "type"),
    case("type in capitals", "/api/webhooks/sms", {**SMS_WEBHOOK, "type": "SMS"}, 422, "type"),
    case("email type on the sms route", "/api/messages/sms", {**SMS, "type": "email"}, 422, "type"),
    case("unknown type, compatibility route", "/messages/outbound/", {**SMS, "type": "carrier-pigeon"}, 422, "request"),
    # Body limits, per channel.
    case("sms body over 1600", "/api/messages/sms", {**SMS, "body": "x" * 1601}, 422, "body"),
    case(
        "mms body over 1600",
        "/api/webhooks/sms",
        {**SMS_WEBHOOK, "type": "mms", "attachments": MMS["attachments"], "body": "😀" * 1601},
        422,
        "body",
    ),
    case("blank email", "/api/messages/email", {**EMAIL, "body": "  "}, 422, "request"),
    case("empty sms", "/api/messages/sms", {**SMS, "body": ""}, 422, "request"),
    case("over the size cap", "/api/messages/email", {**EMAIL, "body": "x" * MAX_REQUEST_BYTES}, 413, "request"),
    # NUL: PostgreSQL text cannot hold it.
    case("NUL in a body", "/api/messages/sms", {**SMS, "body": "a\u0000b"}, 422, "body"),
    case("NUL in an address", "/api/messages/email", {**EMAIL, "to": "contact\u0000@gmail.com"}, 422, "to"),
    case("NUL in a phone", "/api/messages/sms", {**SMS, "to": "+1804555\u00001234"}, 422, "to"),
    case("NUL in a provider id", "/api/webhooks/email", {**EMAIL_WEBHOOK, "xillio_id": "m\u00003"}, 422, "xillio_id"),
    case(
        "NUL in an attachment",
        "/api/messages/sms",
        {**MMS, "attachments": ["https://example.com/a\u0000.png"]},
        422,
        "attachments.0",
    ),
    case("raw NUL byte in the JSON", "/api/messages/sms", b'{"body": "a\x00b"}', 400, "request"),
    # Delivery receipts.
    case(
        "status callback without message id",
        "/api/webhooks/sms/status",
        None,
        422,
        "message_id",
        data={"MessageSid": "SM1", "MessageStatus": "delivered"},
    ),
    case(
        "status callback with a bad message id",
        "/api/webhooks/sms/status?message_id=abc",
        None,
        422,
        "message_id",
        data={"MessageSid": "SM1", "MessageStatus": "delivered"},
    ),
    case(
        "status callback form with a byte that is not UTF-8",
        f"/api/webhooks/sms/status?message_id={MESSAGE_ID}",
        None,
        400,
        "request",
        data=b"MessageSid=SM1&MessageStatus=deliv\xffered",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    ),
    case(
        "status callback form with an escaped byte that is not UTF-8",
        f"/api/webhooks/sms/status?message_id={MESSAGE_ID}",
        None,
        400,
        "request",
        data=b"MessageSid=SM%FF&MessageStatus=delivered",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    ),
    case(
        "status callback form with charset=bogus",
        f"/api/webhooks/sms/status?message_id={MESSAGE_ID}",
        None,
        415,
        "Content-Type",
        data=b"MessageSid=SM1&MessageStatus=delivered",
        headers={"Content-Type": "application/x-www-form-urlencoded; charset=bogus"},
    ),
    case("status events not a list", "/api/webhooks/email/status", {"event": "delivered"}, 422, "request"),
    case(
        "more status events than a batch may carry",
        "/api/webhooks/email/status",
        [{"message_id": MESSAGE_ID, "event": "delivered", "sg_message_id": "sg1", "timestamp": 1730469600}]
        * (MAX_STATUS_EVENTS + 1),
        422,
        "request",
    ),
    case(
        "status event with a bad message id",
        "/api/webhooks/email/status",
        [{"message_id": "abc", "event": "delivered", "sg_message_id": "sg1", "timestamp": 1730469600}],
        422,
        "0.message_id",
    ),
    # Reads: ids and pages.
    case("conversation id 0", "/api/conversations/0/messages", None, 422, "conversation_id", method="GET"),
    case("conversation id -1", "/api/conversations/-1/messages", None, 422, "conversation_id", method="GET"),
    case("conversation id 2**63", f"/api/conversations/{2**63}/messages", None, 422, "conversation_id", method="GET"),
    case("conversation id abc", "/api/conversations/abc/messages", None, 422, "conversation_id", method="GET"),
    case("conversation id 1.5", "/api/conversations/1.5/messages", None, 422, "conversation_id", method="GET"),
    case("conversation id with NUL", "/api/conversations/1%00/messages", None, 422, "conversation_id", method="GET"),
    case("message id abc", "/api/messages/abc", None, 422, "message_id", method="GET"),
    case("message id a number", "/api/messages/42", None, 422, "message_id", method="GET"),
    case("message id cut short", f"/api/messages/{MESSAGE_ID[:-4]}", None, 422, "message_id", method="GET"),
    case("message id with NUL", "/api/messages/%00", None, 422, "message_id", method="GET"),
    case("limit 0", "/api/conversations?limit=0", None, 422, "limit", method="GET"),
    case("limit abc", "/api/conversations/1/messages?limit=abc", None, 422, "limit", method="GET"),
    case("limit over the maximum", "/api/conversations?limit=100000", None, 422, "limit", method="GET"),
]


class UnreachableRepository:
    """Bad input must be refused before any read: every method fails the test."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the repository was asked for {name}")


async def _owned_by_the_development_account(request: web.Request) -> web.Response:
    return web.json_response(text=AddressOwner(account_id=DEVELOPMENT_ACCOUNT_ID).model_dump_json())


@pytest.fixture
def publisher() -> RecordingPublisher:
    return RecordingPublisher()


@pytest.fixture
async def client(aiohttp_client: Any, aiohttp_server: Any, publisher: RecordingPublisher) -> TestClient:
    conversation = create_conversation_app(ConversationSettings(), repository=UnreachableRepository())  # type: ignore[arg-type]
    # Without a database there is no account store: every address is the development account's.
    conversation.router.add_post(ADDRESS_OWNER_PATH, _owned_by_the_development_account)
    reads = await aiohttp_server(conversation)
    settings = GatewaySettings(
        max_request_bytes=MAX_REQUEST_BYTES,
        email_status_max_events=MAX_STATUS_EVENTS,
        conversation_service_url=str(reads.make_url("")),
    )
    return await aiohttp_client(create_app(settings, publisher=publisher, key_store=MemoryKeyStore()))


@pytest.mark.parametrize(("method", "path", "payload", "request_options", "status", "field"), BAD_INPUT)
async def test_bad_input_is_a_4xx_naming_the_field_and_why(
    client: TestClient,
    publisher: RecordingPublisher,
    method: str,
    path: str,
    payload: Any,
    request_options: dict[str, Any],
    status: int,
    field: str,
) -> None:
    if isinstance(payload, bytes):
        request_options = {**request_options, "data": payload, "headers": {"Content-Type": "application/json"}}
    elif "data" not in request_options and method == "POST":
        request_options = {**request_options, "json": payload}

    response = await client.request(method, path, **request_options)

    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    body = await response.json()
    assert body["error"] and body["message"]
    assert field in {detail["field"] for detail in body["details"]}, body
    assert all(detail["reason"] for detail in body["details"])
    assert publisher.published == []


@pytest.mark.parametrize(
    ("path", "payload"),
    [
        ("/api/messages/sms", SMS),
        ("/api/messages/email", EMAIL),
        ("/api/webhooks/sms", SMS_WEBHOOK),
        ("/api/webhooks/email", EMAIL_WEBHOOK),
    ],
)
async def test_unknown_fields_are_ignored_not_rejected(
    client: TestClient, publisher: RecordingPublisher, path: str, payload: dict[str, Any]
) -> None:
    response = await client.post(path, json={**payload, "carrier": "acme", "segments": 1, "from_": None})

    assert response.status == 202, await response.text()
    [published] = publisher.published
    assert published.content.body == payload["body"]  # type: ignore[attr-defined]
    assert "carrier" not in await response.json()


async def test_an_idempotency_key_of_bytes_that_are_not_ascii_is_a_422(
    client: TestClient, publisher: RecordingPublisher
) -> None:
    # Over a raw socket: HTTP clients refuse to send such a header.
    body = json.dumps(SMS).encode()
    head = (
        f"POST /api/messages/sms HTTP/1.1\r\nHost: {client.host}:{client.port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n"
    ).encode()
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(head + b"Idempotency-Key: cl\xc3\xa9-\xff\xfe\r\n\r\n" + body)
    await writer.drain()
    answer = await reader.read()
    writer.close()

    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.split()[1] == b"422", answer
    document = json.loads(rest.partition(b"\r\n\r\n")[2])
    assert document["details"][0]["field"] == "Idempotency-Key"
    assert "printable ASCII" in document["details"][0]["reason"]
    assert publisher.published == []
