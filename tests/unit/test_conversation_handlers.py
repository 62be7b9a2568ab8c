"""The event handler with a fake store: each contract reaches its own write, and is logged with its ids."""

import logging

import pytest

from common.contracts import MessageReceived, MessageStatusChanged, SendMessage, message_event_adapter
from conversation_service.handlers import EventHandler
from tests.factories import message_received, send_message, status_changed


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


@pytest.mark.parametrize(
    ("event", "write"),
    [(send_message(), "outbound"), (message_received(), "inbound"), (status_changed(send_message()), "status")],
)
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
    event = message_received()
    caplog.set_level(logging.INFO, logger="conversation_service.handlers")

    await EventHandler(RecordingStore())(event)

    (record,) = caplog.records
    assert record.getMessage() == "stored message event"
    assert record.__dict__["message_id"] == str(event.message_id)
    assert record.__dict__["correlation_id"] == str(event.correlation_id)
    assert record.__dict__["changed"] is True


async def test_a_replay_is_logged_as_changing_nothing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="conversation_service.handlers")

    await EventHandler(RecordingStore(changed=False))(send_message())

    (record,) = caplog.records
    assert record.getMessage() == "message event changed nothing"
    assert record.__dict__["changed"] is False


async def test_a_store_failure_reaches_the_consumer_so_the_message_is_redelivered() -> None:
    class FailingStore(RecordingStore):
        async def store_outbound(self, command: SendMessage) -> bool:
            raise ConnectionError("database down")

    with pytest.raises(ConnectionError):
        await EventHandler(FailingStore())(send_message())
