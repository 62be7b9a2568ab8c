"""The event handler with a fake store: each contract reaches its own write, and is logged with its ids."""

import logging
import uuid
from datetime import UTC, datetime

import pytest

from common.contracts import (
    Channel,
    MessageContent,
    MessageReceived,
    MessageStatus,
    MessageStatusChanged,
    SendMessage,
    message_event_adapter,
)
from conversation_service.handlers import EventHandler

CONTENT = MessageContent(
    channel=Channel.SMS,
    from_address="+12016661234",
    to_address="+18045551234",
    body="text message",
    timestamp=datetime(2024, 11, 1, 14, tzinfo=UTC),
)


class RecordingStore:
    def __init__(self, *, changed: bool = True) -> None:
        self.calls: list[tuple[str, object]] = []
        self._changed = changed

    async def store_outbound(self, command: SendMessage) -> bool:
        self.calls.append(("outbound", command))
        return self._changed

    async def store_inbound(self, event: MessageReceived) -> bool:
        self.calls.append(("inbound", event))
        return self._changed

    async def store_status(self, event: MessageStatusChanged) -> bool:
        self.calls.append(("status", event))
        return self._changed


def _send() -> SendMessage:
    return SendMessage(message_id=uuid.uuid4(), correlation_id=uuid.uuid4(), content=CONTENT)


def _received() -> MessageReceived:
    return MessageReceived(
        message_id=uuid.uuid4(),
        correlation_id=uuid.uuid4(),
        provider="sms-provider",
        provider_message_id="message-1",
        content=CONTENT,
    )


def _status() -> MessageStatusChanged:
    command = _send()
    return MessageStatusChanged(
        message_id=command.message_id,
        correlation_id=command.correlation_id,
        status=MessageStatus.SENT,
        provider="sms-provider",
        attempts=1,
        command=command,
    )


@pytest.mark.parametrize(("event", "write"), [(_send(), "outbound"), (_received(), "inbound"), (_status(), "status")])
async def test_each_event_reaches_its_own_write(
    event: SendMessage | MessageReceived | MessageStatusChanged, write: str
) -> None:
    store = RecordingStore()

    # As the consumer adapter does: parse the wire format into the contract union first.
    await EventHandler(store)(message_event_adapter.validate_json(event.model_dump_json()))

    assert store.calls == [(write, event)]


async def test_a_stored_event_is_logged_with_its_message_and_correlation_ids(
    caplog: pytest.LogCaptureFixture,
) -> None:
    event = _received()
    caplog.set_level(logging.INFO, logger="conversation_service.handlers")

    await EventHandler(RecordingStore())(event)

    (record,) = caplog.records
    assert record.getMessage() == "stored message event"
    assert record.__dict__["message_id"] == str(event.message_id)
    assert record.__dict__["correlation_id"] == str(event.correlation_id)
    assert record.__dict__["changed"] is True


async def test_a_replay_is_logged_as_changing_nothing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="conversation_service.handlers")

    await EventHandler(RecordingStore(changed=False))(_send())

    (record,) = caplog.records
    assert record.getMessage() == "message event changed nothing"
    assert record.__dict__["changed"] is False


async def test_a_store_failure_reaches_the_consumer_so_the_message_is_redelivered() -> None:
    class FailingStore(RecordingStore):
        async def store_outbound(self, command: SendMessage) -> bool:
            raise ConnectionError("database down")

    with pytest.raises(ConnectionError):
        await EventHandler(FailingStore())(_send())
