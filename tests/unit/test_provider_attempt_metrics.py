"""Every HTTP attempt at a provider is counted by what came of it, retries included."""

from collections.abc import Iterator

import aiohttp
import pytest
from aioresponses import aioresponses
from prometheus_client import generate_latest

from common.contracts import MessageStatus
from common.metrics import Metrics
from sms_service.provider import SmsProviderClient
from sms_service.settings import SmsSettings
from tests.factories import send_message
from tests.prometheus import parse, value

URL = "http://sms.test/2010-04-01/Accounts/ACtest/Messages.json"
SETTINGS = SmsSettings(
    sms_provider_url="http://sms.test/",
    sms_provider_account_sid="ACtest",
    sms_provider_auth_token="secret",
    provider_max_attempts=6,
    provider_backoff_initial_seconds=0.001,
    provider_backoff_max_seconds=0.001,
)


@pytest.fixture
def provider() -> Iterator[aioresponses]:
    with aioresponses() as mocked:
        yield mocked


def attempts(metrics: Metrics) -> dict[str, float]:
    samples = parse(generate_latest(metrics.registry).decode())
    outcomes = ("accepted", "rate_limited", "server_error", "timeout", "unreachable", "refused", "bad_answer")
    return {o: value(samples, "messaging_provider_attempts_total", {"outcome": o}) for o in outcomes}


async def test_each_attempt_is_counted_under_its_outcome(provider: aioresponses) -> None:
    metrics = Metrics()
    provider.post(URL, status=429, headers={"Retry-After": "0"})
    provider.post(URL, status=503, body="down")
    provider.post(URL, exception=TimeoutError())
    provider.post(URL, exception=aiohttp.ClientConnectionError("refused"))
    provider.post(URL, status=201, payload={"sid": "SM1"})
    provider.post(URL, status=400, payload={"message": "The 'To' number is not valid."})

    async with SmsProviderClient(SETTINGS, metrics=metrics) as client:
        sent = await client.send(send_message())
        refused = await client.send(send_message())

    assert (sent.status, sent.attempts, refused.status) == (MessageStatus.SENT, 5, MessageStatus.FAILED)
    assert attempts(metrics) == {
        "accepted": 1,
        "rate_limited": 1,
        "server_error": 1,
        "timeout": 1,
        "unreachable": 1,
        "refused": 1,
        "bad_answer": 0,
    }


async def test_an_accepted_answer_without_a_message_id_is_a_bad_answer(provider: aioresponses) -> None:
    metrics = Metrics()
    provider.post(URL, status=201, payload={"status": "queued"})

    async with SmsProviderClient(SETTINGS, metrics=metrics) as client:
        outcome = await client.send(send_message())

    assert outcome.status is MessageStatus.FAILED
    assert attempts(metrics)["bad_answer"] == 1
    assert attempts(metrics)["accepted"] == 0
