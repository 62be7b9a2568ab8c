"""Sending a message through a provider's HTTP API.

Retry lives here, around the one HTTP call and nowhere else: a transient failure (429, 5xx, a
connection error, a timeout) is retried with exponential backoff and full jitter, waiting at least
what the provider's `Retry-After` asks, until the attempts or the total deadline run out; any other
4xx fails at once. Every attempt carries the message id as `Idempotency-Key`, so a retry, or a
redelivery of the whole command, is sent once by a provider that honours the key (the mocks do;
with a real provider this guarantee is only as good as its idempotency support).
"""

import asyncio
import json
import logging
import math
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Any, Generic, Literal, Protocol, Self, TypeVar

import aiohttp
from pydantic import Field
from pydantic_settings import BaseSettings
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from common.contracts import MessageStatus, SendMessage, utcnow
from common.metrics import Metrics

log = logging.getLogger(__name__)

IDEMPOTENCY_KEY_HEADER = "Idempotency-Key"

# Enough of an error page to say what went wrong, not so much that it bloats the status event.
MAX_REASON_CHARS = 300


class ProviderRetrySettings(BaseSettings):
    """Knobs of the provider call; mixed into each channel service's settings."""

    provider_max_attempts: int = Field(5, ge=1, description="Attempts per message, the first included")
    provider_backoff_initial_seconds: float = Field(
        0.2, ge=0, description="Upper bound of the first random backoff; it doubles with every attempt"
    )
    provider_backoff_max_seconds: float = Field(10.0, ge=0, description="Largest backoff between attempts")
    provider_retry_after_cap_seconds: float = Field(
        30.0, ge=0, description="Longest wait a provider's Retry-After can impose"
    )
    provider_deadline_seconds: float = Field(
        60.0, gt=0, description="No attempt starts later than this after the first one"
    )
    provider_timeout_seconds: float = Field(10.0, gt=0, description="Time limit of one HTTP attempt")


class ProviderError(Exception):
    """The provider did not take the message."""

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(f"provider answered HTTP {status}: {reason}" if status is not None else reason)
        self.reason = reason
        self.status = status


class TransientProviderError(ProviderError):
    """Worth another try: rate limited, a server error, unreachable or too slow."""

    def __init__(self, reason: str, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(reason, status)
        self.retry_after = retry_after


class PermanentProviderError(ProviderError):
    """The provider refused the message itself; sending it again would get the same answer."""


def parse_retry_after(value: str | None, now: Callable[[], datetime] = utcnow) -> float | None:
    """Seconds to wait from a `Retry-After` header, which holds either seconds or an HTTP date
    (counted from `now()`)."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        # RFC 5322 reads "-0000" as UTC with no offset known, which Python gives back naive.
        seconds = (when.replace(tzinfo=when.tzinfo or UTC) - now()).total_seconds()
    return max(seconds, 0.0) if math.isfinite(seconds) else None


Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], float]
Uniform = Callable[[float, float], float]


@dataclass(frozen=True)
class RetryPolicy:
    """When to try a provider call again and how long to wait first.

    Its sources of time and chance (`sleep`, `clock`, `uniform`) are parameters, so tests can
    record the waits and move the clock instead of sleeping.
    """

    max_attempts: int
    backoff_initial_seconds: float
    backoff_max_seconds: float
    retry_after_cap_seconds: float
    deadline_seconds: float
    sleep: Sleep = asyncio.sleep
    clock: Clock = time.monotonic
    uniform: Uniform = random.uniform

    @classmethod
    def from_settings(cls, settings: ProviderRetrySettings) -> Self:
        return cls(
            max_attempts=settings.provider_max_attempts,
            backoff_initial_seconds=settings.provider_backoff_initial_seconds,
            backoff_max_seconds=settings.provider_backoff_max_seconds,
            retry_after_cap_seconds=settings.provider_retry_after_cap_seconds,
            deadline_seconds=settings.provider_deadline_seconds,
        )

    def retrying(self, before_sleep: Callable[[RetryCallState], None]) -> AsyncRetrying:
        """A fresh retry loop for one call: its deadline counts from now."""
        backoff_bound = wait_exponential(multiplier=self.backoff_initial_seconds, max=self.backoff_max_seconds)
        started = self.clock()

        def wait(state: RetryCallState) -> float:
            # Full jitter: anywhere between nothing and the exponential bound.
            seconds = self.uniform(0, backoff_bound(state))
            error = state.outcome.exception() if state.outcome is not None else None
            if isinstance(error, TransientProviderError) and error.retry_after is not None:
                seconds = max(seconds, min(error.retry_after, self.retry_after_cap_seconds))
            return seconds

        def next_attempt_past_deadline(state: RetryCallState) -> bool:
            # Counts the coming wait, so a Retry-After longer than the time left ends the retries
            # instead of sleeping past the deadline. tenacity's stop_before_delay would do the same
            # on its own, uninjectable, clock.
            return self.clock() - started + state.upcoming_sleep > self.deadline_seconds

        return AsyncRetrying(
            sleep=self.sleep,
            retry=retry_if_exception_type(TransientProviderError),
            wait=wait,
            stop=stop_after_attempt(self.max_attempts) | next_attempt_past_deadline,
            before_sleep=before_sleep,
            reraise=True,
        )


@dataclass(frozen=True)
class SendOutcome:
    status: Literal[MessageStatus.SENT, MessageStatus.FAILED]
    attempts: int
    provider_message_id: str | None = None
    error: str | None = None

    @classmethod
    def sent(cls, provider_message_id: str, attempts: int) -> Self:
        return cls(MessageStatus.SENT, attempts, provider_message_id=provider_message_id)

    @classmethod
    def failed(cls, error: str, attempts: int) -> Self:
        return cls(MessageStatus.FAILED, attempts, error=error)


class MessageSender(Protocol):
    async def send(self, command: SendMessage) -> SendOutcome: ...


@dataclass(frozen=True)
class ProviderRequest:
    """One provider's send request: a form (`form`, repeated keys allowed) or a JSON document (`json`)."""

    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    form: Sequence[tuple[str, str]] | None = None
    json: Any = None


def load_json(body: bytes) -> Any:
    """The JSON document in a response body, or None when there is none."""
    try:
        return json.loads(body)
    except ValueError:
        return None


def json_text_field(body: bytes, name: str) -> str | None:
    """A non-empty string member of the JSON object in `body`, if it has one."""
    document = load_json(body)
    value = document.get(name) if isinstance(document, dict) else None
    return value if isinstance(value, str) and value else None


SettingsT = TypeVar("SettingsT", bound=ProviderRetrySettings)


class ProviderClient(ABC, Generic[SettingsT]):
    """Sends messages through one provider's HTTP API, with retry; owns its HTTP session.

    A subclass says how its provider's request looks and where the answer keeps the message id.
    """

    def __init__(
        self, settings: SettingsT, *, retry: RetryPolicy | None = None, metrics: Metrics | None = None
    ) -> None:
        self.settings = settings
        self._attempts = (metrics or Metrics()).provider_attempts
        self._retry = retry or RetryPolicy.from_settings(settings)
        self._timeout_seconds = settings.provider_timeout_seconds
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._timeout_seconds))

    @abstractmethod
    def build_request(self, command: SendMessage) -> ProviderRequest: ...

    @abstractmethod
    def message_id(self, headers: Mapping[str, str], body: bytes) -> str | None:
        """The provider's id for the message it accepted, read from its success answer (headers match
        case-insensitively)."""

    def error_reason(self, body: bytes) -> str | None:
        """The provider's explanation in an error answer; the raw body is used when this gives None."""
        return None

    async def send(self, command: SendMessage) -> SendOutcome:
        request = self.build_request(command)
        headers = {**request.headers, IDEMPOTENCY_KEY_HEADER: str(command.message_id)}
        attempts = 0

        async def attempt() -> str:
            nonlocal attempts
            attempts += 1
            return await self._post(request, headers)

        retrying = self._retry.retrying(before_sleep=lambda state: _log_retry(command, state))
        try:
            provider_message_id = await retrying(attempt)
        except ProviderError as error:
            return SendOutcome.failed(str(error), attempts)
        return SendOutcome.sent(provider_message_id, attempts)

    async def close(self) -> None:
        await self._session.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def _post(self, request: ProviderRequest, headers: Mapping[str, str]) -> str:
        try:
            provider_message_id = await self._attempt(request, headers)
        except ProviderError as error:
            self._attempts.labels(outcome=_attempt_outcome(error)).inc()
            raise
        self._attempts.labels(outcome="accepted").inc()
        return provider_message_id

    async def _attempt(self, request: ProviderRequest, headers: Mapping[str, str]) -> str:
        try:
            async with self._session.post(
                request.url, headers=headers, data=request.form, json=request.json
            ) as response:
                body = await response.read()
        except TimeoutError as error:
            raise TransientProviderError(f"no answer within {self._timeout_seconds:g}s") from error
        except aiohttp.ClientError as error:
            raise TransientProviderError(f"request failed: {type(error).__name__}: {error}") from error
        status = response.status
        if 200 <= status < 300:
            provider_message_id = self.message_id(response.headers, body)
            if provider_message_id is None:
                raise PermanentProviderError("accepted, but the answer holds no message id", status)
            return provider_message_id
        reason = self.error_reason(body) or body.decode("utf-8", "replace").strip() or "no reason given"
        reason = reason[:MAX_REASON_CHARS]
        if status == 429 or status >= 500:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            raise TransientProviderError(reason, status, retry_after)
        raise PermanentProviderError(reason, status)


def _attempt_outcome(error: ProviderError) -> str:
    """The label an attempt that failed is counted under."""
    if error.status is None:
        return "timeout" if isinstance(error.__cause__, TimeoutError) else "unreachable"
    if error.status == 429:
        return "rate_limited"
    if error.status >= 500:
        return "server_error"
    return "bad_answer" if error.status < 300 else "refused"


def _log_retry(command: SendMessage, state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome is not None else None
    log.warning(
        "provider attempt failed; retrying",
        extra={
            "message_id": str(command.message_id),
            "correlation_id": str(command.correlation_id),
            "attempt": state.attempt_number,
            "wait_seconds": round(state.upcoming_sleep, 3),
            "error": str(error),
        },
    )
