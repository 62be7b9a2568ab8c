"""Keyset-paged reads of conversations and messages, for one account, to which another account's ids
look exactly like ids that do not exist.

A read is one statement, compiled once and prepared once per connection, and PostgreSQL writes the
answer's JSON itself, in the shapes of common.conversations: Python neither parses the rows nor builds
a model per row, and the gateway relays the bytes as they are. Only a page's envelope and its cursor
are written here. Each message's and each conversation's JSON is written with its row (its `view`),
so a page only gathers them.
"""

import json
import uuid
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.dialects.postgresql import UUID, aggregate_order_by

from common.conversations import ConversationView, MessageDetail, MessageView, StatusChange
from common.errors import NotFound
from conversation_service.database import Database, Prepared, Row
from conversation_service.pagination import (
    ConversationPosition,
    MessagePosition,
    Position,
    decode_cursor,
    encode_cursor,
)
from conversation_service.schema import (
    PARTICIPANT_SEPARATOR,
    SEND_FIRST,
    conversations,
    message_status_history,
    messages,
)


def _sql_text(value: str) -> sa.sql.ColumnElement:
    """A text constant written into the statement, not a parameter."""
    return sa.literal_column("'" + value.replace("'", "''") + "'", sa.Text)


_EMPTY_ARRAY = sa.literal_column("'[]'::json")
_MICROSECONDS = _sql_text('YYYY-MM-DD"T"HH24:MI:SS.US"Z"')

_ACCOUNT = sa.bindparam("account", type_=UUID)
_LIMIT = sa.bindparam("limit", type_=sa.Integer)
# One row past the page says whether another page follows.
_FETCH = sa.bindparam("fetch", type_=sa.Integer)


def _utc_text(value: sa.sql.ColumnElement) -> sa.sql.ColumnElement:
    """What pydantic writes for an aware datetime in UTC: ISO 8601 with a `Z`, microseconds only when
    there are any. The session's time zone does not enter into it.

    Testing the value for a fraction took PostgreSQL a fifth to a half of the conversations page's
    time; dropping a zero fraction from the text costs next to nothing."""
    text = sa.func.to_char(sa.func.timezone(_sql_text("UTC"), value), _MICROSECONDS)
    return sa.func.replace(text, _sql_text(".000000Z"), _sql_text("Z"))


def _json_object(model: type[BaseModel], values: dict[str, Any]) -> sa.sql.ColumnElement:
    """A JSON object of `model`'s fields, in its order and under the names it serializes them by.

    row_to_json of a row of named columns rather than json_build_object of names and values: it costs
    PostgreSQL about a quarter less per object, and writes no whitespace."""

    def value(name: str) -> Any:
        element = values[name]
        return _utc_text(element) if isinstance(element.type, sa.DateTime) else element

    row = (
        sa.select(*(value(name).label(field.serialization_alias or name) for name, field in model.model_fields.items()))
        # The values come from the enclosing statement: the row is made of them, it has no table of its own.
        .correlate_except(None)
        .subquery(model.__name__.lower())
    )
    return sa.select(sa.func.row_to_json(sa.literal_column(row.name))).select_from(row).scalar_subquery()


def message_object(table: sa.sql.FromClause, model: type[MessageView] = MessageView, **more: Any) -> Any:
    """A message as the API shows it. A page reads each message's `view` instead, the same JSON kept
    in its row (migration 0006), which a test holds to this."""
    return _json_object(model, {name: table.c[name] for name in MessageView.model_fields} | more)


def _sorted_array(values: sa.sql.ColumnElement) -> sa.sql.ColumnElement:
    # UTF-8's byte order is code point order: how Python's sorted() orders the same strings. Through
    # an ARRAY, whose JSON has no whitespace (json_agg's has), as pydantic writes it.
    return sa.func.coalesce(
        sa.func.array_to_json(sa.func.array_agg(aggregate_order_by(values, values.collate("C")))), _EMPTY_ARRAY
    )


def conversation_object(table: sa.sql.FromClause, last_message: sa.sql.ColumnElement) -> Any:
    """A conversation as the API shows it, with `last_message`'s JSON. A page reads each conversation's
    `view` instead, the same JSON kept in its row (migration 0007), which a test holds to this."""
    channel = sa.func.unnest(table.c.channels).table_valued("channel").render_derived(name="channels")
    return _json_object(
        ConversationView,
        {
            "id": table.c.id,
            # The key is the sorted participants joined: splitting it costs no lookup per conversation.
            "participants": sa.func.array_to_json(
                sa.func.string_to_array(table.c.participant_key, sa.literal(PARTICIPANT_SEPARATOR))
            ),
            "channels": sa.select(_sorted_array(channel.c.channel)).select_from(channel).scalar_subquery(),
            "message_count": table.c.message_count,
            "last_message": last_message,
            "last_message_at": table.c.last_message_at,
            "created_at": table.c.created_at,
        },
    )


def _as_text(json_value: sa.sql.ColumnElement, name: str) -> sa.sql.ColumnElement:
    # As text, psycopg2 hands the JSON over as it is instead of parsing it into Python objects.
    return sa.cast(json_value, sa.Text).label(name)


def _after(table: sa.Table, position: type[Position]) -> sa.sql.ColumnElement:
    """The cursor's sort key as a row value.

    The first page and the next ones are two statements: planned once for any parameters, a test for a
    missing cursor would keep the keyset condition from being an index bound."""
    return sa.tuple_(*(sa.bindparam(f"after_{name}", type_=table.c[name].type) for name in position.model_fields))


def _numbered(rows: sa.sql.Select, order: tuple[sa.sql.ColumnElement, ...]) -> sa.sql.Subquery:
    return (
        rows.add_columns(sa.func.row_number().over(order_by=order).label("n"))
        .order_by(*order)
        .limit(_FETCH)
        .subquery("page")
    )


def _page_columns(page: sa.sql.Subquery, position: type[Position]) -> list[sa.sql.ColumnElement]:
    """The first `limit` rows' `view`s as one JSON array, whether a row follows them, and the sort key
    of the last one, for the next cursor."""
    last = page.c.n == _LIMIT
    # Joined as text, which writes no whitespace between the items (json_agg does).
    item = sa.cast(page.c.view, sa.Text)
    items = sa.func.string_agg(item, aggregate_order_by(_sql_text(","), page.c.n)).filter(page.c.n <= _LIMIT)
    return [
        _sql_text("[").concat(sa.func.coalesce(items, _sql_text(""))).concat(_sql_text("]")).label("items_json"),
        (sa.func.count() > _LIMIT).label("more"),
        *(sa.func.max(page.c[name]).filter(last).label(f"cursor_{name}") for name in position.model_fields),
    ]


def _list_conversations(*, after_cursor: bool) -> Prepared:
    order = (conversations.c.last_message_at.desc(), conversations.c.id.desc())
    rows = sa.select(conversations).where(conversations.c.account_id == _ACCOUNT)
    if after_cursor:
        rows = rows.where(
            sa.tuple_(conversations.c.last_message_at, conversations.c.id) < _after(conversations, ConversationPosition)
        )
    page = _numbered(rows, order)
    return Prepared.of(sa.select(*_page_columns(page, ConversationPosition)).select_from(page))


def _list_messages(*, after_cursor: bool) -> Prepared:
    conversation_id = sa.bindparam("conversation_id", type_=sa.BigInteger)
    rows = sa.select(messages).where(messages.c.conversation_id == conversation_id, messages.c.account_id == _ACCOUNT)
    if after_cursor:
        rows = rows.where(sa.tuple_(messages.c.timestamp, messages.c.seq) > _after(messages, MessagePosition))
    page = _numbered(rows, (messages.c.timestamp, messages.c.seq))
    # In the same statement, so that an empty page tells a conversation without these messages from
    # one that is not there (or another account's).
    found = sa.exists().where(conversations.c.id == conversation_id, conversations.c.account_id == _ACCOUNT)
    return Prepared.of(sa.select(found.label("found"), *_page_columns(page, MessagePosition)).select_from(page))


def _get_message() -> Prepared:
    """The message and its history in lifecycle order, by one statement so that both come from one snapshot."""
    history = message_status_history
    change = _json_object(
        StatusChange,
        {
            "status": history.c.status,
            "at": history.c.occurred_at,
            "attempts": history.c.attempts,
            "provider_message_id": history.c.provider_message_id,
            "error": history.c.error,
        },
    )
    changes = (
        sa.select(sa.func.coalesce(sa.func.json_agg(aggregate_order_by(change, *SEND_FIRST)), _EMPTY_ARRAY))
        .where(history.c.message_id == messages.c.id)
        .correlate(messages)
        .scalar_subquery()
    )
    return Prepared.of(
        sa.select(_as_text(message_object(messages, MessageDetail, history=changes), "message")).where(
            messages.c.id == sa.bindparam("message_id", type_=UUID), messages.c.account_id == _ACCOUNT
        )
    )


_FIRST_CONVERSATIONS = _list_conversations(after_cursor=False)
_NEXT_CONVERSATIONS = _list_conversations(after_cursor=True)
_FIRST_MESSAGES = _list_messages(after_cursor=False)
_NEXT_MESSAGES = _list_messages(after_cursor=True)
_GET_MESSAGE = _get_message()


def _page_parameters(account_id: uuid.UUID, limit: int, after: Position | None, position: type[Position]) -> dict:
    return {
        "account": str(account_id),
        "limit": limit,
        "fetch": limit + 1,
        **({f"after_{name}": getattr(after, name) for name in position.model_fields} if after else {}),
    }


def _next_cursor(page: Row, position: type[Position]) -> str:
    """The cursor as JSON: null when the page is the last."""
    if not page.more:
        return "null"
    last = position(**{name: getattr(page, f"cursor_{name}") for name in position.model_fields})
    return json.dumps(encode_cursor(last))


def _json_body(**members: str) -> bytes:
    """A JSON object of members that are JSON already."""
    return ("{" + ",".join(f"{json.dumps(name)}:{value}" for name, value in members.items()) + "}").encode()


class MessageReader:
    """Each read answers the JSON body clients get."""

    def __init__(self, database: Database) -> None:
        self._database = database

    async def list_conversations(self, account_id: uuid.UUID, limit: int, cursor: str | None = None) -> bytes:
        after = decode_cursor(cursor, ConversationPosition) if cursor is not None else None
        parameters = _page_parameters(account_id, limit, after, ConversationPosition)
        statement = _NEXT_CONVERSATIONS if after else _FIRST_CONVERSATIONS
        [page] = await self._database.read(lambda connection: statement.execute(connection, parameters))
        return _json_body(conversations=page.items_json, next_cursor=_next_cursor(page, ConversationPosition))

    async def list_messages(
        self, account_id: uuid.UUID, conversation_id: int, limit: int, cursor: str | None = None
    ) -> bytes:
        """Another account's conversation is not found, exactly like one that does not exist."""
        after = decode_cursor(cursor, MessagePosition) if cursor is not None else None
        parameters = {"conversation_id": conversation_id, **_page_parameters(account_id, limit, after, MessagePosition)}
        statement = _NEXT_MESSAGES if after else _FIRST_MESSAGES
        [page] = await self._database.read(lambda connection: statement.execute(connection, parameters))
        if not page.found:
            raise NotFound(f"conversation {conversation_id} not found")
        return _json_body(
            conversation_id=str(conversation_id),
            messages=page.items_json,
            next_cursor=_next_cursor(page, MessagePosition),
        )

    async def get_message(self, account_id: uuid.UUID, message_id: uuid.UUID) -> bytes:
        """Another account's message is not found, exactly like one that does not exist."""
        parameters = {"message_id": str(message_id), "account": str(account_id)}
        rows = await self._database.read(lambda connection: _GET_MESSAGE.execute(connection, parameters))
        if not rows:
            raise NotFound(f"message {message_id} not found")
        return rows[0].message.encode()
