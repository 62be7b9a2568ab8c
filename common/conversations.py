"""The read API's contract: its path and query parameters, and conversations and messages as clients
(through the gateway, which relays the bodies untouched) see them. conversation_service answers in
these shapes and the gateway's OpenAPI description is built from them, so they live here, once."""

import uuid
from datetime import UTC, datetime
from typing import Annotated, TypeVar

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from common.contracts import Channel, Direction, MessageStatus
from common.settings import PageSettings

ItemT = TypeVar("ItemT")

# Ids are PostgreSQL bigints: a larger one names nothing, and must not reach the database as one.
MAX_BIGINT = 2**63 - 1


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
    # Under the alias both ways, so that a body clients get reads back into this model.
    from_address: str = Field(alias="from")
    to_address: str = Field(alias="to")
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


class StatusChange(BaseModel):
    """One status a message reached: when its event says it happened, and what that event reported."""

    model_config = ConfigDict(frozen=True)

    status: MessageStatus
    at: UtcDatetime
    attempts: int | None
    provider_message_id: str | None
    error: str | None


class MessageDetail(MessageView):
    """One message with its history in lifecycle order (queued, sent, then the outcome). Lists leave the
    history out: it is a read per message."""

    history: list[StatusChange]


class ConversationView(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: int
    participants: SortedList[str]
    channels: SortedList[Channel]
    message_count: int
    last_message: MessageView | None
    last_message_at: UtcDatetime
    created_at: UtcDatetime


class ConversationList(BaseModel):
    conversations: list[ConversationView]
    next_cursor: str | None


class MessageList(BaseModel):
    conversation_id: int
    messages: list[MessageView]
    next_cursor: str | None


class PageQuery(BaseModel):
    model_config = ConfigDict(frozen=True)

    limit: int | None = Field(None, ge=1)
    cursor: str | None = Field(None, min_length=1)

    @field_validator("limit")
    @classmethod
    def within_max_page_size(cls, limit: int | None, info: ValidationInfo) -> int | None:
        settings: PageSettings = info.context
        if limit is not None and limit > settings.max_page_size:
            raise ValueError(f"must be at most {settings.max_page_size}")
        return limit


class ConversationPath(BaseModel):
    conversation_id: int = Field(ge=1, le=MAX_BIGINT)


class MessagePath(BaseModel):
    message_id: uuid.UUID
