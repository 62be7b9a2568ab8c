"""Message contracts on the bus: the one definition every service imports.

Commands are imperative (`SendMessage`), events past tense (`MessageReceived`,
`MessageStatusChanged`, `DeliveryReported`). Every contract is frozen, forbids unknown fields, carries its own `kind`
(so one queue can hold several contracts), an id, a correlation id, when it happened and a schema
version, and knows the routing key it is published under.
"""

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

# Ids that must be the same however often they are computed (a webhook retried by its provider) are
# UUIDv5 in this namespace. A send's id is new each time: a repeated Idempotency-Key is answered with
# the first send's id by the key store, and a key used again after it expired must make a new message.
MESSAGE_ID_NAMESPACE = uuid.UUID("8f1c6f0e-3d4b-5c2a-9e7f-6a1b2c3d4e5f")

# Who sent or received a message, as stored with it and as part of an inbound message's id.
SMS_PROVIDER = "sms-provider"
EMAIL_PROVIDER = "email-provider"


class Channel(StrEnum):
    SMS = "sms"
    MMS = "mms"
    EMAIL = "email"


class Direction(StrEnum):
    INBOUND = "inbound"
    OUTBOUND = "outbound"


class MessageStatus(StrEnum):
    QUEUED = "queued"
    SENT = "sent"
    DELIVERED = "delivered"
    FAILED = "failed"
    RECEIVED = "received"


# A status only ever moves to a higher rank; delivered, failed and received are final.
STATUS_RANK: dict[MessageStatus, int] = {
    MessageStatus.QUEUED: 0,
    MessageStatus.SENT: 1,
    MessageStatus.DELIVERED: 2,
    MessageStatus.FAILED: 2,
    MessageStatus.RECEIVED: 2,
}


def utcnow() -> datetime:
    return datetime.now(UTC)


def inbound_message_id(provider: str, provider_message_id: str) -> uuid.UUID:
    return uuid.uuid5(MESSAGE_ID_NAMESPACE, f"{provider}:{provider_message_id}")


class Contract(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: str
    schema_version: Literal[1] = 1
    event_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    correlation_id: uuid.UUID
    occurred_at: datetime = Field(default_factory=utcnow)

    @property
    def routing_key(self) -> str:
        raise NotImplementedError


class MessageContent(BaseModel):
    """What a message says and between whom, in either direction, with addresses normalized."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    channel: Channel
    from_address: str
    to_address: str
    body: str
    attachments: tuple[str, ...] = ()
    timestamp: datetime


class SendMessage(Contract):
    """A client asked to send a message: the channel service sends it, the conversation service stores it."""

    kind: Literal["send_message"] = "send_message"
    message_id: uuid.UUID
    # The account that sent it, and so owns its conversation; it owns `content.from_address`.
    account_id: uuid.UUID
    content: MessageContent

    @property
    def routing_key(self) -> str:
        return f"outbound.{self.content.channel}"


class MessageReceived(Contract):
    """A provider told us, through a webhook, of a message sent to one of our addresses."""

    kind: Literal["message_received"] = "message_received"
    message_id: uuid.UUID
    # The account that owns `content.to_address`, and so the conversation.
    account_id: uuid.UUID
    provider: str
    provider_message_id: str
    content: MessageContent

    @property
    def routing_key(self) -> str:
        return f"inbound.{self.content.channel}"


class MessageStatusChanged(Contract):
    """A channel service's outcome for a send.

    It carries the original command so that the conversation service can store the message even
    when this event overtakes the `SendMessage` it answers.
    """

    kind: Literal["message_status_changed"] = "message_status_changed"
    message_id: uuid.UUID
    status: Literal[MessageStatus.SENT, MessageStatus.DELIVERED, MessageStatus.FAILED]
    provider: str
    provider_message_id: str | None = None
    attempts: int = Field(ge=0)
    error: str | None = None
    command: SendMessage

    @property
    def routing_key(self) -> str:
        return f"status.{self.command.content.channel}"


class DeliveryReported(Contract):
    """A provider's delivery receipt for a message we sent: it reached the recipient, or never will.

    It names our message id, which the channel service handed the provider with the send (Twilio's
    status callback URL, SendGrid's custom args), and may arrive before anything else of that message.
    """

    kind: Literal["delivery_reported"] = "delivery_reported"
    message_id: uuid.UUID
    channel: Channel
    provider: str
    provider_message_id: str
    status: Literal[MessageStatus.DELIVERED, MessageStatus.FAILED]
    error: str | None = None

    @property
    def routing_key(self) -> str:
        return f"receipt.{self.channel}"


MessageEvent = Annotated[
    SendMessage | MessageReceived | MessageStatusChanged | DeliveryReported, Field(discriminator="kind")
]
message_event_adapter: TypeAdapter[SendMessage | MessageReceived | MessageStatusChanged | DeliveryReported] = (
    TypeAdapter(MessageEvent)
)
