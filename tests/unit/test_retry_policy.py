"""The provider retry policy on a fake clock: which failures are retried, how long it waits, when it
gives up. Nothing here sleeps; every wait is recorded and moves the fake clock instead."""

from collections.abc import AsyncIterator, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import aiohttp
import pytest
from aioresponses import aioresponses

from common.contracts import MessageStatus, SendMessage
from common.provider import (
    PermanentProviderError,
    ProviderClient,
    ProviderError,
    ProviderRequest,
    ProviderRetrySettings,
    RetryPolicy,
    TransientProviderError,
    json_text_field,
    parse_retry_after,
)
from tests.factories import send_message

PROVIDER_URL = "http://provider.test/messages"
ACCEPTED: dict[str, Any] = {"status": 201, "payload": {"id": "provider-1"}}


class FakeTime:
    """A monotonic clock that moves only when the policy sleeps or an attempt takes time."""

    def __init__(self) -> None:
        self.now = 0.0
        self.waits: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds


def largest_draw(low: float, high: float) -> float:
    """Full jitter at its most patient, so that every backoff is its bound and tests can name it."""
    return high


def a_policy(time: FakeTime, **overrides: Any) -> RetryPolicy:
    knobs: dict[str, Any] = {
        "max_attempts": 5,
        "backoff_initial_seconds": 1.0,
        "backoff_max_seconds": 8.0,
        "retry_after_cap_seconds": 30.0,
        "deadline_seconds": 60.0,
        "sleep": time.sleep,
        "clock": time.clock,
        "uniform": largest_draw,
        **overrides,
    }
    return RetryPolicy(**knobs)


class ScriptedCall:
    """A provider call that fails with `failures` in turn, then succeeds; each attempt takes
    `attempt_seconds` of the fake clock."""

    def __init__(self, time: FakeTime, *failures: ProviderError, attempt_seconds: float = 0.0) -> None:
        self._time = time
        self._failures = list(failures)
        self._attempt_seconds = attempt_seconds
        self.attempts = 0

    async def __call__(self) -> str:
        self.attempts += 1
        self._time.now += self._attempt_seconds
        if self._failures:
            raise self._failures.pop(0)
        return "provider-1"


async def run(policy: RetryPolicy, call: ScriptedCall) -> str:
    return await policy.retrying(before_sleep=lambda state: None)(call)


def unavailable(retry_after: float | None = None) -> TransientProviderError:
    return TransientProviderError("Service Unavailable", 503, retry_after)


@pytest.fixture
def time() -> FakeTime:
    return FakeTime()


class OneUrlProvider(ProviderClient[ProviderRetrySettings]):
    """The smallest provider: JSON to one URL, its id in `{"id": ...}`; the retry rules are the base class's."""

    def build_request(self, command: SendMessage) -> ProviderRequest:
        return ProviderRequest(PROVIDER_URL, json={"to": command.content.to_address})

    def message_id(self, headers: Mapping[str, str], body: bytes) -> str | None:
        return json_text_field(body, "id")


@pytest.fixture
async def client(time: FakeTime) -> AsyncIterator[OneUrlProvider]:
    async with OneUrlProvider(ProviderRetrySettings(), retry=a_policy(time)) as provider_client:
        yield provider_client


@pytest.fixture
def provider() -> Iterator[aioresponses]:
    with aioresponses() as mocked:
        yield mocked


def posts(provider: aioresponses) -> int:
    return sum(len(calls) for (method, _), calls in provider.requests.items() if method == "POST")


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
async def test_a_rate_limit_or_server_error_is_tried_again_after_a_backoff(
    status: int, client: OneUrlProvider, provider: aioresponses, time: FakeTime
) -> None:
    provider.post(PROVIDER_URL, status=status, body="try later")
    provider.post(PROVIDER_URL, **ACCEPTED)

    outcome = await client.send(send_message())

    assert (outcome.status, outcome.attempts, outcome.provider_message_id) == (MessageStatus.SENT, 2, "provider-1")
    assert time.waits == [1.0]


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
async def test_any_other_client_error_fails_at_once(
    status: int, client: OneUrlProvider, provider: aioresponses, time: FakeTime
) -> None:
    provider.post(PROVIDER_URL, status=status, body="no such recipient")
    provider.post(PROVIDER_URL, **ACCEPTED)

    outcome = await client.send(send_message())

    assert (outcome.status, outcome.attempts) == (MessageStatus.FAILED, 1)
    assert outcome.error == f"provider answered HTTP {status}: no such recipient"
    assert posts(provider) == 1 and time.waits == []


@pytest.mark.parametrize(
    "failure",
    [
        aiohttp.ServerDisconnectedError(),
        aiohttp.ClientOSError(104, "Connection reset by peer"),
        aiohttp.ServerTimeoutError("Timeout on reading data from socket"),
    ],
    ids=["disconnected", "reset", "read-timeout"],
)
async def test_a_dropped_connection_or_a_slow_answer_is_tried_again(
    failure: Exception, client: OneUrlProvider, provider: aioresponses, time: FakeTime
) -> None:
    provider.post(PROVIDER_URL, exception=failure)
    provider.post(PROVIDER_URL, **ACCEPTED)

    outcome = await client.send(send_message())

    assert (outcome.status, outcome.attempts) == (MessageStatus.SENT, 2)
    assert time.waits == [1.0]


async def test_a_retry_after_given_as_an_http_date_is_waited_out(
    client: OneUrlProvider, provider: aioresponses, time: FakeTime
) -> None:
    in_twenty_seconds = format_datetime(datetime.now(UTC) + timedelta(seconds=20), usegmt=True)
    provider.post(PROVIDER_URL, status=429, headers={"Retry-After": in_twenty_seconds})
    provider.post(PROVIDER_URL, **ACCEPTED)

    outcome = await client.send(send_message())

    assert (outcome.status, outcome.attempts) == (MessageStatus.SENT, 2)
    # An HTTP date has whole seconds, so up to one is lost to rounding, and a little to the test running.
    [wait] = time.waits
    assert 18 < wait <= 20


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("Fri, 01 Nov 2024 14:01:30 GMT", 90.0),
        ("Fri, 01 Nov 2024 14:01:30 -0000", 90.0),
        ("Fri, 01 Nov 2024 16:01:30 +0200", 90.0),
        ("Fri, 01 Nov 2024 13:59:00 GMT", 0.0),
    ],
    ids=["gmt", "unknown-zone", "offset", "past"],
)
def test_an_http_date_counts_from_now(header: str, seconds: float) -> None:
    now = datetime(2024, 11, 1, 14, 0, tzinfo=UTC)

    assert parse_retry_after(header, now=lambda: now) == seconds


@pytest.mark.parametrize(
    ("retry_after", "wait"),
    [(None, 1.0), (5.0, 5.0), (3600.0, 30.0), (0.5, 1.0)],
    ids=["no-header", "longer-than-backoff", "beyond-the-cap", "shorter-than-backoff"],
)
async def test_the_wait_is_the_longer_of_the_backoff_and_the_capped_retry_after(
    time: FakeTime, retry_after: float | None, wait: float
) -> None:
    call = ScriptedCall(time, unavailable(retry_after))

    assert await run(a_policy(time), call) == "provider-1"

    assert time.waits == [wait]


async def test_backoff_is_drawn_from_zero_up_to_a_bound_that_doubles_to_its_maximum(time: FakeTime) -> None:
    bounds: list[float] = []

    def draw(low: float, high: float) -> float:
        assert low == 0
        bounds.append(high)
        return high / 2

    call = ScriptedCall(time, *(unavailable() for _ in range(5)))

    assert await run(a_policy(time, max_attempts=6, uniform=draw), call) == "provider-1"

    assert bounds == [1.0, 2.0, 4.0, 8.0, 8.0]
    assert time.waits == [0.5, 1.0, 2.0, 4.0, 4.0]


async def test_the_last_attempt_gives_up_with_the_providers_error(time: FakeTime) -> None:
    failures = [unavailable() for _ in range(3)]
    call = ScriptedCall(time, *failures, unavailable())

    with pytest.raises(TransientProviderError) as raised:
        await run(a_policy(time, max_attempts=3), call)

    assert raised.value is failures[-1]
    assert call.attempts == 3
    assert len(time.waits) == 2


async def test_a_refusal_is_not_retried(time: FakeTime) -> None:
    call = ScriptedCall(time, PermanentProviderError("invalid number", 400))

    with pytest.raises(PermanentProviderError):
        await run(a_policy(time), call)

    assert call.attempts == 1 and time.waits == []


async def test_time_spent_in_attempts_counts_against_the_deadline(time: FakeTime) -> None:
    call = ScriptedCall(time, *(unavailable() for _ in range(4)), attempt_seconds=2.0)

    with pytest.raises(TransientProviderError):
        await run(a_policy(time, deadline_seconds=10.0), call)

    # Attempts end at 2 and 5 s and are followed by waits of 1 and 2 s; the third ends at 9 s, and
    # its 4 s backoff would start the fourth after the deadline.
    assert call.attempts == 3
    assert time.waits == [1.0, 2.0]


async def test_a_retry_after_that_ends_right_on_the_deadline_is_waited_out(time: FakeTime) -> None:
    call = ScriptedCall(time, unavailable(retry_after=10.0), attempt_seconds=50.0)

    assert await run(a_policy(time, deadline_seconds=60.0), call) == "provider-1"

    assert call.attempts == 2 and time.waits == [10.0]


async def test_a_retry_after_longer_than_the_time_left_ends_the_retries_without_sleeping(time: FakeTime) -> None:
    rate_limited = TransientProviderError("Too Many Requests", 429, retry_after=20.0)
    call = ScriptedCall(time, rate_limited, attempt_seconds=50.0)

    with pytest.raises(TransientProviderError) as raised:
        await run(a_policy(time, deadline_seconds=60.0), call)

    assert raised.value is rate_limited
    assert call.attempts == 1 and time.waits == []


async def test_every_call_has_a_deadline_of_its_own(time: FakeTime) -> None:
    policy = a_policy(time, deadline_seconds=10.0)
    await run(policy, ScriptedCall(time))
    time.now += 3600

    call = ScriptedCall(time, unavailable())

    assert await run(policy, call) == "provider-1"
    assert call.attempts == 2
