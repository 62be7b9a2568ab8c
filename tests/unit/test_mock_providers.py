"""Both mock providers through `aiohttp_client`: they record what they were asked to send, replay a
repeated idempotency key, and refuse what the real API would refuse."""

import base64
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from email_service import mock_provider as email_mock
from sms_service import mock_provider as sms_mock

TO, FROM, BODY = "+18045551234", "+12016661234", "text message"
MEDIA = ["https://example.com/a.png", "https://example.com/b.png"]


def twilio_request(to: str | None, sender: str | None, body: str | None, media: list[str]) -> dict[str, Any]:
    form = [(name, value) for name, value in (("To", to), ("From", sender), ("Body", body)) if value is not None]
    form += [("MediaUrl", url) for url in media]
    auth = base64.b64encode(b"ACmock:mock-token").decode()
    return {"data": form, "headers": {"Authorization": f"Basic {auth}"}}


def sendgrid_request(to: str | None, sender: str | None, body: str | None, media: list[str]) -> dict[str, Any]:
    document: dict[str, Any] = {"subject": "Hello"}
    if to is not None:
        document["personalizations"] = [{"to": [{"email": to}]}]
    if sender is not None:
        document["from"] = {"email": sender}
    if body is not None:
        document["content"] = [{"type": "text/html", "value": body}]
    if media:
        document["attachments"] = [{"url": url} for url in media]
    return {"json": document, "headers": {"Authorization": "Bearer mock-key"}}


async def twilio_id(response: ClientResponse) -> str:
    return (await response.json())["sid"]


async def sendgrid_id(response: ClientResponse) -> str:
    return response.headers["X-Message-Id"]


async def twilio_reason(response: ClientResponse) -> str:
    return (await response.json())["message"]


async def sendgrid_reason(response: ClientResponse) -> str:
    return (await response.json())["errors"][0]["message"]


@dataclass(frozen=True)
class MockCase:
    name: str
    create_app: Callable[[], web.Application]
    path: str
    request: Callable[[str | None, str | None, str | None, list[str]], dict[str, Any]]
    accepted_status: int
    read_id: Callable[[ClientResponse], Awaitable[str]]
    read_reason: Callable[[ClientResponse], Awaitable[str]]
    attachments_field: str


CASES = [
    MockCase(
        "sms",
        sms_mock.create_app,
        "/2010-04-01/Accounts/ACmock/Messages.json",
        twilio_request,
        201,
        twilio_id,
        twilio_reason,
        "media",
    ),
    MockCase(
        "email",
        email_mock.create_app,
        "/v3/mail/send",
        sendgrid_request,
        202,
        sendgrid_id,
        sendgrid_reason,
        "attachments",
    ),
]

Send = Callable[..., Awaitable[ClientResponse]]
Client = TestClient[web.Request, web.Application]


@pytest.fixture(params=CASES, ids=lambda case: case.name)
def case(request: pytest.FixtureRequest) -> MockCase:
    return request.param


@pytest.fixture
async def client(case: MockCase, aiohttp_client: AiohttpClient) -> Client:
    return await aiohttp_client(case.create_app())


@pytest.fixture
def send(case: MockCase, client: Client) -> Send:
    async def send(
        key: str | None = "key-1",
        *,
        to: str | None = TO,
        sender: str | None = FROM,
        body: str | None = BODY,
        media: list[str] = MEDIA,
    ) -> ClientResponse:
        kwargs = case.request(to, sender, body, media)
        if key is not None:
            kwargs["headers"]["Idempotency-Key"] = key
        return await client.post(case.path, **kwargs)

    return send


async def listed(client: Client) -> list[dict[str, Any]]:
    response = await client.get("/messages")
    assert response.status == 200
    return (await response.json())["messages"]


async def test_a_send_is_recorded_and_listed(case: MockCase, client: Client, send: Send) -> None:
    response = await send("key-1")

    assert response.status == case.accepted_status
    [record] = await listed(client)
    assert record.pop("received_at")
    assert record == {
        "id": await case.read_id(response),
        "to": TO,
        "from": FROM,
        "body": BODY,
        case.attachments_field: MEDIA,
        "idempotency_key": "key-1",
    }


async def test_a_repeated_idempotency_key_gets_the_first_answer_and_sends_once(
    case: MockCase, client: Client, send: Send
) -> None:
    first = await send("key-1")
    repeat = await send("key-1")
    other = await send("key-2")

    assert repeat.status == first.status == other.status == case.accepted_status
    assert await case.read_id(repeat) == await case.read_id(first) != await case.read_id(other)
    assert [record["idempotency_key"] for record in await listed(client)] == ["key-1", "key-2"]


async def test_sends_without_a_key_are_each_recorded(client: Client, send: Send) -> None:
    await send(None)
    await send(None)

    assert len(await listed(client)) == 2


@pytest.mark.parametrize("missing", ["to", "sender", "body"])
async def test_a_send_missing_a_required_field_is_refused_with_a_reason(
    case: MockCase, client: Client, send: Send, missing: str
) -> None:
    response = await send(**{missing: None, "media": []})

    assert response.status == 400
    assert await case.read_reason(response)
    assert await listed(client) == []


async def test_a_refused_key_may_be_sent_again(case: MockCase, client: Client, send: Send) -> None:
    assert (await send("key-1", to=None)).status == 400

    assert (await send("key-1")).status == case.accepted_status
    assert len(await listed(client)) == 1


async def test_a_send_without_credentials_is_refused(case: MockCase, client: Client) -> None:
    kwargs = case.request(TO, FROM, BODY, [])
    del kwargs["headers"]["Authorization"]

    response = await client.post(case.path, **kwargs)

    assert response.status == 401
    assert await listed(client) == []


async def test_clearing_forgets_records_and_keys(case: MockCase, client: Client, send: Send) -> None:
    await send("key-1")

    assert (await client.delete("/messages")).status == 204
    assert await listed(client) == []
    assert (await send("key-1")).status == case.accepted_status
    assert len(await listed(client)) == 1


async def test_health(client: Client) -> None:
    response = await client.get("/healthz")

    assert response.status == 200


async def test_an_mms_may_go_without_text_as_in_twilio(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(sms_mock.create_app())

    response = await client.post(CASES[0].path, **twilio_request(TO, FROM, None, MEDIA))

    assert response.status == 201
    [record] = await listed(client)
    assert (record["body"], record["media"]) == ("", MEDIA)
