"""Conversations and messages in PostgreSQL: idempotent writes of message events, keyset-paged reads.

Every write is one transaction and may be replayed any number of times, in any order, without
changing the outcome: the message id is the primary key, a conversation is found by its participant
key, and a status only moves up `STATUS_RANK`. Each write works on a connection it is given, so a
batch of deliveries can later share one transaction.
"""

import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Any, TypeVar

import psycopg2
import sqlalchemy as sa
from aiopg.sa import Engine, SAConnection
from aiopg.sa.result import RowProxy
from psycopg2.extras import Json
from sqlalchemy.dialects import postgresql as pg
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential,
    wait_random,
)

from common.contracts import (
    STATUS_RANK,
    Direction,
    MessageContent,
    MessageReceived,
    MessageStatus,
    MessageStatusChanged,
    SendMessage,
)
from common.http import NotFound, ServiceUnavailable
from conversation_service.models import ConversationView, MessageView, Page
from conversation_service.pagination import (
    ConversationPosition,
    MessagePosition,
    decode_cursor,
    encode_cursor,
)
from conversation_service.schema import conversation_participants, conversations, messages

log = logging.getLogger(__name__)

ResultT = TypeVar("ResultT")

# A dropped connection, a restarting server, a deadlock or a serialization failure: worth another try.
CONNECTION_ERRORS = (psycopg2.OperationalError, psycopg2.InterfaceError)

# Never part of an address written by the gateway, so joining with it cannot make two different
# sets of participants look alike.
PARTICIPANT_SEPARATOR = "\n"

_last_message = messages.alias("last_message")


def participants_of(content: MessageContent) -> list[str]:
    """The gateway normalized both addresses (E.164 phones, lower-cased emails): equal means same."""
    return sorted({content.from_address, content.to_address})


def participant_key(participants: Iterable[str]) -> str:
    return PARTICIPANT_SEPARATOR.join(sorted(participants))


class MessageRepository:
    """`retry_seconds` bounds how long a write waits out an unreachable database before it fails,
    `read_retry_seconds` the same for a read, which a client is waiting on."""

    def __init__(self, engine: Engine, *, retry_seconds: float, read_retry_seconds: float = 1.0) -> None:
        self._engine = engine
        self._retry_seconds = retry_seconds
        self._read_retry_seconds = read_retry_seconds

    async def is_available(self) -> bool:
        async with self._engine.acquire() as connection:
            return await connection.scalar(sa.select(sa.literal(1))) == 1

    # Writes: each returns whether it changed anything, False for a replay.

    async def store_outbound(self, command: SendMessage) -> bool:
        params = _message_params(
            command, Direction.OUTBOUND, MessageStatus.QUEUED, status_changed_at=command.occurred_at
        )
        return await self._write(lambda connection: _insert_message(connection, command.content, params))

    async def store_inbound(self, event: MessageReceived) -> bool:
        params = _message_params(
            event,
            Direction.INBOUND,
            MessageStatus.RECEIVED,
            status_changed_at=event.occurred_at,
            provider=event.provider,
            provider_message_id=event.provider_message_id,
        )
        return await self._write(lambda connection: _insert_message(connection, event.content, params))

    async def store_status(self, event: MessageStatusChanged) -> bool:
        return await self._write(lambda connection: _apply_status(connection, event))

    # Reads.

    async def list_conversations(self, limit: int, cursor: str | None = None) -> Page[ConversationView]:
        order = (conversations.c.last_message_at.desc(), conversations.c.id.desc())
        query = (
            sa.select(
                conversations,
                _participants_subquery().label("participants"),
                *(column.label(f"last_{column.name}") for column in _last_message.c),
            )
            .select_from(conversations.outerjoin(_last_message, _last_message.c.id == conversations.c.last_message_id))
            .order_by(*order)
            .limit(limit + 1)
        )
        if cursor is not None:
            after = decode_cursor(cursor, ConversationPosition)
            query = query.where(
                sa.tuple_(conversations.c.last_message_at, conversations.c.id)
                < sa.tuple_(after.last_message_at, after.id)
            )
        rows = await self._read(lambda connection: _fetch_all(connection, query))
        page, more = rows[:limit], len(rows) > limit
        next_cursor = (
            encode_cursor(ConversationPosition(last_message_at=page[-1].last_message_at, id=page[-1].id))
            if more
            else None
        )
        return Page([_conversation_view(row) for row in page], next_cursor)

    async def list_messages(self, conversation_id: int, limit: int, cursor: str | None = None) -> Page[MessageView]:
        query = (
            sa.select(messages)
            .where(messages.c.conversation_id == conversation_id)
            .order_by(messages.c.timestamp, messages.c.seq)
            .limit(limit + 1)
        )
        if cursor is not None:
            after = decode_cursor(cursor, MessagePosition)
            query = query.where(sa.tuple_(messages.c.timestamp, messages.c.seq) > sa.tuple_(after.timestamp, after.seq))

        async def fetch(connection: SAConnection) -> list[RowProxy]:
            rows = await _fetch_all(connection, query)
            # Every stored conversation has a message, so only an empty page needs this second look.
            if not rows and not await _conversation_exists(connection, conversation_id):
                raise NotFound(f"conversation {conversation_id} not found")
            return rows

        rows = await self._read(fetch)
        page, more = rows[:limit], len(rows) > limit
        next_cursor = encode_cursor(MessagePosition(timestamp=page[-1].timestamp, seq=page[-1].seq)) if more else None
        return Page([_message_view(row) for row in page], next_cursor)

    async def get_message(self, message_id: uuid.UUID) -> MessageView:
        query = sa.select(messages).where(messages.c.id == message_id)
        rows = await self._read(lambda connection: _fetch_all(connection, query))
        if not rows:
            raise NotFound(f"message {message_id} not found")
        return _message_view(rows[0])

    async def _write(self, work: Callable[[SAConnection], Awaitable[ResultT]]) -> ResultT:
        """Run `work` in one transaction, again from the start while the database is unreachable.

        Safe because every write is idempotent. After `retry_seconds` the error propagates and the
        consumer puts the message back on the queue.
        """
        return await _retrying(self._retry_seconds)(self._transaction, work)

    async def _transaction(self, work: Callable[[SAConnection], Awaitable[ResultT]]) -> ResultT:
        async with self._engine.acquire() as connection, connection.begin():
            return await work(connection)

    async def _read(self, work: Callable[[SAConnection], Awaitable[ResultT]]) -> ResultT:
        """A pooled connection the database dropped (it restarted) is retried at once on a fresh
        one; a database that stays away is a 503 for the client to retry."""
        try:
            return await _retrying(self._read_retry_seconds)(self._connected, work)
        except CONNECTION_ERRORS as error:
            raise ServiceUnavailable("the database is unavailable; retry later") from error

    async def _connected(self, work: Callable[[SAConnection], Awaitable[ResultT]]) -> ResultT:
        async with self._engine.acquire() as connection:
            return await work(connection)


def _retrying(deadline_seconds: float) -> AsyncRetrying:
    return AsyncRetrying(
        retry=retry_if_exception_type(CONNECTION_ERRORS),
        wait=wait_exponential(multiplier=0.05, max=2.0) + wait_random(0, 0.1),
        stop=stop_after_delay(deadline_seconds),
        before_sleep=_log_retry,
        reraise=True,
    )


def _log_retry(state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome is not None else None
    log.warning(
        "database unreachable; retrying",
        extra={"attempt": state.attempt_number, "error": repr(error)},
    )


@dataclass(frozen=True)
class _Compiled:
    """A write statement compiled once, at import.

    aiopg compiles a Core statement on every execution; for these per-message writes that costs more
    CPU than PostgreSQL spends running them. The SQL text takes plain psycopg2 parameters: the
    constants SQLAlchemy bound while building the statement, plus the caller's values, which are
    given in types psycopg2 adapts itself (UUIDs as text, JSON wrapped).
    """

    sql: str
    constants: Mapping[str, Any]

    @classmethod
    def of(cls, statement: sa.sql.ClauseElement) -> "_Compiled":
        compiled = statement.compile(dialect=pg.dialect())
        constants = {name: bind.effective_value for bind, name in compiled.bind_names.items() if not bind.required}
        return cls(str(compiled), MappingProxyType(constants))

    async def scalar(self, connection: SAConnection, params: Mapping[str, Any]) -> Any:
        return await connection.scalar(self.sql, {**self.constants, **params})


_FIND_CONVERSATION = _Compiled.of(
    sa.select(conversations.c.id).where(conversations.c.participant_key == sa.bindparam("participant_key"))
)
_LOCK_PARTICIPANT_KEY = _Compiled.of(
    sa.select(sa.func.pg_advisory_xact_lock(sa.func.hashtextextended(sa.bindparam("participant_key"), 0)))
)


_MESSAGE_COLUMNS = (
    "id",
    "conversation_id",
    "direction",
    "type",
    "from_address",
    "to_address",
    "body",
    "attachments",
    "status",
    "provider",
    "provider_message_id",
    "attempts",
    "last_error",
    "timestamp",
    "status_changed_at",
)


def _create_conversation_statement() -> sa.sql.Select:
    """The new conversation's id, its participants inserted by the same statement.

    ON CONFLICT keeps it safe even against a writer that skipped the lock: it then returns the row
    the other one committed.
    """
    insert = pg.insert(conversations).values(
        participant_key=sa.bindparam("participant_key"), last_message_at=sa.bindparam("last_message_at")
    )
    created = (
        insert.on_conflict_do_update(
            index_elements=[conversations.c.participant_key],
            set_={"participant_key": insert.excluded.participant_key},
        )
        .returning(conversations.c.id)
        .cte("created")
    )
    add_participants = (
        pg.insert(conversation_participants)
        .from_select(
            ["conversation_id", "address"],
            sa.select(created.c.id, sa.func.unnest(sa.bindparam("participants", type_=pg.ARRAY(sa.Text)))),
        )
        .on_conflict_do_nothing()
        .cte("created_participants")
    )
    return sa.select(created.c.id).add_cte(add_participants)


def _insert_message_statement() -> sa.sql.Update:
    """Insert the message unless it is there, and only if it was not, count it in its conversation.

    An UPDATE ... FROM an empty CTE touches nothing, so a replayed event leaves the count, the
    channels and the latest message alone. Returns the conversation's id when the message was new.
    """
    inserted = (
        pg.insert(messages)
        .values({name: sa.bindparam(name) for name in _MESSAGE_COLUMNS})
        .on_conflict_do_nothing()
        .returning(messages.c.id, messages.c.conversation_id, messages.c.type, messages.c.timestamp)
        .cte("inserted_message")
    )
    return (
        conversations.update()
        .where(conversations.c.id == inserted.c.conversation_id)
        .values(
            message_count=conversations.c.message_count + 1,
            channels=sa.case(
                (conversations.c.channels.any(inserted.c.type), conversations.c.channels),
                else_=sa.func.array_append(conversations.c.channels, inserted.c.type),
            ),
            last_message_id=sa.case(
                (inserted.c.timestamp >= conversations.c.last_message_at, inserted.c.id),
                else_=conversations.c.last_message_id,
            ),
            last_message_at=sa.func.greatest(conversations.c.last_message_at, inserted.c.timestamp),
            updated_at=sa.func.now(),
        )
        .returning(conversations.c.id)
    )


def _raise_status_statement() -> sa.sql.Update:
    """Set the outcome only if it ranks above the current status: never backwards, a final one stays."""
    rank = sa.case({status.value: rank for status, rank in STATUS_RANK.items()}, value=messages.c.status)
    outcome = ("status", "attempts", "provider", "provider_message_id", "last_error", "status_changed_at")
    return (
        messages.update()
        .where(messages.c.id == sa.bindparam("message_id"), rank < sa.bindparam("rank"))
        .values({**{name: sa.bindparam(name) for name in outcome}, "updated_at": sa.func.now()})
        .returning(messages.c.id)
    )


_CREATE_CONVERSATION = _Compiled.of(_create_conversation_statement())
_INSERT_MESSAGE = _Compiled.of(_insert_message_statement())
_RAISE_STATUS = _Compiled.of(_raise_status_statement())


def _message_params(
    event: SendMessage | MessageReceived,
    direction: Direction,
    status: MessageStatus,
    *,
    status_changed_at: datetime,
    provider: str | None = None,
    provider_message_id: str | None = None,
    attempts: int = 0,
    last_error: str | None = None,
) -> dict[str, Any]:
    content = event.content
    return {
        "id": str(event.message_id),
        "direction": direction.value,
        "type": content.channel.value,
        "from_address": content.from_address,
        "to_address": content.to_address,
        "body": content.body,
        "attachments": Json(list(content.attachments)),
        "status": status.value,
        "provider": provider,
        "provider_message_id": provider_message_id,
        "attempts": attempts,
        "last_error": last_error,
        "timestamp": content.timestamp,
        "status_changed_at": status_changed_at,
    }


async def _insert_message(connection: SAConnection, content: MessageContent, params: dict[str, Any]) -> bool:
    """Store a message in its conversation unless it is there already; True if it was not."""
    conversation_id = await _find_or_create_conversation(connection, content)
    return await _INSERT_MESSAGE.scalar(connection, {**params, "conversation_id": conversation_id}) is not None


async def _find_or_create_conversation(connection: SAConnection, content: MessageContent) -> int:
    participants = participants_of(content)
    key = {"participant_key": participant_key(participants)}
    conversation_id = await _FIND_CONVERSATION.scalar(connection, key)
    if conversation_id is not None:
        return conversation_id
    # An INSERT draws its id from the sequence even when it then hits ON CONFLICT, so two writers
    # racing to create one conversation (a send and its status, typically) would leave a gap in the
    # ids clients see. Creators of one key take turns instead, and look again once it is theirs.
    await _LOCK_PARTICIPANT_KEY.scalar(connection, key)
    conversation_id = await _FIND_CONVERSATION.scalar(connection, key)
    if conversation_id is not None:
        return conversation_id
    return await _CREATE_CONVERSATION.scalar(
        connection, {**key, "participants": participants, "last_message_at": content.timestamp}
    )


async def _apply_status(connection: SAConnection, event: MessageStatusChanged) -> bool:
    if await _raise_status(connection, event):
        return True
    # Not raised: either the message is not stored yet (this event overtook its SendMessage) or it
    # already holds this status or a final one. Store it from the command, with this status.
    params = _message_params(
        event.command,
        Direction.OUTBOUND,
        event.status,
        status_changed_at=event.occurred_at,
        provider=event.provider,
        provider_message_id=event.provider_message_id,
        attempts=event.attempts,
        last_error=event.error,
    )
    if await _insert_message(connection, event.command.content, params):
        return True
    # The insert met a row committed since the first update looked (a concurrent SendMessage):
    # this statement's fresh snapshot sees it.
    return await _raise_status(connection, event)


async def _raise_status(connection: SAConnection, event: MessageStatusChanged) -> bool:
    params = {
        "message_id": str(event.message_id),
        "rank": STATUS_RANK[event.status],
        "status": event.status.value,
        "attempts": event.attempts,
        "provider": event.provider,
        "provider_message_id": event.provider_message_id,
        "last_error": event.error,
        "status_changed_at": event.occurred_at,
    }
    return await _RAISE_STATUS.scalar(connection, params) is not None


def _participants_subquery() -> sa.sql.expression.ScalarSelect:
    return (
        sa.select(sa.func.array_agg(conversation_participants.c.address))
        .where(conversation_participants.c.conversation_id == conversations.c.id)
        .scalar_subquery()
    )


async def _fetch_all(connection: SAConnection, query: sa.sql.Select) -> list[RowProxy]:
    result = await connection.execute(query)
    return await result.fetchall()


async def _conversation_exists(connection: SAConnection, conversation_id: int) -> bool:
    query = sa.select(conversations.c.id).where(conversations.c.id == conversation_id)
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
