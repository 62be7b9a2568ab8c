"""Both mock providers through `aiohttp_client`: they record what they were asked to send, replay a
repeated idempotency key, refuse what the real API would refuse, fail on purpose as told (by
`/control` and by magic addresses), and post delivery receipts."""

import asyncio
import base64
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from random import Random
from typing import Any

import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient, AiohttpServer

from common.contracts import utcnow
from common.mock_provider import RECEIPTS, MagicRecipients, MockBehaviour
from email_service import mock_provider as email_mock
from email_service.settings import EmailMockBehaviourSettings
from sms_service import mock_provider as sms_mock
from sms_service.settings import SmsMockBehaviourSettings
from tests.factories import CaughtReceipt, ReceiptCatcher, eventually

TO, FROM, BODY = "+18045551234", "+12016661234", "text message"
MEDIA = ["https://example.com/a.png", "https://example.com/b.png"]
OUR_MESSAGE_ID = "0b7e3c1e-5a43-4d0e-9a55-6b1f4f0c2d10"
SEED = 20241101
# What each test's mock starts with, and what `DELETE /control` returns to: receipts at once.
CONFIGURED = MockBehaviour(delivery_delay_seconds=0, receipt_backoff_seconds=0.01)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def twilio_request(
    to: str | None, sender: str | None, body: str | None, media: list[str], receipts_url: str
) -> dict[str, Any]:
    form = [(name, value) for name, value in (("To", to), ("From", sender), ("Body", body)) if value is not None]
    form += [("MediaUrl", url) for url in media]
    form += [("StatusCallback", f"{receipts_url}?message_id={OUR_MESSAGE_ID}")]
    auth = base64.b64encode(b"ACmock:mock-token").decode()
    return {"data": form, "headers": {"Authorization": f"Basic {auth}"}}


def sendgrid_request(
    to: str | None, sender: str | None, body: str | None, media: list[str], receipts_url: str
) -> dict[str, Any]:
    document: dict[str, Any] = {"subject": "Hello", "custom_args": {"message_id": OUR_MESSAGE_ID}}
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


def twilio_receipt(caught: CaughtReceipt) -> tuple[str, str, str]:
    """(our message id, the provider's id, the outcome) of a status callback."""
    return caught.query["message_id"], caught.body["MessageSid"], caught.body["MessageStatus"]


def sendgrid_receipt(caught: CaughtReceipt) -> tuple[str, str, str]:
    [event] = caught.body
    return event["message_id"], event["sg_message_id"], event["event"]


def create_twilio_mock(
    behaviour: MockBehaviour, random_source: Random, clock: FakeClock, receipts_url: str
) -> web.Application:
    # Twilio takes where receipts go with each message: see `twilio_request`.
    return sms_mock.create_app(behaviour, random_source=random_source, clock=clock)


def create_sendgrid_mock(
    behaviour: MockBehaviour, random_source: Random, clock: FakeClock, receipts_url: str
) -> web.Application:
    return email_mock.create_app(behaviour, event_webhook_url=receipts_url, random_source=random_source, clock=clock)


@dataclass(frozen=True)
class MockCase:
    name: str
    create_app: Callable[[MockBehaviour, Random, FakeClock, str], web.Application]
    path: str
    request: Callable[[str | None, str | None, str | None, list[str], str], dict[str, Any]]
    accepted_status: int
    read_id: Callable[[ClientResponse], Awaitable[str]]
    read_reason: Callable[[ClientResponse], Awaitable[str]]
    attachments_field: str
    magic: MagicRecipients
    read_receipt: Callable[[CaughtReceipt], tuple[str, str, str]]
    undelivered: str
    invalid_reason: str


CASES = [
    MockCase(
        "sms",
        create_twilio_mock,
        "/2010-04-01/Accounts/ACmock/Messages.json",
        twilio_request,
        201,
        twilio_id,
        twilio_reason,
        "media",
        sms_mock.MAGIC_NUMBERS,
        twilio_receipt,
        "undelivered",
        "The 'To' number +15005550001 is not a valid phone number.",
    ),
    MockCase(
        "email",
        create_sendgrid_mock,
        "/v3/mail/send",
        sendgrid_request,
        202,
        sendgrid_id,
        sendgrid_reason,
        "attachments",
        email_mock.MAGIC_ADDRESSES,
        sendgrid_receipt,
        "bounce",
        "Does not contain a valid address.",
    ),
]

Send = Callable[..., Awaitable[ClientResponse]]
Client = TestClient[web.Request, web.Application]


@pytest.fixture(params=CASES, ids=lambda case: case.name)
def case(request: pytest.FixtureRequest) -> MockCase:
    return request.param


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def catcher() -> ReceiptCatcher:
    return ReceiptCatcher()


@pytest.fixture
async def receipts_url(catcher: ReceiptCatcher, aiohttp_server: AiohttpServer) -> str:
    return str((await aiohttp_server(catcher.app())).make_url("/receipts"))


@pytest.fixture
async def client(case: MockCase, clock: FakeClock, receipts_url: str, aiohttp_client: AiohttpClient) -> Client:
    return await aiohttp_client(case.create_app(CONFIGURED, Random(SEED), clock, receipts_url))


@pytest.fixture
def send(case: MockCase, client: Client, receipts_url: str) -> Send:
    async def send(
        key: str | None = "key-1",
        *,
        to: str | None = TO,
        sender: str | None = FROM,
        body: str | None = BODY,
        media: list[str] = MEDIA,
    ) -> ClientResponse:
        kwargs = case.request(to, sender, body, media, receipts_url)
        if key is not None:
            kwargs["headers"]["Idempotency-Key"] = key
        return await client.post(case.path, **kwargs)

    return send


async def listed(client: Client) -> list[dict[str, Any]]:
    response = await client.get("/messages")
    assert response.status == 200
    return (await response.json())["messages"]


async def control(client: Client, method: str = "GET", **changes: Any) -> dict[str, Any]:
    response = await client.request(method, "/control", json=changes if method == "PATCH" else None)
    assert response.status == 200, await response.text()
    return await response.json()


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


async def test_a_send_without_credentials_is_refused(case: MockCase, client: Client, receipts_url: str) -> None:
    kwargs = case.request(TO, FROM, BODY, [], receipts_url)
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

    response = await client.post(CASES[0].path, **twilio_request(TO, FROM, None, MEDIA, "http://receipts.test"))

    assert response.status == 201
    [record] = await listed(client)
    assert (record["body"], record["media"]) == ("", MEDIA)


# --- /control


async def test_control_shows_the_configured_behaviour(client: Client) -> None:
    assert await control(client) == CONFIGURED.model_dump()


async def test_control_changes_only_the_fields_it_is_given_until_reset(client: Client) -> None:
    changed = await control(client, "PATCH", failure_rate=0.25, latency_seconds=0.5)

    assert changed == {**CONFIGURED.model_dump(), "failure_rate": 0.25, "latency_seconds": 0.5}
    assert await control(client) == changed
    assert await control(client, "PATCH", rate_limit_per_second=3) == {**changed, "rate_limit_per_second": 3}
    assert await control(client, "DELETE") == CONFIGURED.model_dump()
    assert await control(client) == CONFIGURED.model_dump()


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"failure_rate": 1.5}, "failure_rate"),
        ({"failure_rate": "often"}, "failure_rate"),
        ({"rate_limit_per_second": -1}, "rate_limit_per_second"),
        ({"latency_seconds": -0.1}, "latency_seconds"),
        ({"failure_rtae": 0.5}, "failure_rtae"),
    ],
)
async def test_control_refuses_a_bad_value_naming_the_field_and_keeps_the_behaviour(
    client: Client, changes: dict[str, Any], field: str
) -> None:
    response = await client.patch("/control", json=changes)

    assert response.status == 422
    assert [detail["field"] for detail in (await response.json())["details"]] == [field]
    assert await control(client) == CONFIGURED.model_dump()


@pytest.mark.parametrize(("body", "status"), [(b"{not json", 400), (b"[0.5]", 422)])
async def test_control_refuses_a_body_that_is_not_a_json_object(client: Client, body: bytes, status: int) -> None:
    response = await client.patch("/control", data=body, headers={"Content-Type": "application/json"})

    assert response.status == status
    assert (await response.json())["error"]
    assert await control(client) == CONFIGURED.model_dump()


def test_one_environment_configures_each_mock_under_its_own_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMS_MOCK_FAILURE_RATE", "0.25")
    monkeypatch.setenv("EMAIL_MOCK_RATE_LIMIT_PER_SECOND", "7")
    monkeypatch.setenv("FAILURE_RATE", "1")

    assert SmsMockBehaviourSettings().model_dump() == MockBehaviour(failure_rate=0.25).model_dump()
    assert EmailMockBehaviourSettings().model_dump() == MockBehaviour(rate_limit_per_second=7).model_dump()


# --- failure injection


async def test_at_a_failure_rate_of_one_every_send_fails_with_500_and_none_is_recorded(
    case: MockCase, client: Client, send: Send, catcher: ReceiptCatcher
) -> None:
    await control(client, "PATCH", failure_rate=1)

    responses = [await send(f"key-{n}") for n in range(5)]

    assert [response.status for response in responses] == [500] * 5
    assert await case.read_reason(responses[0]) == "Internal Server Error"
    assert await listed(client) == []
    assert catcher.posts == 0


async def test_failures_follow_the_seeded_random_source(case: MockCase, client: Client, send: Send) -> None:
    await control(client, "PATCH", failure_rate=0.5)
    draws = Random(SEED)
    expected = [500 if draws.random() < 0.5 else case.accepted_status for _ in range(20)]

    statuses = [(await send(f"key-{n}")).status for n in range(20)]

    assert statuses == expected
    assert 0 < statuses.count(500) < 20, "the seed should give a mix, or this test proves nothing"
    assert [record["idempotency_key"] for record in await listed(client)] == [
        f"key-{n}" for n, status in enumerate(statuses) if status != 500
    ]


async def test_a_key_that_failed_on_purpose_is_sent_when_tried_again(
    case: MockCase, client: Client, send: Send
) -> None:
    await control(client, "PATCH", failure_rate=1)
    assert (await send("key-1")).status == 500
    await control(client, "DELETE")

    assert (await send("key-1")).status == case.accepted_status
    assert len(await listed(client)) == 1


async def test_an_accepted_key_gets_its_original_answer_while_the_mock_fails(
    case: MockCase, client: Client, send: Send, catcher: ReceiptCatcher
) -> None:
    first = await send("key-1")
    await eventually(lambda: _caught(catcher, 1), "the receipt of the first send")
    await control(client, "PATCH", failure_rate=1, rate_limit_per_second=1)

    repeats = [await send("key-1") for _ in range(3)]

    assert [repeat.status for repeat in repeats] == [case.accepted_status] * 3
    assert {await case.read_id(repeat) for repeat in repeats} == {await case.read_id(first)}
    assert len(await listed(client)) == 1
    assert not client.app[RECEIPTS].pending and len(catcher.caught) == 1


async def test_beyond_the_rate_limit_a_send_is_answered_429_with_retry_after(
    case: MockCase, client: Client, send: Send, clock: FakeClock
) -> None:
    await control(client, "PATCH", rate_limit_per_second=2, retry_after_seconds=0.5)

    statuses = [(await send(f"key-{n}")).status for n in range(2)]
    limited = await send("key-2")
    clock.now += 0.5
    still_limited = await send("key-2")
    clock.now += 0.5
    after_a_second = await send("key-2")

    assert statuses == [case.accepted_status] * 2
    assert (limited.status, limited.headers["Retry-After"]) == (429, "0.5")
    assert await case.read_reason(limited) == "Too Many Requests"
    assert still_limited.status == 429
    assert after_a_second.status == case.accepted_status
    assert [record["idempotency_key"] for record in await listed(client)] == ["key-0", "key-1", "key-2"]


async def test_latency_delays_the_answer(case: MockCase, client: Client, send: Send) -> None:
    await control(client, "PATCH", latency_seconds=0.2)
    loop = asyncio.get_running_loop()
    started = loop.time()

    response = await send()

    assert response.status == case.accepted_status
    assert loop.time() - started >= 0.2


# --- magic addresses


async def test_the_invalid_address_is_refused_with_400_every_time(
    case: MockCase, client: Client, send: Send, catcher: ReceiptCatcher
) -> None:
    responses = [await send(f"key-{n}", to=case.magic.invalid) for n in range(2)]

    assert [response.status for response in responses] == [400, 400]
    assert await case.read_reason(responses[0]) == case.invalid_reason
    assert await listed(client) == []
    assert catcher.posts == 0


async def test_the_failing_address_is_answered_500_every_time_even_when_nothing_else_fails(
    case: MockCase, client: Client, send: Send
) -> None:
    statuses = [(await send("key-1", to=case.magic.failing)).status for _ in range(3)]

    assert statuses == [500] * 3
    assert await listed(client) == []


async def test_the_twilio_invalid_number_error_is_21211(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(sms_mock.create_app())

    response = await client.post(
        CASES[0].path, **twilio_request(sms_mock.MAGIC_NUMBERS.invalid, FROM, BODY, [], "http://receipts.test")
    )

    assert response.status == 400
    document = await response.json()
    assert (document["code"], document["status"]) == (21211, 400)
    assert document["message"] == "The 'To' number +15005550001 is not a valid phone number."


async def test_the_sendgrid_invalid_address_error_names_the_field(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(email_mock.create_app())

    response = await client.post(
        CASES[1].path, **sendgrid_request(email_mock.MAGIC_ADDRESSES.invalid, FROM, BODY, [], "http://receipts.test")
    )

    assert response.status == 400
    assert await response.json() == {
        "errors": [
            {"message": "Does not contain a valid address.", "field": "personalizations.0.to.0.email", "help": None}
        ]
    }


# --- delivery receipts


async def _caught(catcher: ReceiptCatcher, count: int) -> bool:
    return len(catcher.caught) >= count


async def test_an_accepted_send_gets_one_delivered_receipt_naming_both_ids(
    case: MockCase, send: Send, catcher: ReceiptCatcher
) -> None:
    response = await send("key-1")
    await send("key-1")

    await eventually(lambda: _caught(catcher, 1), "a delivery receipt")
    assert [case.read_receipt(caught) for caught in catcher.caught] == [
        (OUR_MESSAGE_ID, await case.read_id(response), "delivered")
    ]


async def test_the_unreachable_address_is_accepted_then_reported_undelivered(
    case: MockCase, client: Client, send: Send, catcher: ReceiptCatcher
) -> None:
    response = await send("key-1", to=case.magic.unreachable)

    assert response.status == case.accepted_status
    await eventually(lambda: _caught(catcher, 1), "a delivery receipt")
    assert [case.read_receipt(caught) for caught in catcher.caught] == [
        (OUR_MESSAGE_ID, await case.read_id(response), case.undelivered)
    ]
    assert len(await listed(client)) == 1


@pytest.mark.parametrize(
    ("to", "status", "error_code"),
    [(TO, "delivered", None), (sms_mock.MAGIC_NUMBERS.unreachable, "undelivered", "30003")],
)
async def test_a_twilio_status_callback_is_a_form_post_like_twilios(
    aiohttp_client: AiohttpClient, receipts_url: str, catcher: ReceiptCatcher, to: str, status: str, error_code: str
) -> None:
    client = await aiohttp_client(sms_mock.create_app(CONFIGURED))

    response = await client.post(CASES[0].path, **twilio_request(to, FROM, BODY, [], receipts_url))

    await eventually(lambda: _caught(catcher, 1), "a status callback")
    [caught] = catcher.caught
    expected = {
        "MessageSid": (await response.json())["sid"],
        "MessageStatus": status,
        "To": to,
        "From": FROM,
        "AccountSid": "ACmock",
        "ApiVersion": "2010-04-01",
    }
    if error_code is not None:
        expected["ErrorCode"] = error_code
    assert (caught.query, caught.body) == ({"message_id": OUR_MESSAGE_ID}, expected)


@pytest.mark.parametrize(
    ("to", "event", "reason"),
    [(TO, "delivered", None), (email_mock.MAGIC_ADDRESSES.unreachable, "bounce", email_mock.BOUNCE_REASON)],
)
async def test_a_sendgrid_event_is_a_json_array_like_sendgrids(
    aiohttp_client: AiohttpClient, receipts_url: str, catcher: ReceiptCatcher, to: str, event: str, reason: str
) -> None:
    client = await aiohttp_client(email_mock.create_app(CONFIGURED, event_webhook_url=receipts_url))
    before = int(utcnow().timestamp())

    response = await client.post(CASES[1].path, **sendgrid_request(to, FROM, BODY, [], receipts_url))

    await eventually(lambda: _caught(catcher, 1), "an event webhook")
    [caught] = catcher.caught
    [posted] = caught.body
    assert posted.pop("sg_event_id")
    assert before <= posted.pop("timestamp") <= int(utcnow().timestamp())
    expected = {
        "email": to,
        "event": event,
        "sg_message_id": response.headers["X-Message-Id"],
        "message_id": OUR_MESSAGE_ID,
    }
    if reason is not None:
        expected["reason"] = reason
    assert posted == expected


async def test_a_receipt_not_taken_is_posted_again(case: MockCase, send: Send, catcher: ReceiptCatcher) -> None:
    catcher.failures_left = 2

    await send("key-1")

    await eventually(lambda: _caught(catcher, 1), "a receipt after two refusals")
    assert (catcher.posts, len(catcher.caught)) == (3, 1)


async def test_a_receipt_is_given_up_after_its_attempts(
    case: MockCase, client: Client, send: Send, catcher: ReceiptCatcher
) -> None:
    await control(client, "PATCH", receipt_attempts=3)
    catcher.failures_left = 10
    await send("key-1")

    async def given_up() -> bool:
        return not client.app[RECEIPTS].pending

    await eventually(given_up, "the receipt to be given up")
    assert (catcher.posts, catcher.caught) == (3, [])


async def test_no_receipt_is_posted_where_none_was_asked_for(aiohttp_client: AiohttpClient) -> None:
    sms = await aiohttp_client(sms_mock.create_app(CONFIGURED))
    email = await aiohttp_client(email_mock.create_app(CONFIGURED))
    sms_request = twilio_request(TO, FROM, BODY, [], "")
    sms_request["data"] = [(name, value) for name, value in sms_request["data"] if name != "StatusCallback"]

    assert (await sms.post(CASES[0].path, **sms_request)).status == 201
    assert (await email.post(CASES[1].path, **sendgrid_request(TO, FROM, BODY, [], ""))).status == 202
    assert not sms.app[RECEIPTS].pending and not email.app[RECEIPTS].pending


async def test_stopping_the_mock_cancels_the_receipts_not_yet_posted(
    case: MockCase, client: Client, send: Send, catcher: ReceiptCatcher
) -> None:
    await control(client, "PATCH", delivery_delay_seconds=60)
    await send("key-1")
    pending = set(client.app[RECEIPTS].pending)

    await client.close()

    assert len(pending) == 1 and all(task.cancelled() for task in pending)
    assert catcher.posts == 0
