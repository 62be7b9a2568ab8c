"""Opaque keyset cursors: the sort key of the last row a page returned, as URL-safe base64 JSON."""

import base64
from typing import TypeVar

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from common.conversations import MAX_BIGINT
from common.errors import InvalidRequest

PositionT = TypeVar("PositionT", bound="Position")


class Position(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ConversationPosition(Position):
    """Conversations run by latest activity, newest first; the id breaks ties."""

    last_message_at: AwareDatetime
    id: int = Field(ge=1, le=MAX_BIGINT)


class MessagePosition(Position):
    """A conversation's messages run by their timestamp, oldest first; arrival order breaks ties."""

    timestamp: AwareDatetime
    seq: int = Field(ge=1, le=MAX_BIGINT)


def encode_cursor(position: Position) -> str:
    return base64.urlsafe_b64encode(position.model_dump_json().encode()).decode().rstrip("=")


def decode_cursor(cursor: str, position_type: type[PositionT]) -> PositionT:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        return position_type.model_validate_json(raw)
    except ValueError as error:
        # ValueError covers bad base64, non-ASCII input and a ValidationError of the JSON inside.
        raise InvalidRequest(
            "cursor is invalid", [{"field": "cursor", "reason": "not a cursor this list returned"}]
        ) from error
