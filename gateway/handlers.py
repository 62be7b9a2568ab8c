"""The gateway's work: turn a validated request into a bus contract and get it safely queued.

Nothing here knows of HTTP or AMQP: the publisher is injected, and any object with
`async publish(contract)` will do.
"""

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from common.broker import ContractPublisher
from common.contracts import (
    Channel,
    Direction,
    MessageContent,
    MessageReceived,
    MessageStatus,
    SendMessage,
    inbound_message_id,
    outbound_message_id,
)
from gateway.requests import SendRequest, Webhook


class AcceptedMessage(BaseModel):
    """What a client sees once its message is queued: the read API's message fields known at that point."""

    model_config = ConfigDict(frozen=True, populate_by_name=True)

    id: uuid.UUID
    direction: Direction
    type: Channel
    from_address: str = Field(serialization_alias="from")
    to: str
    body: str
    attachments: list[str]
    status: MessageStatus
    provider: str | None = None
    provider_message_id: str | None = None
    timestamp: datetime

    @classmethod
    def of(
        cls,
        message_id: uuid.UUID,
        direction: Direction,
        content: MessageContent,
        status: MessageStatus,
        provider: str | None = None,
        provider_message_id: str | None = None,
    ) -> "AcceptedMessage":
        return cls(
            id=message_id,
            direction=direction,
            type=content.channel,
            from_address=content.from_address,
            to=content.to_address,
            body=content.body,
            attachments=list(content.attachments),
            status=status,
            provider=provider,
            provider_message_id=provider_message_id,
            timestamp=content.timestamp,
        )


class MessageIntake:
    def __init__(self, publisher: ContractPublisher) -> None:
        self._publisher = publisher

    async def send(
        self, request: SendRequest, *, idempotency_key: str | None, correlation_id: uuid.UUID
    ) -> AcceptedMessage:
        command = SendMessage(
            message_id=outbound_message_id(idempotency_key, request.model_dump_json()),
            correlation_id=correlation_id,
            content=request.to_content(),
        )
        await self._publisher.publish(command)
        return AcceptedMessage.of(command.message_id, Direction.OUTBOUND, command.content, MessageStatus.QUEUED)

    async def receive(self, webhook: Webhook, *, correlation_id: uuid.UUID) -> AcceptedMessage:
        provider, provider_message_id = webhook.provider, webhook.provider_message_id
        event = MessageReceived(
            # Derived from the provider's id, so a webhook the provider retries is the same message.
            message_id=inbound_message_id(provider, provider_message_id),
            correlation_id=correlation_id,
            provider=provider,
            provider_message_id=provider_message_id,
            content=webhook.to_content(),
        )
        await self._publisher.publish(event)
        return AcceptedMessage.of(
            event.message_id, Direction.INBOUND, event.content, MessageStatus.RECEIVED, provider, provider_message_id
        )
