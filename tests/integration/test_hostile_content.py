"""Hostile but valid content goes gateway → RabbitMQ → conversation_service → PostgreSQL → read API
and comes back exactly as it was sent: nothing escaped, stripped, normalized or truncated."""

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.factories import eventually

pytestmark = pytest.mark.integration

# The gateway's defaults: an SMS body of up to 1600 characters, an email body of up to 1,000,000.
SMS_LIMIT = 1600
EMAIL_LIMIT = 1_000_000

PHONES = ("+12016661234", "+18045551234")
# Provider ids are trimmed of surrounding whitespace, but otherwise kept as the provider sent them.
SMS_PROVIDER_ID = "'); DROP TABLE conversations;--"
EMAIL_PROVIDER_ID = '<script>alert("id")</script> 👩‍👩‍👧'

EMAILS = ("user@usehatchapp.com", "contact@gmail.com")

HOSTILE = {
    "sql": "'); DROP TABLE messages;-- \" OR 1=1; -- \\x00 is not a NUL, %00 neither, $1 :name ?",
    "html and script": '<script>alert("x")</script><img src=x onerror=alert(1)><b>bold</b> &amp; &lt;',
    "emoji with ZWJ sequences": "👩‍👩‍👧‍👦 🏳️‍🌈 👍🏽 🧑🏿‍🚀 🇺🇦 1️⃣",
    "right to left": "مرحبا بالعالم — שלום עולם \u202eevil\u202c \u200f",
    "combining characters": "e\u0301 vs \u00e9, n\u0303, Z\u0324\u0354\u0367\u0311a\u0356\u0308l\u036eg\u030co",
    "whitespace": "  padded  \r\nline\tbreak\u2028separator\u2029\u00a0\ufeff ",
}


async def read_json(gateway: TestClient, path: str) -> Any:
    response = await gateway.get(path)
    assert response.status == 200, await response.text()
    return await response.json()


async def stored(gateway: TestClient, message_id: str) -> dict[str, Any]:
    async def is_stored() -> bool:
        return (await gateway.get(f"/api/messages/{message_id}")).status == 200

    await eventually(is_stored, f"message {message_id} to be stored")
    return await read_json(gateway, f"/api/messages/{message_id}")


async def post(gateway: TestClient, path: str, payload: dict[str, Any]) -> dict[str, Any]:
    response = await gateway.post(path, json=payload)
    assert response.status == 202, await response.text()
    return await response.json()


@pytest.mark.parametrize("body", HOSTILE.values(), ids=HOSTILE.keys())
async def test_hostile_bodies_come_back_verbatim_on_every_route(gateway: TestClient, body: str) -> None:
    ours, theirs = PHONES
    our_email, their_email = EMAILS
    attachment = "https://example.com/a%20b.png?q='--&x=<y>#frag"
    accepted = [
        await post(gateway, "/api/messages/sms", {"from": ours, "to": theirs, "type": "sms", "body": body}),
        await post(
            gateway,
            "/api/webhooks/sms",
            {
                "from": theirs,
                "to": ours,
                "type": "mms",
                "messaging_provider_id": SMS_PROVIDER_ID,
                "body": body,
                "attachments": [attachment],
            },
        ),
        await post(gateway, "/api/messages/email", {"from": our_email, "to": their_email, "body": body}),
        await post(
            gateway,
            "/api/webhooks/email",
            {
                "from": their_email,
                "to": our_email,
                "xillio_id": EMAIL_PROVIDER_ID,
                "body": body,
                "attachments": [attachment],
            },
        ),
    ]

    for message in accepted:
        assert message["body"] == body
        assert (await stored(gateway, message["id"]))["body"] == body
    inbound_mms = await stored(gateway, accepted[1]["id"])
    assert inbound_mms["attachments"] == [attachment]
    assert inbound_mms["provider_message_id"] == SMS_PROVIDER_ID
    inbound_email = await stored(gateway, accepted[3]["id"])
    assert inbound_email["provider_message_id"] == EMAIL_PROVIDER_ID
    # The lists carry the same bytes as the single reads.
    conversations = (await read_json(gateway, "/api/conversations"))["conversations"]
    assert len(conversations) == 2
    for conversation in conversations:
        messages = (await read_json(gateway, f"/api/conversations/{conversation['id']}/messages"))["messages"]
        assert [message["body"] for message in messages] == [body, body]
        assert conversation["last_message"]["body"] == body


@pytest.mark.parametrize(
    ("path", "payload", "body"),
    [
        (
            "/api/messages/sms",
            {"from": PHONES[0], "to": PHONES[1], "type": "sms"},
            # Astral characters: 1600 characters, but 3200 UTF-16 code units and 6400 bytes.
            "😀" * (SMS_LIMIT - 1) + "!",
        ),
        (
            "/api/webhooks/email",
            {"from": EMAILS[1], "to": EMAILS[0], "xillio_id": "long-1"},
            # As long as fits in MAX_REQUEST_BYTES (1 MiB): near the character limit, so mostly ASCII.
            "<p>ünïcödé " + "<b>html</b> &amp; text " * ((EMAIL_LIMIT - 20) // 23) + "</p>",
        ),
    ],
    ids=["sms at its limit", "email near its limit"],
)
async def test_bodies_as_long_as_allowed_come_back_whole(
    gateway: TestClient, path: str, payload: dict[str, Any], body: str
) -> None:
    assert len(body) <= (SMS_LIMIT if "sms" in path else EMAIL_LIMIT)

    accepted = await post(gateway, path, {**payload, "body": body})

    assert (await stored(gateway, accepted["id"]))["body"] == body
