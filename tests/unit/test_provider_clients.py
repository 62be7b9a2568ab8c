"""Both provider clients against aioresponses: what they send, and how they retry or give up."""

import base64
import dataclasses
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import aiohttp
import pytest
from aioresponses import aioresponses
from aioresponses.core import RequestCall
from yarl import URL

from common.contracts import Channel, MessageStatus, SendMessage
from common.provider import ProviderClient, RetryPolicy, parse_retry_after
from email_service.provider import EmailProviderClient, subject_of
from email_service.settings import EmailSettings
from sms_service.provider import SmsProviderClient
from sms_service.settings import SmsSettings
from tests.factories import send_message

FAST_RETRY: dict[str, Any] = {
    "provider_max_attempts": 4,
    "provider_backoff_initial_seconds": 0.001,
    "provider_backoff_max_seconds": 0.01,
    "provider_retry_after_cap_seconds": 30,
    "provider_deadline_seconds": 60,
}


def check_twilio_request(call: RequestCall, sent: SendMessage) -> None:
    assert call.kwargs["headers"]["Authorization"] == f"Basic {base64.b64encode(b'ACtest:secret').decode()}"
    assert call.kwargs["headers"]["Idempotency-Key"] == str(sent.message_id)
    assert list(call.kwargs["data"]) == [
        ("To", "+18045551234"),
        ("From", "+12016661234"),
        ("Body", "text message"),
        ("MediaUrl", "https://example.com/a.png"),
        ("MediaUrl", "https://example.com/b.png"),
        ("StatusCallback", f"https://gateway.test/api/webhooks/sms/status?message_id={sent.message_id}"),
    ]


def check_sendgrid_request(call: RequestCall, sent: SendMessage) -> None:
    assert call.kwargs["headers"]["Authorization"] == "Bearer SG.test"
    assert call.kwargs["headers"]["Idempotency-Key"] == str(sent.message_id)
    assert call.kwargs["json"] == {
        "personalizations": [{"to": [{"email": "contact@gmail.com"}]}],
        "from": {"email": "user@usehatchapp.com"},
        "subject": "Hello & welcome",
        "content": [{"type": "text/html", "value": "<p>Hello &amp; welcome</p>"}],
        "custom_args": {"message_id": str(sent.message_id)},
        "attachments": [{"url": "https://example.com/a.png"}, {"url": "https://example.com/b.png"}],
    }


@dataclass(frozen=True)
class ProviderCase:
    """One provider: the body it is sent, how to reach it, and how its success and refusal answers look."""

    channel: Channel
    body: str
    make_client: Callable[[RetryPolicy | None], ProviderClient[Any]]
    url: str
    accepted: dict[str, Any]
    provider_message_id: str
    refused: dict[str, Any]
    refusal_reason: str
    check_request: Callable[[RequestCall, SendMessage], None]


SMS_SETTINGS = SmsSettings(
    sms_provider_url="http://sms.test/",
    sms_provider_account_sid="ACtest",
    sms_provider_auth_token="secret",
    sms_status_callback_url="https://gateway.test/api/webhooks/sms/status",
    **FAST_RETRY,
)
EMAIL_SETTINGS = EmailSettings(email_provider_url="http://email.test", email_provider_api_key="SG.test", **FAST_RETRY)

CASES = [
    ProviderCase(
        channel=Channel.MMS,
        body="text message",
        make_client=lambda retry: SmsProviderClient(SMS_SETTINGS, retry=retry),
        url="http://sms.test/2010-04-01/Accounts/ACtest/Messages.json",
        accepted={"status": 201, "payload": {"sid": "SM123", "status": "queued"}},
        provider_message_id="SM123",
        refused={"status": 400, "payload": {"code": 21211, "message": "The 'To' number is not valid."}},
        refusal_reason="The 'To' number is not valid.",
        check_request=check_twilio_request,
    ),
    ProviderCase(
        channel=Channel.EMAIL,
        body="<p>Hello &amp; welcome</p>",
        make_client=lambda retry: EmailProviderClient(EMAIL_SETTINGS, retry=retry),
        url="http://email.test/v3/mail/send",
        accepted={"status": 202, "body": "", "headers": {"X-Message-Id": "sg-123"}},
        provider_message_id="sg-123",
        refused={"status": 400, "payload": {"errors": [{"message": "Invalid from email.", "field": "from"}]}},
        refusal_reason="Invalid from email.",
        check_request=check_sendgrid_request,
    ),
]


@pytest.fixture(params=CASES, ids=lambda case: case.channel.value)
def case(request: pytest.FixtureRequest) -> ProviderCase:
    return request.param


@pytest.fixture
def sleeps() -> list[float]:
    """The waits between attempts; recorded instead of slept, so the tests can check them."""
    return []


@pytest.fixture
async def client(case: ProviderCase, sleeps: list[float]) -> AsyncIterator[ProviderClient[Any]]:
    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    settings = SMS_SETTINGS if case.channel is Channel.MMS else EMAIL_SETTINGS
    retry = dataclasses.replace(RetryPolicy.from_settings(settings), sleep=sleep)
    async with case.make_client(retry) as provider_client:
        yield provider_client


@pytest.fixture
def provider() -> Iterator[aioresponses]:
    with aioresponses() as mocked:
        yield mocked


def sent_requests(provider: aioresponses, case: ProviderCase) -> list[RequestCall]:
    return provider.requests.get(("POST", URL(case.url)), [])


def a_command(case: ProviderCase) -> SendMessage:
    return send_message(
        case.channel, body=case.body, attachments=("https://example.com/a.png", "https://example.com/b.png")
    )


async def test_a_send_posts_the_message_once_and_reads_the_provider_id(
    case: ProviderCase, client: ProviderClient[Any], provider: aioresponses
) -> None:
    provider.post(case.url, **case.accepted)
    sent = a_command(case)

    outcome = await client.send(sent)

    assert outcome.status is MessageStatus.SENT
    assert outcome.provider_message_id == case.provider_message_id
    assert outcome.attempts == 1
    [call] = sent_requests(provider, case)
    case.check_request(call, sent)


async def test_a_rate_limit_is_waited_out_for_at_least_its_retry_after(
    case: ProviderCase, client: ProviderClient[Any], provider: aioresponses, sleeps: list[float]
) -> None:
    provider.post(case.url, status=429, headers={"Retry-After": "3"}, payload={"message": "Too Many Requests"})
    provider.post(case.url, **case.accepted)

    outcome = await client.send(a_command(case))

    assert (outcome.status, outcome.attempts) == (MessageStatus.SENT, 2)
    assert len(sleeps) == 1 and 3 <= sleeps[0] < 3.1


async def test_a_retry_after_beyond_the_cap_waits_only_the_cap(
    case: ProviderCase, client: ProviderClient[Any], provider: aioresponses, sleeps: list[float]
) -> None:
    provider.post(case.url, status=429, headers={"Retry-After": "3600"})
    provider.post(case.url, **case.accepted)

    outcome = await client.send(a_command(case))

    assert outcome.status is MessageStatus.SENT
    assert sleeps == [30]


async def test_a_server_error_is_retried_with_the_same_idempotency_key(
    case: ProviderCase, client: ProviderClient[Any], provider: aioresponses
) -> None:
    provider.post(case.url, status=500, body="Internal Server Error")
    provider.post(case.url, **case.accepted)
    sent = a_command(case)

    outcome = await client.send(sent)

    assert (outcome.status, outcome.provider_message_id, outcome.attempts) == (
        MessageStatus.SENT,
        case.provider_message_id,
        2,
    )
    keys = [call.kwargs["headers"]["Idempotency-Key"] for call in sent_requests(provider, case)]
    assert keys == [str(sent.message_id)] * 2


@pytest.mark.parametrize(
    "failure", [aiohttp.ClientConnectionError("Connection refused"), TimeoutError()], ids=["refused", "timeout"]
)
async def test_an_unreachable_provider_is_tried_again(
    case: ProviderCase, client: ProviderClient[Any], provider: aioresponses, failure: Exception
) -> None:
    provider.post(case.url, exception=failure)
    provider.post(case.url, **case.accepted)

    outcome = await client.send(a_command(case))

    assert (outcome.status, outcome.attempts) == (MessageStatus.SENT, 2)


async def test_a_refusal_fails_at_once_with_the_providers_reason(
    case: ProviderCase, client: ProviderClient[Any], provider: aioresponses, sleeps: list[float]
) -> None:
    provider.post(case.url, **case.refused)
    provider.post(case.url, **case.accepted)

    outcome = await client.send(a_command(case))

    assert (outcome.status, outcome.attempts) == (MessageStatus.FAILED, 1)
    assert outcome.error == f"provider answered HTTP 400: {case.refusal_reason}"
    assert outcome.provider_message_id is None
    assert len(sent_requests(provider, case)) == 1 and sleeps == []


async def test_a_provider_that_keeps_failing_is_given_up_after_the_last_attempt(
    case: ProviderCase, client: ProviderClient[Any], provider: aioresponses, sleeps: list[float]
) -> None:
    provider.post(case.url, status=503, body="Service Unavailable", repeat=True)

    outcome = await client.send(a_command(case))

    assert (outcome.status, outcome.attempts) == (MessageStatus.FAILED, FAST_RETRY["provider_max_attempts"])
    assert outcome.error == "provider answered HTTP 503: Service Unavailable"
    assert len(sent_requests(provider, case)) == FAST_RETRY["provider_max_attempts"]
    assert len(sleeps) == FAST_RETRY["provider_max_attempts"] - 1


async def test_no_attempt_starts_past_the_deadline(case: ProviderCase, provider: aioresponses) -> None:
    settings = SMS_SETTINGS if case.channel is Channel.MMS else EMAIL_SETTINGS
    retry = dataclasses.replace(RetryPolicy.from_settings(settings), deadline_seconds=5)
    provider.post(case.url, status=429, headers={"Retry-After": "10"})
    provider.post(case.url, **case.accepted)

    async with case.make_client(retry) as client:
        outcome = await client.send(a_command(case))

    assert (outcome.status, outcome.attempts) == (MessageStatus.FAILED, 1)
    assert outcome.error is not None and "429" in outcome.error


async def test_an_acceptance_without_a_message_id_is_a_failure(
    case: ProviderCase, client: ProviderClient[Any], provider: aioresponses
) -> None:
    provider.post(case.url, status=case.accepted["status"], body="")

    outcome = await client.send(a_command(case))

    assert (outcome.status, outcome.attempts) == (MessageStatus.FAILED, 1)
    assert outcome.error is not None and "no message id" in outcome.error


async def test_an_sms_without_media_posts_no_media_url() -> None:
    async with SmsProviderClient(SMS_SETTINGS) as client:
        request = client.build_request(send_message(Channel.SMS))

    assert request.form is not None
    assert [name for name, _ in request.form] == ["To", "From", "Body", "StatusCallback"]


@pytest.mark.parametrize("turned_off", ["", None])
async def test_without_a_status_callback_url_an_sms_asks_for_no_receipt(turned_off: str | None) -> None:
    settings = SMS_SETTINGS.model_copy(update={"sms_status_callback_url": turned_off})
    async with SmsProviderClient(settings) as client:
        request = client.build_request(send_message(Channel.SMS))

    assert request.form is not None and [name for name, _ in request.form] == ["To", "From", "Body"]


async def test_a_status_callback_url_keeps_its_own_query() -> None:
    settings = SMS_SETTINGS.model_copy(update={"sms_status_callback_url": "https://gateway.test/status?token=abc"})
    command = send_message(Channel.SMS)
    async with SmsProviderClient(settings) as client:
        request = client.build_request(command)

    assert request.form is not None
    assert dict(request.form)["StatusCallback"] == (
        f"https://gateway.test/status?token=abc&message_id={command.message_id}"
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [("7", 7.0), ("0.5", 0.5), ("-3", 0.0), ("soon", None), (None, None), ("nan", None)],
)
def test_retry_after_in_seconds(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value) == expected


def test_retry_after_as_an_http_date() -> None:
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)
    earlier = format_datetime(datetime.now(UTC) - timedelta(seconds=120), usegmt=True)

    assert 110 < (parse_retry_after(later) or 0) <= 120
    assert parse_retry_after(earlier) == 0.0


@pytest.mark.parametrize(
    ("body", "subject"),
    [
        ("<html><body>html is <b>allowed</b> here</body></html>", "html is allowed here"),
        ("plain text", "plain text"),
        ("<p></p>", "(no subject)"),
        ("word " * 40, ("word " * 40)[:77].rstrip() + "…"),
    ],
)
def test_an_email_subject_is_the_start_of_its_text(body: str, subject: str) -> None:
    assert subject_of(body) == subject
