"""Builders of bus contracts for tests, with the API.md example addresses as defaults, and a poll helper."""

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from common.contracts import (
    EMAIL_PROVIDER,
    SMS_PROVIDER,
    Channel,
    MessageContent,
    MessageReceived,
    MessageStatus,
    MessageStatusChanged,
    SendMessage,
    inbound_message_id,
)

OUR_PHONE = "+12016661234"
THEIR_PHONE = "+18045551234"
OUR_EMAIL = "user@usehatchapp.com"
THEIR_EMAIL = "contact@gmail.com"
START = datetime(2024, 11, 1, 14, 0, tzinfo=UTC)


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
    channel: Channel = Channel.SMS, *, message_id: uuid.UUID | None = None, **fields: object
) -> SendMessage:
    """A client's send, from our address to theirs unless told otherwise; `fields` go to `content`."""
    return SendMessage(
        message_id=message_id or uuid.uuid4(),
        correlation_id=uuid.uuid4(),
        content=content(channel, **fields),  # type: ignore[arg-type]
    )


def message_received(
    channel: Channel = Channel.SMS, *, provider_message_id: str = "message-1", **fields: object
) -> MessageReceived:
    """A provider's webhook, from their address to ours unless told otherwise; `fields` go to `content`."""
    ours, theirs = _addresses(channel)
    provider = EMAIL_PROVIDER if channel is Channel.EMAIL else SMS_PROVIDER
    fields = {"from_address": theirs, "to_address": ours, **fields}
    return MessageReceived(
        message_id=inbound_message_id(provider, provider_message_id),
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


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 15.0) -> None:  # noqa: ASYNC109
    """Poll `check` until it holds; fail naming `what` after `timeout` seconds. Never a bare sleep."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.05)
