"""Keyset-paged reads of conversations and messages, for one account, to which another account's ids
look exactly like ids that do not exist."""

import uuid
from dataclasses import dataclass
from typing import Generic, TypeVar

import sqlalchemy as sa
from aiopg.sa import SAConnection
from aiopg.sa.result import RowProxy

from common.conversations import ConversationView, MessageDetail, MessageView, StatusChange
from common.errors import NotFound
from conversation_service.database import Database, fetch_all
from conversation_service.pagination import (
    ConversationPosition,
    MessagePosition,
    decode_cursor,
    encode_cursor,
)
from conversation_service.schema import (
    SEND_FIRST,
    conversation_participants,
    conversations,
    message_status_history,
    messages,
)

ItemT = TypeVar("ItemT")

_last_message = messages.alias("last_message")
_history = message_status_history


@dataclass(frozen=True)
class Page(Generic[ItemT]):
    items: list[ItemT]
    next_cursor: str | None


class MessageReader:
    def __init__(self, database: Database) -> None:
        self._database = database

    async def list_conversations(
        self, account_id: uuid.UUID, limit: int, cursor: str | None = None
    ) -> Page[ConversationView]:
        order = (conversations.c.last_message_at.desc(), conversations.c.id.desc())
        query = (
            sa.select(
                conversations,
                _participants_subquery().label("participants"),
                *(column.label(f"last_{column.name}") for column in _last_message.c),
            )
            .select_from(conversations.outerjoin(_last_message, _last_message.c.id == conversations.c.last_message_id))
            .where(conversations.c.account_id == account_id)
            .order_by(*order)
            .limit(limit + 1)
        )
        if cursor is not None:
            after = decode_cursor(cursor, ConversationPosition)
            query = query.where(
                sa.tuple_(conversations.c.last_message_at, conversations.c.id)
                < sa.tuple_(after.last_message_at, after.id)
            )
        rows = await self._database.read(lambda connection: fetch_all(connection, query))
        page, more = rows[:limit], len(rows) > limit
        next_cursor = (
            encode_cursor(ConversationPosition(last_message_at=page[-1].last_message_at, id=page[-1].id))
            if more
            else None
        )
        return Page([_conversation_view(row) for row in page], next_cursor)

    async def list_messages(
        self, account_id: uuid.UUID, conversation_id: int, limit: int, cursor: str | None = None
    ) -> Page[MessageView]:
        """Another account's conversation is not found, exactly like one that does not exist."""
        query = (
            sa.select(messages)
            .where(messages.c.conversation_id == conversation_id, messages.c.account_id == account_id)
            .order_by(messages.c.timestamp, messages.c.seq)
            .limit(limit + 1)
        )
        if cursor is not None:
            after = decode_cursor(cursor, MessagePosition)
            query = query.where(sa.tuple_(messages.c.timestamp, messages.c.seq) > sa.tuple_(after.timestamp, after.seq))

        async def fetch(connection: SAConnection) -> list[RowProxy]:
            rows = await fetch_all(connection, query)
            # Every stored conversation has a message, so only an empty page needs this second look.
            if not rows and not await _conversation_exists(connection, account_id, conversation_id):
                raise NotFound(f"conversation {conversation_id} not found")
            return rows

        rows = await self._database.read(fetch)
        page, more = rows[:limit], len(rows) > limit
        next_cursor = encode_cursor(MessagePosition(timestamp=page[-1].timestamp, seq=page[-1].seq)) if more else None
        return Page([_message_view(row) for row in page], next_cursor)

    async def get_message(self, account_id: uuid.UUID, message_id: uuid.UUID) -> MessageDetail:
        """The message and its history, read by one statement so that both come from one snapshot.

        Another account's message is not found, exactly like one that does not exist."""
        history = (_history.c.status, _history.c.occurred_at, _history.c.attempts, _history.c.provider_message_id)
        query = (
            sa.select(messages, *(column.label(f"history_{column.name}") for column in (*history, _history.c.error)))
            .select_from(messages.outerjoin(_history, _history.c.message_id == messages.c.id))
            .where(messages.c.id == message_id, messages.c.account_id == account_id)
            .order_by(*SEND_FIRST)
        )
        rows = await self._database.read(lambda connection: fetch_all(connection, query))
        if not rows:
            raise NotFound(f"message {message_id} not found")
        return MessageDetail(
            **_message_view(rows[0]).model_dump(),
            history=[
                StatusChange(
                    status=row.history_status,
                    at=row.history_occurred_at,
                    attempts=row.history_attempts,
                    provider_message_id=row.history_provider_message_id,
                    error=row.history_error,
                )
                for row in rows
                if row.history_status is not None
            ],
        )


def _participants_subquery() -> sa.sql.expression.ScalarSelect:
    return (
        sa.select(sa.func.array_agg(conversation_participants.c.address))
        .where(conversation_participants.c.conversation_id == conversations.c.id)
        .scalar_subquery()
    )


async def _conversation_exists(connection: SAConnection, account_id: uuid.UUID, conversation_id: int) -> bool:
    query = sa.select(conversations.c.id).where(
        conversations.c.id == conversation_id, conversations.c.account_id == account_id
    )
    return await connection.scalar(query) is not None


def _message_view(row: RowProxy, prefix: str = "") -> MessageView:
    return MessageView(
        id=row[f"{prefix}id"],
        conversation_id=row[f"{prefix}conversation_id"],
        direction=row[f"{prefix}direction"],
        type=row[f"{prefix}type"],
        from_address=row[f"{prefix}from_address"],
        to_address=row[f"{prefix}to_address"],
        body=row[f"{prefix}body"],
        attachments=row[f"{prefix}attachments"],
        status=row[f"{prefix}status"],
        provider=row[f"{prefix}provider"],
        provider_message_id=row[f"{prefix}provider_message_id"],
        attempts=row[f"{prefix}attempts"],
        last_error=row[f"{prefix}last_error"],
        timestamp=row[f"{prefix}timestamp"],
        created_at=row[f"{prefix}created_at"],
        updated_at=row[f"{prefix}updated_at"],
        status_changed_at=row[f"{prefix}status_changed_at"],
    )


def _conversation_view(row: RowProxy) -> ConversationView:
    return ConversationView(
        id=row.id,
        participants=row.participants,
        channels=row.channels,
        message_count=row.message_count,
        last_message=_message_view(row, "last_") if row.last_message_id is not None else None,
        last_message_at=row.last_message_at,
        created_at=row.created_at,
    )
