"""The conversation service's work: store each message event; nothing here knows of AMQP or HTTP."""

import logging
from enum import StrEnum
from typing import Protocol, assert_never

from common.contracts import DeliveryReported, MessageEvent, MessageReceived, MessageStatusChanged, SendMessage
from common.metrics import Metrics

log = logging.getLogger(__name__)


class WriteOutcome(StrEnum):
    CHANGED = "changed"
    # The event was stored before: a redelivery or a provider's retry.
    REPLAYED = "replayed"
    # A delivery receipt for a send whose answer is not stored (yet): it waits, and is checked and
    # applied when the answer is stored, or expires if it never is.
    AWAITING_MESSAGE = "awaiting_message"
    # A delivery receipt that cannot be about the message it names (another channel, another provider
    # id, a message we received): logged, and it changes nothing.
    REJECTED = "rejected"


class EventStore(Protocol):
    async def store_outbound(self, command: SendMessage) -> WriteOutcome: ...

    async def store_inbound(self, event: MessageReceived) -> WriteOutcome: ...

    async def store_status(self, event: MessageStatusChanged) -> WriteOutcome: ...

    async def store_receipt(self, event: DeliveryReported) -> WriteOutcome: ...


_LOG_MESSAGES = {
    WriteOutcome.CHANGED: "stored message event",
    WriteOutcome.REPLAYED: "message event changed nothing",
    WriteOutcome.AWAITING_MESSAGE: "delivery receipt kept until its send is stored",
    WriteOutcome.REJECTED: "delivery receipt rejected",
}


class EventHandler:
    def __init__(self, store: EventStore, metrics: Metrics | None = None) -> None:
        self._store = store
        self._metrics = metrics or Metrics()

    async def __call__(self, event: MessageEvent) -> None:
        match event:
            case SendMessage():
                outcome = await self._store.store_outbound(event)
            case MessageReceived():
                outcome = await self._store.store_inbound(event)
            case MessageStatusChanged():
                outcome = await self._store.store_status(event)
            case DeliveryReported():
                outcome = await self._store.store_receipt(event)
            case _:
                assert_never(event)
        # A line per event would cost more than the write it reports; the activity summary counts them.
        log.debug(
            _LOG_MESSAGES[outcome],
            extra={
                "kind": event.kind,
                "message_id": str(event.message_id),
                "correlation_id": str(event.correlation_id),
                "event_id": str(event.event_id),
                "outcome": outcome.value,
            },
        )
        self._metrics.count_stored(event, outcome.value)
