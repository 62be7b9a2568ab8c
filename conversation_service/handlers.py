"""The conversation service's work: store each message event; nothing here knows of AMQP or HTTP."""

import logging
from typing import Protocol, assert_never

from common.contracts import MessageEvent, MessageReceived, MessageStatusChanged, SendMessage

log = logging.getLogger(__name__)


class EventStore(Protocol):
    """Each write returns whether it changed anything: False for a replay or a status already passed."""

    async def store_outbound(self, command: SendMessage) -> bool: ...

    async def store_inbound(self, event: MessageReceived) -> bool: ...

    async def store_status(self, event: MessageStatusChanged) -> bool: ...


class EventHandler:
    def __init__(self, store: EventStore) -> None:
        self._store = store

    async def __call__(self, event: MessageEvent) -> None:
        match event:
            case SendMessage():
                changed = await self._store.store_outbound(event)
            case MessageReceived():
                changed = await self._store.store_inbound(event)
            case MessageStatusChanged():
                changed = await self._store.store_status(event)
            case _:
                assert_never(event)
        log.info(
            "stored message event" if changed else "message event changed nothing",
            extra={
                "kind": event.kind,
                "message_id": str(event.message_id),
                "correlation_id": str(event.correlation_id),
                "event_id": str(event.event_id),
                "changed": changed,
            },
        )
