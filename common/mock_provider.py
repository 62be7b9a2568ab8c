"""What every mock provider shares: an in-memory record of the sends it took, idempotent replay,
failure injection, delivery receipts, and the app skeleton.

A mock says only how its provider's send request is read (`parse`, which refuses what the real
API would refuse), how its answers and receipts look, and which of its addresses always fail; it
then runs as its own small HTTP server with these routes besides the send:

- `GET /messages`, `DELETE /messages`: inspect and reset what it took.
- `GET /control`: the behaviour in force; `PATCH /control`: change some of it (a JSON object of
  `MockBehaviour` fields); `DELETE /control`: back to the behaviour it was started with.
- `POST /simulate/inbound`: post, signed, an inbound message to the gateway's inbound webhook as
  the provider would (a JSON object in the public API's inbound shape; the provider's id and a
  timestamp are filled in when missing); answers with the webhook's status and body.

Everything a mock posts is signed with its provider's scheme (`sign_receipt`, `sign_inbound`), with
the secret the gateway checks: development defaults match (`common.webhook_signing`).

A send is answered, in this order: after `latency_seconds`; refused as the real API would; a
repeated idempotency key of an accepted send gets the original answer; a magic address fails its
way; beyond `rate_limit_per_second` a 429; a share `failure_rate` of what is left a 500; the rest
is accepted, recorded, and its receipt posted `delivery_delay_seconds` later.
"""

import asyncio
import dataclasses
import json
import logging
import time
import urllib.parse
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from random import Random
from typing import Any, Self

import aiohttp
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from pydantic_settings import BaseSettings, SettingsConfigDict
from tenacity import AsyncRetrying, RetryError, retry_if_exception_type, stop_after_attempt, wait_exponential
from yarl import URL

from common.contracts import utcnow
from common.errors import InvalidRequest, ServiceUnavailable
from common.health import add_health_routes
from common.http import error_middleware, request_validation
from common.logs import configure_logging
from common.provider import IDEMPOTENCY_KEY_HEADER
from common.serve import serve
from common.settings import ProcessSettings

log = logging.getLogger(__name__)

RECEIPT_TIMEOUT_SECONDS = 5.0

Clock = Callable[[], float]


class MockProviderSettings(ProcessSettings):
    """Each mock adds its own port, so one environment can configure both mocks."""


class MockBehaviour(BaseModel):
    """How a mock misbehaves; set at start from the environment, changed at run time by `/control`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    failure_rate: float = Field(0.0, ge=0, le=1, description="Share of sends answered 500")
    rate_limit_per_second: int = Field(
        0, ge=0, description="Sends taken in any one second; more are answered 429. 0: no limit"
    )
    retry_after_seconds: float = Field(1.0, ge=0, description="The Retry-After of a 429")
    latency_seconds: float = Field(0.0, ge=0, description="Added before every answer to a send")
    delivery_delay_seconds: float = Field(
        1.0, ge=0, description="How long after accepting a send its delivery receipt is posted"
    )
    receipt_attempts: int = Field(4, ge=1, description="Posts of one receipt before the mock gives up on it")
    receipt_backoff_seconds: float = Field(
        1.0, ge=0, description="Wait before the second post of a receipt; it doubles with every post"
    )


class MockBehaviourSettings(BaseSettings, MockBehaviour):
    """A mock's behaviour at start, from the environment; each mock subclasses it with its own
    `env_prefix`, so one environment can configure both mocks."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")


class SendRejected(Exception):
    """A send the provider does not take: `field` names the part at fault, when there is one, and
    `code` is the provider's own error code, when the refusal has one."""

    def __init__(self, status: int, reason: str, field: str | None = None, code: int | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.field = field
        self.code = code


SERVER_ERROR = SendRejected(500, "Internal Server Error")
RATE_LIMITED = SendRejected(429, "Too Many Requests")


@dataclass(frozen=True)
class MagicRecipients:
    """Recipients that always fail one way, so tests and demos can make every path happen on purpose."""

    invalid: str  # refused at once with a 400
    unreachable: str  # accepted, then reported undelivered by its receipt
    failing: str  # always answered 500


@dataclass(frozen=True)
class RequestedSend:
    to: str
    sender: str
    body: str
    attachments: tuple[str, ...] = ()
    # Where this send's receipt goes, for a provider that takes it per message (Twilio's StatusCallback).
    status_callback: str | None = None
    # What the provider repeats in this send's receipt (Twilio's AccountSid, SendGrid's custom_args).
    receipt_fields: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RecordedSend:
    id: str
    send: RequestedSend
    idempotency_key: str | None
    received_at: datetime


@dataclass(frozen=True)
class Reply:
    """An answer kept as data, so that a repeated idempotency key gets exactly the same answer."""

    status: int
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, document: Any, headers: Mapping[str, str] | None = None) -> Self:
        return cls(status, json.dumps(document).encode(), {"Content-Type": "application/json", **(headers or {})})

    def response(self) -> web.Response:
        return web.Response(status=self.status, body=self.body, headers=self.headers)


@dataclass(frozen=True)
class Receipt:
    """A delivery receipt's body: a form (`form`, repeated keys allowed) or a JSON document (`json`)."""

    form: Sequence[tuple[str, str]] | None = None
    json: Any = None

    def post(self, url: str) -> "Post":
        if self.form is not None:
            return Post(url, urllib.parse.urlencode(self.form).encode(), "application/x-www-form-urlencoded")
        return Post.json(url, self.json)


@dataclass(frozen=True)
class Post:
    """A request the mock makes, as bytes, so that what is signed is exactly what is sent. `url` is
    as sent, already encoded."""

    url: str
    body: bytes
    content_type: str
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, url: str, document: Any) -> Self:
        return cls(url, json.dumps(document).encode(), "application/json")


class MockProvider(ABC):
    name: str
    send_path: str
    # What the provider calls attachments ("media" for MMS), used as the key in `GET /messages`.
    attachments_field: str
    magic: MagicRecipients
    # The refusal of `magic.invalid`, as the real API words it.
    invalid_recipient: SendRejected

    @abstractmethod
    async def parse(self, request: web.Request) -> RequestedSend:
        """Read a send request as the real API would; raise `SendRejected` where it would refuse it."""

    @abstractmethod
    def new_id(self) -> str: ...

    @abstractmethod
    def accepted(self, record: RecordedSend) -> Reply: ...

    @abstractmethod
    def rejected(self, error: SendRejected) -> Reply: ...

    @abstractmethod
    def receipt_url(self, record: RecordedSend) -> str | None:
        """Where the receipt of an accepted send goes; None: nobody asked for one."""

    @abstractmethod
    def receipt(self, record: RecordedSend, delivered: bool, at: datetime) -> Receipt:
        """The receipt saying the send reached its recipient at `at`, or never will."""

    @abstractmethod
    def sign_receipt(self, post: Post, at: datetime) -> Post:
        """The receipt's post as the provider signs it at `at`: its headers, and maybe its URL, changed."""

    @abstractmethod
    def sign_inbound(self, post: Post, at: datetime) -> Post:
        """The same for an inbound message, which some providers sign with another scheme."""

    # Where `POST /simulate/inbound` posts, and the field naming the provider's id of the message.
    inbound_webhook_url: str | None = None
    inbound_id_field: str

    def listing(self, record: RecordedSend) -> dict[str, Any]:
        return {
            "id": record.id,
            "to": record.send.to,
            "from": record.send.sender,
            "body": record.send.body,
            self.attachments_field: list(record.send.attachments),
            "idempotency_key": record.idempotency_key,
            "received_at": record.received_at.isoformat(),
        }


class RateLimiter:
    """Admits at most `limit` sends in any one-second window, by the injected clock."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._admitted: deque[float] = deque()

    def admit(self, limit: int) -> bool:
        if limit == 0:
            return True
        now = self._clock()
        while self._admitted and self._admitted[0] <= now - 1.0:
            self._admitted.popleft()
        if len(self._admitted) >= limit:
            return False
        self._admitted.append(now)
        return True


@dataclass
class MockState:
    configured: MockBehaviour
    behaviour: MockBehaviour
    random_source: Random
    limiter: RateLimiter
    records: list[RecordedSend] = field(default_factory=list)
    replies: dict[str, Reply] = field(default_factory=dict)

    def clear(self) -> None:
        # Replies go too: after a reset, a key seen before is a new send, as a test starting afresh expects.
        self.records.clear()
        self.replies.clear()

    def injected_failure(self) -> SendRejected | None:
        """The failure this send is given on purpose, if any."""
        if not self.limiter.admit(self.behaviour.rate_limit_per_second):
            return RATE_LIMITED
        # Drawn for every admitted send, so a seeded source gives the same pattern whatever the rate.
        if self.random_source.random() < self.behaviour.failure_rate:
            return SERVER_ERROR
        return None


class ReceiptNotTaken(Exception):
    """The receipt's URL refused it or could not be reached; a real provider posts it again."""


class ReceiptPoster:
    """Posts delivery receipts in the background, retrying with backoff as real providers do; the
    tasks in flight are kept so that shutdown can cancel them."""

    def __init__(self, provider: MockProvider, session: aiohttp.ClientSession) -> None:
        self._provider = provider
        self.session = session
        self.pending: set[asyncio.Task[None]] = set()

    def schedule(self, url: str, record: RecordedSend, behaviour: MockBehaviour) -> None:
        task = asyncio.create_task(self._deliver(url, record, behaviour))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def cancel_pending(self) -> None:
        for task in self.pending:
            task.cancel()
        await asyncio.gather(*self.pending, return_exceptions=True)

    async def _deliver(self, url: str, record: RecordedSend, behaviour: MockBehaviour) -> None:
        await asyncio.sleep(behaviour.delivery_delay_seconds)
        delivered = record.send.to != self._provider.magic.unreachable
        receipt = self._provider.receipt(record, delivered, utcnow())
        context = {"url": url, "provider_message_id": record.id}
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(ReceiptNotTaken),
            stop=stop_after_attempt(behaviour.receipt_attempts),
            wait=wait_exponential(multiplier=behaviour.receipt_backoff_seconds),
            after=lambda state: log.warning(
                "delivery receipt not taken",
                extra={**context, "attempt": state.attempt_number, "error": str(state.outcome.exception())},
            ),
        )
        try:
            await retrying(self._post, url, receipt)
        except RetryError:
            log.error("delivery receipt given up", extra={**context, "attempts": behaviour.receipt_attempts})

    async def _post(self, url: str, receipt: Receipt) -> None:
        # Signed afresh for every attempt, as a provider dates each post it makes.
        post = self._provider.sign_receipt(receipt.post(url), utcnow())
        try:
            async with send_post(self.session, post) as response:
                # Read to the end, so that the connection goes back to the pool instead of being closed.
                await response.read()
                if response.status >= 300:
                    raise ReceiptNotTaken(f"HTTP {response.status}")
        except (aiohttp.ClientError, TimeoutError) as failure:
            raise ReceiptNotTaken(f"{type(failure).__name__}: {failure}") from failure


def send_post(session: aiohttp.ClientSession, post: Post) -> Any:
    # `encoded=True`: the URL goes out byte for byte as it was signed.
    headers = {"Content-Type": post.content_type, **post.headers}
    return session.post(URL(post.url, encoded=True), data=post.body, headers=headers)


MOCK_PROVIDER: web.AppKey[MockProvider] = web.AppKey("mock_provider")
MOCK_STATE = web.AppKey("mock_state", MockState)
RECEIPTS = web.AppKey("receipts", ReceiptPoster)

# A PATCH body must be a JSON object before its members are checked against `MockBehaviour`; so
# must a simulated inbound message.
JSON_OBJECT: TypeAdapter[dict[str, Any]] = TypeAdapter(dict[str, Any])


async def receipts_ctx(app: web.Application) -> AsyncIterator[None]:
    timeout = aiohttp.ClientTimeout(total=RECEIPT_TIMEOUT_SECONDS)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        app[RECEIPTS] = ReceiptPoster(app[MOCK_PROVIDER], session)
        yield
        await app[RECEIPTS].cancel_pending()


def create_mock_app(
    provider: MockProvider,
    behaviour: MockBehaviour | None = None,
    *,
    random_source: Random | None = None,
    clock: Clock = time.monotonic,
) -> web.Application:
    """`behaviour` is where the mock starts and what `DELETE /control` returns to; tests pass a seeded
    `random_source` and a fake `clock` to make failures and the rate limit predictable."""
    configured = behaviour or MockBehaviour()
    app = web.Application(middlewares=[error_middleware])
    app[MOCK_PROVIDER] = provider
    app[MOCK_STATE] = MockState(
        configured=configured,
        behaviour=configured,
        random_source=random_source or Random(),
        limiter=RateLimiter(clock),
    )
    app.cleanup_ctx.append(receipts_ctx)
    add_health_routes(app)
    app.router.add_post(provider.send_path, send)
    app.router.add_get("/messages", list_messages)
    app.router.add_delete("/messages", clear_messages)
    app.router.add_get("/control", show_behaviour)
    app.router.add_patch("/control", change_behaviour)
    app.router.add_delete("/control", reset_behaviour)
    app.router.add_post("/simulate/inbound", simulate_inbound)
    return app


def run_mock_provider(app: web.Application, settings: MockProviderSettings, port: int) -> None:
    configure_logging(app[MOCK_PROVIDER].name, settings)
    serve(app, settings, port)


async def send(request: web.Request) -> web.Response:
    provider = request.app[MOCK_PROVIDER]
    state = request.app[MOCK_STATE]
    behaviour = state.behaviour
    if behaviour.latency_seconds:
        await asyncio.sleep(behaviour.latency_seconds)
    try:
        requested = await provider.parse(request)
    except SendRejected as error:
        return provider.rejected(error).response()
    key = request.headers.get(IDEMPOTENCY_KEY_HEADER)
    # Nothing is awaited from this check to the store below, so concurrent repeats of one key
    # record a single send. Only accepted sends are kept: a refused request may be tried again.
    if key is not None and key in state.replies:
        return state.replies[key].response()
    failure = _magic_failure(provider, requested) or state.injected_failure()
    if failure is not None:
        return _failure_reply(provider, failure, state.behaviour).response()
    record = RecordedSend(provider.new_id(), requested, key, utcnow())
    reply = provider.accepted(record)
    state.records.append(record)
    if key is not None:
        state.replies[key] = reply
    receipt_url = provider.receipt_url(record)
    if receipt_url:
        request.app[RECEIPTS].schedule(receipt_url, record, state.behaviour)
    return reply.response()


def _magic_failure(provider: MockProvider, requested: RequestedSend) -> SendRejected | None:
    if requested.to == provider.magic.invalid:
        return provider.invalid_recipient
    if requested.to == provider.magic.failing:
        return SERVER_ERROR
    return None


def _failure_reply(provider: MockProvider, failure: SendRejected, behaviour: MockBehaviour) -> Reply:
    reply = provider.rejected(failure)
    if failure is not RATE_LIMITED:
        return reply
    return dataclasses.replace(reply, headers={**reply.headers, "Retry-After": f"{behaviour.retry_after_seconds:g}"})


async def list_messages(request: web.Request) -> web.Response:
    provider = request.app[MOCK_PROVIDER]
    return web.json_response({"messages": [provider.listing(r) for r in request.app[MOCK_STATE].records]})


async def clear_messages(request: web.Request) -> web.Response:
    request.app[MOCK_STATE].clear()
    return web.Response(status=204)


async def show_behaviour(request: web.Request) -> web.Response:
    return web.json_response(request.app[MOCK_STATE].behaviour.model_dump())


async def change_behaviour(request: web.Request) -> web.Response:
    state = request.app[MOCK_STATE]
    with request_validation():
        changes = JSON_OBJECT.validate_json(await request.read())
        state.behaviour = MockBehaviour.model_validate({**state.behaviour.model_dump(), **changes})
    return web.json_response(state.behaviour.model_dump())


async def reset_behaviour(request: web.Request) -> web.Response:
    state = request.app[MOCK_STATE]
    state.behaviour = state.configured
    return web.json_response(state.behaviour.model_dump())


async def simulate_inbound(request: web.Request) -> web.Response:
    """Post an inbound message to the gateway, signed, as the provider would; the webhook's answer."""
    provider = request.app[MOCK_PROVIDER]
    if not provider.inbound_webhook_url:
        raise InvalidRequest("this mock has no inbound webhook URL configured")
    with request_validation():
        document = JSON_OBJECT.validate_json(await request.read())
    now = utcnow()
    document.setdefault(provider.inbound_id_field, provider.new_id())
    document.setdefault("timestamp", now.isoformat())
    post = provider.sign_inbound(Post.json(provider.inbound_webhook_url, document), now)
    try:
        async with send_post(request.app[RECEIPTS].session, post) as response:
            answer = await response.text()
            status = response.status
    except (aiohttp.ClientError, TimeoutError) as failure:
        raise ServiceUnavailable(f"the inbound webhook could not be reached: {failure!r}") from failure
    return web.json_response({"webhook_status": status, "webhook_response": answer, "posted": document})
