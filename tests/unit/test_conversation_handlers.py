"""The event handler with a fake store: each contract reaches its own write, and is logged with its ids."""

import logging

import pytest

from common.contracts import (
    DeliveryReported,
    MessageEvent,
    MessageReceived,
    MessageStatus,
    MessageStatusChanged,
    SendMessage,
    message_event_adapter,
)
from conversation_service.handlers import EventHandler, WriteOutcome
from tests.factories import delivery_reported, message_received, send_message, status_changed


class RecordingStore:
    def __init__(self, outcome: WriteOutcome = WriteOutcome.CHANGED) -> None:
        self.calls: list[tuple[str, object]] = []
        self._outcome = outcome

    async def store_outbound(self, command: SendMessage) -> WriteOutcome:
        self.calls.append(("outbound", command))
        return self._outcome

    async def store_inbound(self, event: MessageReceived) -> WriteOutcome:
        self.calls.append(("inbound", event))
        return self._outcome

    async def store_status(self, event: MessageStatusChanged) -> WriteOutcome:
        self.calls.append(("status", event))
        return self._outcome

    async def store_receipt(self, event: DeliveryReported) -> WriteOutcome:
        self.calls.append(("receipt", event))
        return self._outcome


@pytest.mark.parametrize(
    ("event", "write"),
    [
        (send_message(), "outbound"),
        (message_received(), "inbound"),
        (status_changed(send_message()), "status"),
        (delivery_reported(send_message(), MessageStatus.FAILED, error="error 30003"), "receipt"),
    ],
)
async def test_each_event_reaches_its_own_write(event: MessageEvent, write: str) -> None:
    store = RecordingStore()

    # As the consumer adapter does: parse the wire format into the contract union first.
    await EventHandler(store)(message_event_adapter.validate_json(event.model_dump_json()))

    assert store.calls == [(write, event)]


@pytest.mark.parametrize(
    ("outcome", "logged"),
    [
        (WriteOutcome.CHANGED, "stored message event"),
        (WriteOutcome.REPLAYED, "message event changed nothing"),
        (WriteOutcome.AWAITING_MESSAGE, "delivery receipt kept until its send is stored"),
        (WriteOutcome.REJECTED, "delivery receipt rejected"),
    ],
)
async def test_every_event_is_logged_with_its_outcome_and_ids(
    caplog: pytest.LogCaptureFixture, outcome: WriteOutcome, logged: str
) -> None:
    event = delivery_reported(send_message())
    caplog.set_level(logging.DEBUG, logger="conversation_service.handlers")

    await EventHandler(RecordingStore(outcome))(event)

    (record,) = caplog.records
    assert record.getMessage() == logged
    assert record.__dict__["kind"] == "delivery_reported"
    assert record.__dict__["message_id"] == str(event.message_id)
    assert record.__dict__["correlation_id"] == str(event.correlation_id)
    assert record.__dict__["outcome"] == outcome.value


async def test_a_store_failure_reaches_the_consumer_so_the_message_is_redelivered() -> None:
    class FailingStore(RecordingStore):
        async def store_outbound(self, command: SendMessage) -> WriteOutcome:
            raise ConnectionError("database down")

    with pytest.raises(ConnectionError):
        await EventHandler(FailingStore())(send_message())
