"""Idempotent writes of message events: each may be replayed any number of times, in any order,
without changing the outcome.

Everything belongs to one account: a write takes it from its event (the send's, or the owner of an
inbound message's recipient), and conversations group by participants within their account.

Each status event adds one row to `message_status_history`, keyed by message and status, so a replay
finds its row taken and changes nothing. A message's status, attempts, provider ids and last error
are derived from its history, never set by whichever event came last: the highest rank wins
(`STATUS_RANK`; provider ids are taken as the send's answer spelt them), so a status never moves
backwards. A delivery receipt is checked against the send it names (channel, provider, provider id)
and dated within [the send's time, now + a skew] before it enters the history; one that arrives
before the send's answer waits in `pending_receipts` until it can be checked, and one that does not
fit changes nothing. Writers of one message take turns on a transaction-scoped advisory lock, so that
a receipt and the send it reports on cannot each miss the other. Each write works on a connection it
is given, so a batch of deliveries can share one transaction (taking its messages' locks in a fixed
order).
"""

import logging
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, assert_never

import sqlalchemy as sa
from aiopg.sa import SAConnection
from aiopg.sa.result import RowProxy
from psycopg2.extras import Json
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.dialects.postgresql import aggregate_order_by

from common.contracts import (
    Channel,
    DeliveryReported,
    Direction,
    MessageContent,
    MessageEvent,
    MessageReceived,
    MessageStatus,
    MessageStatusChanged,
    SendMessage,
)
from conversation_service.database import Compiled, Database
from conversation_service.handlers import WriteOutcome
from conversation_service.schema import (
    OUTCOME_FIRST,
    SEND_FIRST,
    conversation_participants,
    conversations,
    message_status_history,
    messages,
)

log = logging.getLogger(__name__)

# Never part of an address written by the gateway, so joining with it cannot make two different
# sets of participants look alike.
PARTICIPANT_SEPARATOR = "\n"

_history = message_status_history


def participants_of(content: MessageContent) -> list[str]:
    """The gateway normalized both addresses (E.164 phones, lower-cased emails): equal means same."""
    return sorted({content.from_address, content.to_address})


def participant_key(participants: Iterable[str]) -> str:
    return PARTICIPANT_SEPARATOR.join(sorted(participants))


class MessageWriter:
    def __init__(self, database: Database, *, receipt_clock_skew_seconds: float = 60.0) -> None:
        self._database = database
        self._receipt_clock_skew_seconds = receipt_clock_skew_seconds

    async def store_batch(self, events: Sequence[MessageEvent]) -> list[WriteOutcome]:
        """Write `events` in one transaction, as if one after the other; each one's outcome."""
        return await self._database.write(lambda connection: self._record_all(connection, events))

    async def store_outbound(self, command: SendMessage) -> WriteOutcome:
        return (await self.store_batch([command]))[0]

    async def store_inbound(self, event: MessageReceived) -> WriteOutcome:
        return (await self.store_batch([event]))[0]

    async def store_status(self, event: MessageStatusChanged) -> WriteOutcome:
        return (await self.store_batch([event]))[0]

    async def store_receipt(self, event: DeliveryReported) -> WriteOutcome:
        return (await self.store_batch([event]))[0]

    async def _record_all(self, connection: SAConnection, events: Sequence[MessageEvent]) -> list[WriteOutcome]:
        return [await self._record(connection, event) for event in events]

    async def _record(self, connection: SAConnection, event: MessageEvent) -> WriteOutcome:
        skew = self._receipt_clock_skew_seconds
        match event:
            case SendMessage():
                entry = _history_entry(event.message_id, MessageStatus.QUEUED, event.occurred_at)
                message = _message_params(event.message_id, event.account_id, Direction.OUTBOUND, event.content)
                return await _record_message(connection, entry, event.content, message)
            case MessageReceived():
                entry = _history_entry(
                    event.message_id,
                    MessageStatus.RECEIVED,
                    event.occurred_at,
                    provider=event.provider,
                    provider_message_id=event.provider_message_id,
                )
                message = _message_params(event.message_id, event.account_id, Direction.INBOUND, event.content)
                return await _record_message(connection, entry, event.content, message)
            case MessageStatusChanged():
                entry = _history_entry(
                    event.message_id,
                    event.status,
                    event.occurred_at,
                    attempts=event.attempts,
                    provider=event.provider,
                    provider_message_id=event.provider_message_id,
                    error=event.error,
                )
                content = event.command.content
                message = _message_params(event.message_id, event.command.account_id, Direction.OUTBOUND, content)
                return await _record_status(connection, entry, content, message, skew)
            case DeliveryReported():
                receipt = {
                    "message_id": str(event.message_id),
                    "status": event.status.value,
                    "channel": event.channel.value,
                    "provider": event.provider,
                    "provider_message_id": event.provider_message_id,
                    "occurred_at": event.occurred_at,
                    "error": event.error,
                }
                return await _record_receipt(connection, receipt, skew)
            case _:
                assert_never(event)

    async def expire_pending_receipts(self, older_than_seconds: float) -> int:
        """Drop the receipts that waited longer than `older_than_seconds` for their send; how many.

        Their send never came (a forged or misdirected receipt, most likely): they could never apply.
        """
        result = await self._database.write(
            lambda connection: _EXPIRE_PENDING_RECEIPTS.execute(connection, {"older_than": older_than_seconds})
        )
        return len(result)


_FIND_CONVERSATION = Compiled.of(
    sa.select(conversations.c.id).where(
        conversations.c.account_id == sa.bindparam("account_id", type_=pg.UUID),
        conversations.c.participant_key == sa.bindparam("participant_key"),
    )
)
# Per account and participants: creators of one conversation take turns, of different ones do not.
_LOCK_PARTICIPANT_KEY = Compiled.of(
    sa.select(
        sa.func.pg_advisory_xact_lock(
            sa.func.hashtextextended(
                sa.bindparam("account_id", type_=sa.Text) + PARTICIPANT_SEPARATOR + sa.bindparam("participant_key"), 0
            )
        )
    )
)


_LOCK_MESSAGE = sa.func.pg_advisory_xact_lock(sa.func.hashtextextended(sa.bindparam("message_id"), 0))

# Given by the event that stores the message.
_CONTENT_COLUMNS = (
    "id",
    "conversation_id",
    "account_id",
    "direction",
    "type",
    "from_address",
    "to_address",
    "body",
    "attachments",
    "timestamp",
)
# Derived from the message's history.
_STATUS_COLUMNS = ("status", "status_changed_at", "attempts", "provider", "provider_message_id", "last_error")


def _first(column: sa.Column, order: tuple[Any, ...], *, present: bool = False) -> Any:
    values = pg.array_agg(aggregate_order_by(column, *order))
    return (values.filter(column.isnot(None)) if present else values)[1]


def _derived_status(message_id: sa.sql.expression.BindParameter) -> sa.sql.Subquery:
    """The message's status columns as its history says; an aggregate, so always one row."""
    return (
        sa.select(
            _first(_history.c.status, OUTCOME_FIRST).label("status"),
            _first(_history.c.occurred_at, OUTCOME_FIRST).label("status_changed_at"),
            sa.func.coalesce(_first(_history.c.attempts, OUTCOME_FIRST, present=True), 0).label("attempts"),
            _first(_history.c.provider, SEND_FIRST, present=True).label("provider"),
            _first(_history.c.provider_message_id, SEND_FIRST, present=True).label("provider_message_id"),
            _first(_history.c.error, OUTCOME_FIRST).label("last_error"),
        )
        .where(_history.c.message_id == message_id)
        .subquery("derived")
    )


def _record_entry_statement() -> sa.sql.Insert:
    """Take the message's lock, then add the entry unless its status is recorded; returns it if added.

    The lock is taken in the same statement, before the insert: everything this transaction then
    reads of the message comes after any other writer of it committed.
    """
    locked = sa.select(_LOCK_MESSAGE.label("locked")).subquery("locked")
    names = ("message_id", "status", "occurred_at", "attempts", "provider", "provider_message_id", "error")
    entry = sa.select(*(sa.cast(sa.bindparam(name), _history.c[name].type) for name in names)).select_from(locked)
    return pg.insert(_history).from_select(list(names), entry).on_conflict_do_nothing().returning(_history.c.message_id)


def _create_conversation_statement() -> sa.sql.Select:
    """The new conversation's id, its participants inserted by the same statement.

    ON CONFLICT keeps it safe even against a writer that skipped the lock: it then returns the row
    the other one committed.
    """
    insert = pg.insert(conversations).values(
        account_id=sa.bindparam("account_id", type_=pg.UUID),
        participant_key=sa.bindparam("participant_key"),
        last_message_at=sa.bindparam("last_message_at"),
    )
    created = (
        insert.on_conflict_do_update(
            index_elements=[conversations.c.account_id, conversations.c.participant_key],
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
    """Insert the message, its status derived from its history, unless it is there; and only if it
    was not, count it in its conversation.

    An UPDATE ... FROM an empty CTE touches nothing, so a replayed event leaves the count, the
    channels and the latest message alone. Returns the conversation's id when the message was new.
    """
    derived = _derived_status(sa.bindparam("id"))
    # INSERT ... SELECT types its parameters as text: each is cast to its column's type.
    row = sa.select(
        *(sa.cast(sa.bindparam(name), messages.c[name].type) for name in _CONTENT_COLUMNS),
        *(derived.c[name] for name in _STATUS_COLUMNS),
    )
    inserted = (
        pg.insert(messages)
        .from_select([*_CONTENT_COLUMNS, *_STATUS_COLUMNS], row)
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


def _refresh_status_statement() -> sa.sql.Update:
    """Derive the stored message's status columns from its history again; returns its id if it is stored.

    `updated_at` moves only if something visible changed (an entry that ranks below the status
    changes nothing).
    """
    derived = _derived_status(sa.bindparam("message_id"))
    changed = sa.tuple_(*(messages.c[name] for name in _STATUS_COLUMNS)).is_distinct_from(
        sa.tuple_(*(derived.c[name] for name in _STATUS_COLUMNS))
    )
    return (
        messages.update()
        # Naming `derived` here is also what puts it in the UPDATE's FROM.
        .where(messages.c.id == sa.bindparam("message_id"), derived.c.status.isnot(None))
        .values(
            {
                **{name: derived.c[name] for name in _STATUS_COLUMNS},
                "updated_at": sa.case((changed, sa.func.now()), else_=messages.c.updated_at),
            }
        )
        .returning(messages.c.id)
    )


# Which channels' messages a receipt of each channel can be about: Twilio's callback does not say MMS.
_RECEIPT_CHANNELS = {
    Channel.SMS.value: {Channel.SMS.value, Channel.MMS.value},
    Channel.MMS.value: {Channel.SMS.value, Channel.MMS.value},
    Channel.EMAIL.value: {Channel.EMAIL.value},
}

_RECORD_ENTRY = Compiled.of(_record_entry_statement())
_LOCK_MESSAGE_ALONE = Compiled.of(sa.select(_LOCK_MESSAGE))
_SEND_OF = Compiled.of(
    sa.text(
        "SELECT m.direction, m.type, m.status, s.provider AS sent_provider, "
        "s.provider_message_id AS sent_provider_message_id, s.occurred_at AS sent_at "
        "FROM messages m LEFT JOIN message_status_history s ON s.message_id = m.id AND s.status = 'sent' "
        "WHERE m.id = CAST(:message_id AS uuid)"
    )
)
_RECEIPT_COLUMNS = "message_id, status, channel, provider, provider_message_id, occurred_at, error"
_PARK_RECEIPT = Compiled.of(
    sa.text(
        f"INSERT INTO pending_receipts ({_RECEIPT_COLUMNS}) VALUES (CAST(:message_id AS uuid), :status, :channel, "
        ":provider, :provider_message_id, :occurred_at, :error) ON CONFLICT DO NOTHING RETURNING message_id"
    )
)
_TAKE_PENDING_RECEIPTS = Compiled.of(
    sa.text(f"DELETE FROM pending_receipts WHERE message_id = CAST(:message_id AS uuid) RETURNING {_RECEIPT_COLUMNS}")
)
_EXPIRE_PENDING_RECEIPTS = Compiled.of(
    sa.text(
        "DELETE FROM pending_receipts WHERE received_at < now() - make_interval(secs => :older_than) "
        "RETURNING message_id"
    )
)
# A provider's clock is not ours: a receipt is dated no earlier than the send it reports on, and no
# later than now and a little, so neither a 1970 nor a 2099 date can reorder the history.
_RECORD_RECEIPT_ENTRY = Compiled.of(
    sa.text(
        "INSERT INTO message_status_history (message_id, status, occurred_at, provider, provider_message_id, error) "
        "VALUES (CAST(:message_id AS uuid), :status, "
        "GREATEST(:sent_at, LEAST(:occurred_at, now() + make_interval(secs => :skew))), "
        ":provider, :provider_message_id, :error) ON CONFLICT DO NOTHING RETURNING message_id"
    )
)
_CREATE_CONVERSATION = Compiled.of(_create_conversation_statement())
_INSERT_MESSAGE = Compiled.of(_insert_message_statement())
_REFRESH_STATUS = Compiled.of(_refresh_status_statement())


def _history_entry(
    message_id: uuid.UUID,
    status: MessageStatus,
    occurred_at: datetime,
    *,
    attempts: int | None = None,
    provider: str | None = None,
    provider_message_id: str | None = None,
    error: str | None = None,
) -> dict[str, Any]:
    return {
        "message_id": str(message_id),
        "status": status.value,
        "occurred_at": occurred_at,
        "attempts": attempts,
        "provider": provider,
        "provider_message_id": provider_message_id,
        "error": error,
    }


def _message_params(
    message_id: uuid.UUID, account_id: uuid.UUID, direction: Direction, content: MessageContent
) -> dict[str, Any]:
    return {
        "id": str(message_id),
        "account_id": str(account_id),
        "direction": direction.value,
        "type": content.channel.value,
        "from_address": content.from_address,
        "to_address": content.to_address,
        "body": content.body,
        "attachments": Json(list(content.attachments)),
        "timestamp": content.timestamp,
    }


async def _record_message(
    connection: SAConnection, entry: dict[str, Any], content: MessageContent, message: dict[str, Any]
) -> WriteOutcome:
    """A send or a received message: its entry, then the message, which is most likely new."""
    if await _RECORD_ENTRY.scalar(connection, entry) is None:
        return WriteOutcome.REPLAYED
    await _store_message(connection, content, message)
    return WriteOutcome.CHANGED


async def _record_status(
    connection: SAConnection,
    entry: dict[str, Any],
    content: MessageContent,
    message: dict[str, Any],
    receipt_clock_skew_seconds: float,
) -> WriteOutcome:
    """A channel service's outcome: its message is most likely stored, but when this event overtook
    the send it carries, the message is stored from it. Receipts that came before it, waiting for the
    send's answer to be checked against, are settled now."""
    if await _RECORD_ENTRY.scalar(connection, entry) is None:
        return WriteOutcome.REPLAYED
    if await _refresh_status(connection, entry["message_id"]) is None:
        await _store_message(connection, content, message)
    for receipt in await _TAKE_PENDING_RECEIPTS.execute(connection, {"message_id": entry["message_id"]}):
        await _settle_receipt(connection, dict(receipt), receipt_clock_skew_seconds)
    return WriteOutcome.CHANGED


async def _record_receipt(
    connection: SAConnection, receipt: dict[str, Any], receipt_clock_skew_seconds: float
) -> WriteOutcome:
    """A receipt applies only to the send it reports on: until that send's answer is stored, it waits."""
    await _LOCK_MESSAGE_ALONE.scalar(connection, {"message_id": receipt["message_id"]})
    outcome = await _settle_receipt(connection, receipt, receipt_clock_skew_seconds)
    if outcome is not WriteOutcome.AWAITING_MESSAGE:
        return outcome
    if await _PARK_RECEIPT.scalar(connection, receipt) is None:
        return WriteOutcome.REPLAYED
    return outcome


async def _settle_receipt(
    connection: SAConnection, receipt: dict[str, Any], receipt_clock_skew_seconds: float
) -> WriteOutcome:
    """Apply `receipt` if it fits its send, dated no earlier than the send and no later than now (give
    or take the skew); AWAITING_MESSAGE if the send's answer is not stored yet. Takes the message's lock
    being held."""
    send = (await _SEND_OF.execute(connection, {"message_id": receipt["message_id"]}) or [None])[0]
    if send is None or (send.sent_provider_message_id is None and send.status == MessageStatus.QUEUED):
        return WriteOutcome.AWAITING_MESSAGE
    misfit = _receipt_misfit(send, receipt)
    if misfit is not None:
        log.warning(
            "delivery receipt changes nothing: %s",
            misfit,
            extra={
                "message_id": receipt["message_id"],
                "receipt_status": receipt["status"],
                "receipt_provider_message_id": receipt["provider_message_id"],
            },
        )
        return WriteOutcome.REJECTED
    entry = {**receipt, "sent_at": send.sent_at, "skew": receipt_clock_skew_seconds}
    if await _RECORD_RECEIPT_ENTRY.scalar(connection, entry) is None:
        return WriteOutcome.REPLAYED
    await _refresh_status(connection, receipt["message_id"])
    return WriteOutcome.CHANGED


def _receipt_misfit(send: RowProxy, receipt: dict[str, Any]) -> str | None:
    """Why `receipt` cannot be about `send`, or None if it can."""
    if send.direction != Direction.OUTBOUND:
        return "it names a message we received, not one we sent"
    if send.type not in _RECEIPT_CHANNELS[receipt["channel"]]:
        return f"it is a {receipt['channel']} receipt for an {send.type} message"
    if send.sent_provider_message_id is None:
        return "the send never reached the provider"
    if receipt["provider"] != send.sent_provider:
        return f"it comes from {receipt['provider']}, the message was sent through {send.sent_provider}"
    # SendGrid's events name the send's X-Message-Id followed by a suffix of their own.
    provider_id, sent_id = receipt["provider_message_id"], send.sent_provider_message_id
    if provider_id != sent_id and not provider_id.startswith(f"{sent_id}."):
        return f"its provider id {provider_id!r} is not the send's {sent_id!r}"
    return None


async def _store_message(connection: SAConnection, content: MessageContent, message: dict[str, Any]) -> None:
    conversation_id = await _find_or_create_conversation(connection, message["account_id"], content)
    if await _INSERT_MESSAGE.scalar(connection, {**message, "conversation_id": conversation_id}) is None:
        # The message was there after all: committed, since this transaction last looked, by a
        # writer that skipped the message lock. This statement's fresh snapshot sees it.
        await _refresh_status(connection, message["id"])


async def _refresh_status(connection: SAConnection, message_id: str) -> uuid.UUID | None:
    return await _REFRESH_STATUS.scalar(connection, {"message_id": message_id})


async def _find_or_create_conversation(connection: SAConnection, account_id: str, content: MessageContent) -> int:
    """Conversations group by participants within their account: the same two addresses in two
    accounts are two conversations."""
    participants = participants_of(content)
    key = {"account_id": account_id, "participant_key": participant_key(participants)}
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
