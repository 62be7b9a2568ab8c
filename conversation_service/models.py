"""What the read API answers: conversations and messages as clients (through the gateway) see them."""

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Generic, TypeVar

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field

from common.contracts import Channel, Direction, MessageStatus

ItemT = TypeVar("ItemT")


def _to_utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


# The database answers in its session's time zone; clients always get UTC, written with a `Z`.
UtcDatetime = Annotated[AwareDatetime, AfterValidator(_to_utc)]
SortedList = Annotated[list[ItemT], AfterValidator(sorted)]


class MessageView(BaseModel):
    model_config = ConfigDict(frozen=True, populate_by_name=True)

    id: uuid.UUID
    conversation_id: int
    direction: Direction
    type: Channel
    from_address: str = Field(serialization_alias="from")
    to_address: str = Field(serialization_alias="to")
    body: str
    attachments: list[str]
    status: MessageStatus
    provider: str | None
    provider_message_id: str | None
    attempts: int
    last_error: str | None
    timestamp: UtcDatetime
    created_at: UtcDatetime
    updated_at: UtcDatetime
    status_changed_at: UtcDatetime


class ConversationView(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: int
    participants: SortedList[str]
    channels: SortedList[Channel]
    message_count: int
    last_message: MessageView | None
    last_message_at: UtcDatetime
    created_at: UtcDatetime


@dataclass(frozen=True)
class Page(Generic[ItemT]):
    items: list[ItemT]
    next_cursor: str | None


class ConversationList(BaseModel):
    conversations: list[ConversationView]
    next_cursor: str | None


class MessageList(BaseModel):
    conversation_id: int
    messages: list[MessageView]
    next_cursor: str | None
