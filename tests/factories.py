"""Builders of bus contracts for tests, with the API.md example addresses as defaults, a poll helper,
a catcher of the delivery receipts mock providers post, and free ports for services run as processes."""

import asyncio
import contextlib
import dataclasses
import logging
import random
import socket
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import Any, TypeVar

from aiohttp import web
from pydantic_settings import BaseSettings
from yarl import URL

from common.accounts import ACCOUNT_HEADER, DEVELOPMENT_ACCOUNT_ID
from common.context import ContextFilter
from common.contracts import (
    EMAIL_PROVIDER,
    SMS_PROVIDER,
    Channel,
    DeliveryReported,
    MessageContent,
    MessageReceived,
    MessageStatus,
    MessageStatusChanged,
    SendMessage,
    inbound_message_id,
)
from common.logs import JsonFormatter
from common.settings import Profile, ServiceTokenSettings
from email_service.mock_keys import generate_event_keys

OUR_PHONE = "+12016661234"
THEIR_PHONE = "+18045551234"
OUR_EMAIL = "user@usehatchapp.com"
THEIR_EMAIL = "contact@gmail.com"
START = datetime(2024, 11, 1, 14, 0, tzinfo=UTC)
ResultT = TypeVar("ResultT")
SettingsT = TypeVar("SettingsT", bound=BaseSettings)

# The send requests of API.md, as a client posts them.
SMS_REQUEST: dict[str, Any] = {
    "from": "+12016661234",
    "to": "+18045551234",
    "type": "sms",
    "body": "text message",
    "attachments": None,
    "timestamp": "2024-11-01T14:00:00Z",
}
EMAIL_REQUEST: dict[str, Any] = {
    "from": "user@usehatchapp.com",
    "to": "contact@gmail.com",
    "body": "text or <b>html</b>",
    "attachments": ["https://example.com/document.pdf"],
    "timestamp": "2024-11-01T14:00:00Z",
}


def gateway_headers(account_id: uuid.UUID | None = DEVELOPMENT_ACCOUNT_ID, token: str | None = None) -> dict[str, str]:
    """What the gateway sends conversation_service: its service token (the settings' default unless
    given), and for a read, the account it is for."""
    if token is None:
        token = ServiceTokenSettings.model_fields["internal_service_token"].default
    headers = {"Authorization": f"Bearer {token}"}
    if account_id is not None:
        headers[ACCOUNT_HEADER] = str(account_id)
    return headers


def _addresses(channel: Channel) -> tuple[str, str]:
    return (OUR_EMAIL, THEIR_EMAIL) if channel is Channel.EMAIL else (OUR_PHONE, THEIR_PHONE)


def content(
    channel: Channel = Channel.SMS,
    *,
    from_address: str | None = None,
    to_address: str | None = None,
    body: str = "text message",
    attachments: tuple[str, ...] = (),
    at: datetime = START,
) -> MessageContent:
    ours, theirs = _addresses(channel)
    return MessageContent(
        channel=channel,
        from_address=from_address or ours,
        to_address=to_address or theirs,
        body=body,
        attachments=attachments,
        timestamp=at,
    )


def send_message(
    channel: Channel = Channel.SMS,
    *,
    message_id: uuid.UUID | None = None,
    account_id: uuid.UUID = DEVELOPMENT_ACCOUNT_ID,
    **fields: object,
) -> SendMessage:
    """A client's send, from our address to theirs unless told otherwise; `fields` go to `content`."""
    return SendMessage(
        message_id=message_id or uuid.uuid4(),
        account_id=account_id,
        correlation_id=uuid.uuid4(),
        content=content(channel, **fields),  # type: ignore[arg-type]
    )


def message_received(
    channel: Channel = Channel.SMS,
    *,
    provider_message_id: str = "message-1",
    account_id: uuid.UUID = DEVELOPMENT_ACCOUNT_ID,
    **fields: object,
) -> MessageReceived:
    """A provider's webhook, from their address to ours unless told otherwise; `fields` go to `content`."""
    ours, theirs = _addresses(channel)
    provider = EMAIL_PROVIDER if channel is Channel.EMAIL else SMS_PROVIDER
    fields = {"from_address": theirs, "to_address": ours, **fields}
    return MessageReceived(
        message_id=inbound_message_id(provider, provider_message_id),
        account_id=account_id,
        correlation_id=uuid.uuid4(),
        provider=provider,
        provider_message_id=provider_message_id,
        content=content(channel, **fields),  # type: ignore[arg-type]
    )


def status_changed(
    command: SendMessage,
    status: MessageStatus = MessageStatus.SENT,
    *,
    provider_message_id: str | None = "SM-provider-1",
    attempts: int = 1,
    error: str | None = None,
) -> MessageStatusChanged:
    """A channel service's outcome for `command`."""
    return MessageStatusChanged(
        message_id=command.message_id,
        correlation_id=command.correlation_id,
        status=status,
        provider=EMAIL_PROVIDER if command.content.channel is Channel.EMAIL else SMS_PROVIDER,
        provider_message_id=provider_message_id if status is not MessageStatus.FAILED else None,
        attempts=attempts,
        error=error,
        command=command,
    )


def delivery_reported(
    command: SendMessage,
    status: MessageStatus = MessageStatus.DELIVERED,
    *,
    provider_message_id: str = "SM-provider-1",
    error: str | None = None,
) -> DeliveryReported:
    """The provider's delivery receipt for `command`, as the gateway publishes it."""
    channel = command.content.channel
    return DeliveryReported(
        message_id=command.message_id,
        correlation_id=uuid.uuid4(),
        channel=channel,
        provider=EMAIL_PROVIDER if channel is Channel.EMAIL else SMS_PROVIDER,
        provider_message_id=provider_message_id,
        status=status,
        error=error,
    )


async def eventually(
    check: Callable[[], Awaitable[ResultT]],
    what: str,
    timeout: float = 15.0,  # noqa: ASYNC109
    interval: float = 0.05,
) -> ResultT:
    """Poll `check` until it returns something truthy, and return that; fail naming `what` (and the last
    answer) after `timeout` seconds. Never a bare sleep."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (answer := await check()):
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what} (last: {answer!r})")
        await asyncio.sleep(interval)
    return answer


@dataclasses.dataclass(frozen=True)
class CaughtReceipt:
    query: dict[str, str]
    # The form fields of a form post (Twilio), the JSON document of a JSON post (SendGrid).
    body: Any


@dataclasses.dataclass
class ReceiptCatcher:
    """A stand-in for the gateway's receipt webhooks: keeps what a mock provider posts to it, after
    answering `failures_left` posts with 503 to make the provider retry."""

    failures_left: int = 0
    posts: int = 0
    caught: list[CaughtReceipt] = dataclasses.field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/{path:.*}", self._receive)
        return app

    async def _receive(self, request: web.Request) -> web.Response:
        self.posts += 1
        if self.failures_left:
            self.failures_left -= 1
            return web.Response(status=503)
        body = await request.json() if request.content_type == "application/json" else dict(await request.post())
        self.caught.append(CaughtReceipt(dict(request.query), body))
        return web.Response(status=200)


# Below the kernel's ephemeral range (32768 and up by default), which bind-to-0 listeners and outgoing
# connections draw from: a port found free here stays free for the seconds until a service binds it,
# and again when a killed service is restarted on it.
UNCLAIMED_PORTS = range(20000, 32000)


def free_ports(count: int) -> list[int]:
    found: list[int] = []
    for port in random.sample(UNCLAIMED_PORTS, len(UNCLAIMED_PORTS)):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        found.append(port)
        if len(found) == count:
            return found
    raise RuntimeError(f"fewer than {count} free ports in {UNCLAIMED_PORTS}")


def production_settings(kind: type[SettingsT], **values: Any) -> SettingsT:
    """`kind` in the production profile, with a value of its own for every secret `values` leaves
    out (a URL keeps its default but gets a password of its own, a key is a fresh P-256 pair's), and
    the public origin providers call, so the profile's checks pass."""
    event_keys = generate_event_keys()
    if "public_base_url" in kind.model_fields:
        values.setdefault("public_base_url", "https://messaging.example.com")
    for name, field in kind.model_fields.items():
        extra = field.json_schema_extra
        if name in values or not (isinstance(extra, dict) and extra.get("secret")):
            continue
        default = field.default
        if name.upper() in event_keys:
            values[name] = event_keys[name.upper()]
        elif isinstance(default, str) and "://" in default:
            url = URL(default)
            values[name] = str(url.with_user(url.user or "messaging").with_password(f"test-{uuid.uuid4().hex}"))
        else:
            values[name] = f"test-secret-{uuid.uuid4().hex}"
    return kind(messaging_profile=Profile.PRODUCTION, **values)


@contextlib.contextmanager
def log_lines() -> Iterator[list[str]]:
    """Every log line of every logger while it is open, formatted as the services write them, with
    the request context their filter adds."""
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = Keep(logging.DEBUG)
    handler.setFormatter(JsonFormatter("test"))
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield lines
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
