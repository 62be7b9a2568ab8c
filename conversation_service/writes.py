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
a receipt and the send it reports on cannot each miss the other.

A batch of events is one transaction of set-based statements: it takes its messages' locks in one
statement, in a fixed order so that two replicas cannot deadlock on them; adds the history entries of
all of them in one; finds the conversations of the new messages in one, locking their rows in id
order; inserts the messages and counts each conversation once in one. The events of one message are
applied in rounds, one of them a round, so that they end as if written one after the other. Receipts,
and the receipts that waited for a status, are rare enough to be written one by one.
"""

import json
import logging
from collections.abc import Sequence
from typing import Any, assert_never

import sqlalchemy as sa
from aiopg.sa import SAConnection
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
from conversation_service.database import Database, Prepared, Row
from conversation_service.handlers import WriteOutcome
from conversation_service.schema import (
    OUTCOME_FIRST,
    PARTICIPANT_SEPARATOR,
    SEND_FIRST,
    message_status_history,
    participant_key,
)

log = logging.getLogger(__name__)


_history = message_status_history


def participants_of(content: MessageContent) -> list[str]:
    """The gateway normalized both addresses (E.164 phones, lower-cased emails): equal means same."""
    return sorted({content.from_address, content.to_address})


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

    async def expire_pending_receipts(self, older_than_seconds: float) -> int:
        """Drop the receipts that waited longer than `older_than_seconds` for their send; how many.

        Their send never came (a forged or misdirected receipt, most likely): they could never apply.
        """
        result = await self._database.write(
            lambda connection: _EXPIRE_PENDING_RECEIPTS.execute(connection, {"older_than": older_than_seconds})
        )
        return len(result)

    async def _record_all(self, connection: SAConnection, events: Sequence[MessageEvent]) -> list[WriteOutcome]:
        outcomes = [WriteOutcome.REPLAYED] * len(events)
        for round_ in _rounds(events):
            recorded = await _record_round(connection, [events[i] for i in round_], self._receipt_clock_skew_seconds)
            for index, outcome in zip(round_, recorded, strict=True):
                outcomes[index] = outcome
        return outcomes


def _rounds(events: Sequence[MessageEvent]) -> list[list[int]]:
    """The events' positions in rounds: the first event of each message, then the second, and so on,
    each round in arrival order."""
    rounds: list[list[int]] = []
    seen: dict[Any, int] = {}
    for index, event in enumerate(events):
        earlier = seen.get(event.message_id, 0)
        seen[event.message_id] = earlier + 1
        if earlier == len(rounds):
            rounds.append([])
        rounds[earlier].append(index)
    return rounds


async def _record_round(
    connection: SAConnection, events: list[MessageEvent], receipt_clock_skew_seconds: float
) -> list[WriteOutcome]:
    """Events of distinct messages: their entries, then the messages that are new, then the receipts."""
    ids = [str(event.message_id) for event in events]
    await _LOCK_MESSAGES.scalar(connection, {"message_ids": sorted(ids)})
    outcomes = [WriteOutcome.REPLAYED] * len(events)
    entries = [index for index, event in enumerate(events) if not isinstance(event, DeliveryReported)]
    if entries:
        added = set(await _ADD_ENTRIES.scalar(connection, _columns([_entry_of(events[i]) for i in entries])) or ())
        recorded = [index for index in entries if ids[index] in added]
        for index in recorded:
            outcomes[index] = WriteOutcome.CHANGED
        # A channel service's outcome: its message is most likely stored, but when this event overtook
        # the send it carries, the message is stored from it.
        statuses = [ids[index] for index in recorded if isinstance(events[index], MessageStatusChanged)]
        refreshed = await _refresh_statuses(connection, statuses)
        await _store_messages(connection, [events[i] for i in recorded if ids[i] not in refreshed])
        if statuses:
            # Receipts that came before the status, waiting for the send's answer to be checked against.
            pending = await _TAKE_PENDING_RECEIPTS.execute(connection, {"message_ids": statuses})
            await _settle_receipts(connection, [receipt._asdict() for receipt in pending], receipt_clock_skew_seconds)
    receipts = [(index, event) for index, event in enumerate(events) if isinstance(event, DeliveryReported)]
    if receipts:
        recorded = await _record_receipts(
            connection, [_receipt_of(event) for _, event in receipts], receipt_clock_skew_seconds
        )
        for (index, _), outcome in zip(receipts, recorded, strict=True):
            outcomes[index] = outcome
    return outcomes


async def _refresh_statuses(connection: SAConnection, message_ids: list[str]) -> set[str]:
    """Derive the stored messages' status columns from their history again; the ids of those stored."""
    if not message_ids:
        return set()
    return set(await _REFRESH_STATUSES.scalar(connection, {"message_ids": message_ids}) or ())


async def _store_messages(connection: SAConnection, events: list[MessageEvent]) -> None:
    """Insert the events' messages, most likely new, each into its conversation."""
    if not events:
        return
    rows = [_message_of(event) for event in events]
    conversation_ids = await _conversations_of(connection, rows)
    for row in rows:
        row["conversation_id"] = conversation_ids[row["account_id"], row["participant_key"]]
    columns = _columns(rows, _MESSAGE_COLUMNS)
    inserted = set(await _INSERT_MESSAGES.scalar(connection, {**columns, "message_ids": columns["id"]}) or ())
    # A message that was there after all: committed, since this transaction last looked, by a writer
    # that skipped the message lock. This statement's fresh snapshot sees it.
    await _refresh_statuses(connection, [row["id"] for row in rows if row["id"] not in inserted])


async def _conversations_of(connection: SAConnection, rows: list[dict[str, Any]]) -> dict[tuple[str, str], int]:
    """Each row's conversation, by account and participants, created if it is new, in the rows' order.

    An INSERT draws its id from the sequence even when it then hits ON CONFLICT, so two writers racing
    to create one conversation (a send and its status, typically) would leave a gap in the ids clients
    see. Creators of one key take turns instead, and look again once it is theirs.
    """
    first_of: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        first_of.setdefault((row["account_id"], row["participant_key"]), row)
    keys = list(first_of)
    found = dict(zip(keys, await _find_conversations(connection, keys), strict=True))
    missing = [key for key in keys if found[key] is None]
    if missing:
        await _LOCK_PARTICIPANT_KEYS.scalar(connection, _key_columns(sorted(missing)))
        found |= zip(missing, await _find_conversations(connection, missing), strict=True)
        new = [key for key in missing if found[key] is None]
        if new:
            created = await _CREATE_CONVERSATIONS.scalar(
                connection,
                {**_key_columns(new), "last_message_ats": [first_of[key]["timestamp"] for key in new]},
            )
            found |= zip(new, created, strict=True)
    return found


async def _find_conversations(connection: SAConnection, keys: list[tuple[str, str]]) -> list[int | None]:
    return await _FIND_CONVERSATIONS.scalar(connection, _key_columns(keys))


def _key_columns(keys: list[tuple[str, str]]) -> dict[str, Any]:
    return {
        "account_ids": [account_id for account_id, _ in keys],
        "participant_keys": [key for _, key in keys],
        "separator": PARTICIPANT_SEPARATOR,
    }


def _columns(rows: list[dict[str, Any]], names: Sequence[str] | None = None) -> dict[str, list[Any]]:
    """Rows as the parallel arrays that an unnest() in the statement turns back into rows."""
    return {name: [row[name] for row in rows] for name in (names or rows[0])}


def _entry_of(event: MessageEvent) -> dict[str, Any]:
    entry = {
        "message_id": str(event.message_id),
        "occurred_at": event.occurred_at,
        "attempts": None,
        "provider": None,
        "provider_message_id": None,
        "error": None,
    }
    match event:
        case SendMessage():
            return {**entry, "status": MessageStatus.QUEUED.value}
        case MessageReceived():
            return {
                **entry,
                "status": MessageStatus.RECEIVED.value,
                "provider": event.provider,
                "provider_message_id": event.provider_message_id,
            }
        case MessageStatusChanged():
            return {
                **entry,
                "status": event.status.value,
                "attempts": event.attempts,
                "provider": event.provider,
                "provider_message_id": event.provider_message_id,
                "error": event.error,
            }
        case DeliveryReported():
            raise ValueError("a receipt enters the history only once checked against its send")
        case _:
            assert_never(event)


def _message_of(event: MessageEvent) -> dict[str, Any]:
    """The message an event stores: a send (or a status, which carries its send) or a received one."""
    match event:
        case SendMessage():
            return _message_row(event, event.account_id, Direction.OUTBOUND, event.content)
        case MessageReceived():
            return _message_row(event, event.account_id, Direction.INBOUND, event.content)
        case MessageStatusChanged():
            return _message_row(event, event.command.account_id, Direction.OUTBOUND, event.command.content)
        case DeliveryReported():
            raise ValueError("a receipt never stores a message")
        case _:
            assert_never(event)


def _message_row(event: MessageEvent, account_id: Any, direction: Direction, content: MessageContent) -> dict[str, Any]:
    return {
        "id": str(event.message_id),
        "account_id": str(account_id),
        "participant_key": participant_key(participants_of(content)),
        "direction": direction.value,
        "type": content.channel.value,
        "from_address": content.from_address,
        "to_address": content.to_address,
        "body": content.body,
        "attachments": json.dumps(list(content.attachments)),
        "timestamp": content.timestamp,
    }


def _receipt_of(event: DeliveryReported) -> dict[str, Any]:
    return {
        "message_id": str(event.message_id),
        "status": event.status.value,
        "channel": event.channel.value,
        "provider": event.provider,
        "provider_message_id": event.provider_message_id,
        "occurred_at": event.occurred_at,
        "error": event.error,
    }


def _first(column: sa.Column, order: tuple[Any, ...], *, present: bool = False) -> Any:
    values = pg.array_agg(aggregate_order_by(column, *order))
    return (values.filter(column.isnot(None)) if present else values)[1]


def _derived_statuses() -> str:
    """The status columns of the messages `:message_ids` as their history says, a row per message:
    SQL to be used as a subquery."""
    query = (
        sa.select(
            _history.c.message_id,
            _first(_history.c.status, OUTCOME_FIRST).label("status"),
            _first(_history.c.occurred_at, OUTCOME_FIRST).label("status_changed_at"),
            sa.func.coalesce(_first(_history.c.attempts, OUTCOME_FIRST, present=True), 0).label("attempts"),
            _first(_history.c.provider, SEND_FIRST, present=True).label("provider"),
            _first(_history.c.provider_message_id, SEND_FIRST, present=True).label("provider_message_id"),
            _first(_history.c.error, OUTCOME_FIRST).label("last_error"),
        )
        .where(_history.c.message_id == sa.func.any(sa.literal_column("CAST(:message_ids AS uuid[])")))
        .group_by(_history.c.message_id)
    )
    return str(query.compile(dialect=pg.dialect(), compile_kwargs={"literal_binds": True}))


_DERIVED_STATUSES = _derived_statuses()
# Derived from the message's history.
_STATUS_COLUMNS = ("status", "status_changed_at", "attempts", "provider", "provider_message_id", "last_error")
# Given by the event that stores the message.
_MESSAGE_COLUMNS = (
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
_MESSAGE_TYPES = ("uuid", "bigint", "uuid", "text", "text", "text", "text", "text", "jsonb", "timestamptz")


# psycopg2 writes a list as an ARRAY of its elements' type, which EXECUTE coerces only into text[]
# (a cast to text is an assignment cast): so every array goes in as text[], and the SQL casts it.
_ARRAY = pg.ARRAY(sa.Text)
_TIMESTAMP = sa.DateTime(timezone=True)


def _statement(sql: str, *, arrays: Sequence[str] = (), **scalars: sa.types.TypeEngine) -> Prepared:
    """A write's statement, its parameters typed: the `arrays`, and the `scalars` in their types."""
    types = {name: _ARRAY for name in arrays} | scalars
    return Prepared.of(sa.text(sql).bindparams(*(sa.bindparam(name, type_=type_) for name, type_ in types.items())))


def _unnest(columns: Sequence[str], types: Sequence[str]) -> str:
    return ", ".join(f"CAST(:{name} AS {type_}[])" for name, type_ in zip(columns, types, strict=True))


def _insert_new(table: str, columns: Sequence[str], types: Sequence[str]) -> Prepared:
    """Insert the rows that the parallel arrays `columns` hold into `table`, but those already there;
    returns the ids of the messages whose row was added, NULL if none was."""
    return _statement(
        f"WITH added AS (INSERT INTO {table} ({', '.join(columns)}) "
        f"SELECT * FROM unnest({_unnest(columns, types)}) "
        "ON CONFLICT DO NOTHING RETURNING message_id) "
        "SELECT array_agg(CAST(message_id AS text)) FROM added",
        arrays=columns,
    )


# The lock every writer of a message takes first. The whole batch's in one statement, the ids sorted
# by the caller: unnest() yields them in that order.
_LOCK_MESSAGES = _statement(
    "SELECT count(pg_advisory_xact_lock(hashtextextended(id, 0))) FROM unnest(CAST(:message_ids AS text[])) AS id",
    arrays=("message_ids",),
)
_ENTRY_COLUMNS = ("message_id", "status", "occurred_at", "attempts", "provider", "provider_message_id", "error")
_ENTRY_TYPES = ("uuid", "text", "timestamptz", "integer", "text", "text", "text")
# An entry whose status the message has already recorded is a replay: it adds nothing.
_ADD_ENTRIES = _insert_new("message_status_history", _ENTRY_COLUMNS, _ENTRY_TYPES)
# `updated_at` moves only if something visible changed (an entry that ranks below the status changes
# nothing). Returns the ids of the messages stored, NULL if none is.
_REFRESH_STATUSES = _statement(
    "WITH refreshed AS (UPDATE messages SET "
    + ", ".join(f"{name} = derived.{name}" for name in _STATUS_COLUMNS)
    + ", updated_at = CASE WHEN ("
    + ", ".join(f"messages.{name}" for name in _STATUS_COLUMNS)
    + ") IS DISTINCT FROM ("
    + ", ".join(f"derived.{name}" for name in _STATUS_COLUMNS)
    + ") THEN now() ELSE messages.updated_at END "
    f"FROM ({_DERIVED_STATUSES}) AS derived WHERE messages.id = derived.message_id RETURNING messages.id) "
    "SELECT array_agg(CAST(id AS text)) FROM refreshed",
    arrays=("message_ids",),
)
_KEYS = "unnest(CAST(:account_ids AS uuid[]), CAST(:participant_keys AS text[]))"
# Each key's conversation id, or NULL, in the keys' order. Their rows are locked here, in id order,
# as the batch will update them: two batches cannot each hold a row the other waits for.
_FIND_CONVERSATIONS = _statement(
    f"SELECT array_agg(found.id ORDER BY keys.n) "
    f"FROM {_KEYS} WITH ORDINALITY AS keys(account_id, participant_key, n) "
    "LEFT JOIN (SELECT id, account_id, participant_key FROM conversations "
    f"WHERE (account_id, participant_key) IN (SELECT * FROM {_KEYS}) ORDER BY id FOR NO KEY UPDATE) AS found "
    "USING (account_id, participant_key)",
    arrays=("account_ids", "participant_keys"),
)
# Per account and participants: creators of one conversation take turns, of different ones do not.
# The caller sorts the keys, so that two batches take them in one order.
_LOCK_PARTICIPANT_KEYS = _statement(
    "SELECT count(pg_advisory_xact_lock("
    "hashtextextended(CAST(account_id AS text) || :separator || participant_key, 0))) "
    f"FROM {_KEYS} AS keys(account_id, participant_key)",
    arrays=("account_ids", "participant_keys"),
    separator=sa.Text(),
)
# The new conversations' ids, in the keys' order (which is the ids' order too), their participants
# inserted by the same statement. ON CONFLICT keeps it safe even against a writer that skipped the
# lock: it then returns the row the other one committed.
_CREATE_CONVERSATIONS = _statement(
    "WITH new AS (SELECT * FROM unnest(CAST(:account_ids AS uuid[]), CAST(:participant_keys AS text[]), "
    "CAST(:last_message_ats AS timestamptz[])) "
    "WITH ORDINALITY AS new(account_id, participant_key, last_message_at, n)), "
    "created AS (INSERT INTO conversations (account_id, participant_key, last_message_at) "
    "SELECT account_id, participant_key, last_message_at FROM new ORDER BY n "
    "ON CONFLICT (account_id, participant_key) DO UPDATE SET participant_key = excluded.participant_key "
    "RETURNING id, account_id, participant_key), "
    "participants AS (INSERT INTO conversation_participants (conversation_id, address) "
    "SELECT id, unnest(string_to_array(participant_key, :separator)) FROM created ON CONFLICT DO NOTHING) "
    "SELECT array_agg(created.id ORDER BY new.n) FROM new JOIN created USING (account_id, participant_key)",
    arrays=("account_ids", "participant_keys", "last_message_ats"),
    separator=sa.Text(),
)
# Insert the messages, their status derived from their history, unless they are there; and count the
# ones that were not in their conversations, once per conversation: the count, the channels (in the
# order they first came) and the latest message (of the latest timestamp; of equal ones, the last
# stored). Messages go in in the batch's order, so that `seq` orders equal timestamps by arrival.
# Returns the ids of the messages inserted, NULL if none was.
_INSERT_MESSAGES = _statement(
    f"WITH batch AS (SELECT * FROM unnest({_unnest(_MESSAGE_COLUMNS, _MESSAGE_TYPES)}) "
    f"WITH ORDINALITY AS batch({', '.join(_MESSAGE_COLUMNS)}, n)), "
    f"inserted AS (INSERT INTO messages ({', '.join(_MESSAGE_COLUMNS)}, {', '.join(_STATUS_COLUMNS)}) "
    f"SELECT {', '.join(f'batch.{name}' for name in _MESSAGE_COLUMNS)}, "
    f"{', '.join(f'derived.{name}' for name in _STATUS_COLUMNS)} "
    f"FROM batch JOIN ({_DERIVED_STATUSES}) AS derived ON derived.message_id = batch.id ORDER BY batch.n "
    'ON CONFLICT DO NOTHING RETURNING id, conversation_id, type, "timestamp", seq), '
    "counted AS (SELECT conversation_id, count(*) AS added, "
    '(array_agg(id ORDER BY "timestamp" DESC, seq DESC))[1] AS latest_id, max("timestamp") AS latest_at, '
    "array_agg(type ORDER BY seq) AS types FROM inserted GROUP BY conversation_id), "
    "updated AS (UPDATE conversations SET message_count = conversations.message_count + counted.added, "
    "channels = conversations.channels || ARRAY(SELECT type "
    "FROM unnest(counted.types) WITH ORDINALITY AS t(type, n) "
    "WHERE NOT type = ANY(conversations.channels) GROUP BY type ORDER BY min(n)), "
    "last_message_id = CASE WHEN counted.latest_at >= conversations.last_message_at THEN counted.latest_id "
    "ELSE conversations.last_message_id END, "
    "last_message_at = GREATEST(conversations.last_message_at, counted.latest_at), updated_at = now() "
    "FROM counted WHERE conversations.id = counted.conversation_id) "
    "SELECT array_agg(CAST(id AS text)) FROM inserted",
    arrays=(*_MESSAGE_COLUMNS, "message_ids"),
)


# Which channels' messages a receipt of each channel can be about: Twilio's callback does not say MMS.
_RECEIPT_CHANNELS = {
    Channel.SMS.value: {Channel.SMS.value, Channel.MMS.value},
    Channel.MMS.value: {Channel.SMS.value, Channel.MMS.value},
    Channel.EMAIL.value: {Channel.EMAIL.value},
}

# The sends the receipts report on: a row per message stored, named by its id.
_SENDS_OF = _statement(
    "SELECT CAST(m.id AS text) AS message_id, m.direction, m.type, m.status, s.provider AS sent_provider, "
    "s.provider_message_id AS sent_provider_message_id, s.occurred_at AS sent_at "
    "FROM messages m LEFT JOIN message_status_history s ON s.message_id = m.id AND s.status = 'sent' "
    "WHERE m.id = ANY(CAST(:message_ids AS uuid[]))",
    arrays=("message_ids",),
)
_RECEIPT_COLUMNS = ("message_id", "status", "channel", "provider", "provider_message_id", "occurred_at", "error")
_RECEIPT_TYPES = ("uuid", "text", "text", "text", "text", "timestamptz", "text")
# A receipt already waiting for its send is a replay.
_PARK_RECEIPTS = _insert_new("pending_receipts", _RECEIPT_COLUMNS, _RECEIPT_TYPES)
_TAKE_PENDING_RECEIPTS = _statement(
    f"DELETE FROM pending_receipts WHERE message_id = ANY(CAST(:message_ids AS uuid[])) "
    f"RETURNING CAST(message_id AS text) AS message_id, {', '.join(_RECEIPT_COLUMNS[1:])}",
    arrays=("message_ids",),
)
_EXPIRE_PENDING_RECEIPTS = _statement(
    "DELETE FROM pending_receipts WHERE received_at < now() - make_interval(secs => :older_than) RETURNING message_id",
    older_than=sa.Float(),
)
_RECEIPT_ENTRY_COLUMNS = ("message_id", "status", "occurred_at", "sent_at", "provider", "provider_message_id", "error")
_RECEIPT_ENTRY_TYPES = ("uuid", "text", "timestamptz", "timestamptz", "text", "text", "text")
# A provider's clock is not ours: a receipt is dated no earlier than the send it reports on, and no
# later than now and a little, so neither a 1970 nor a 2099 date can reorder the history. Returns the
# (message id, status) of each entry added, NULL if none was.
_RECORD_RECEIPT_ENTRIES = _statement(
    f"WITH receipts AS (SELECT * FROM unnest({_unnest(_RECEIPT_ENTRY_COLUMNS, _RECEIPT_ENTRY_TYPES)}) "
    f"AS receipts({', '.join(_RECEIPT_ENTRY_COLUMNS)})), "
    "added AS (INSERT INTO message_status_history (message_id, status, occurred_at, provider, provider_message_id, "
    "error) SELECT message_id, status, GREATEST(sent_at, LEAST(occurred_at, now() + make_interval(secs => :skew))), "
    "provider, provider_message_id, error FROM receipts ON CONFLICT DO NOTHING RETURNING message_id, status) "
    "SELECT array_agg(ARRAY[CAST(message_id AS text), status]) FROM added",
    arrays=_RECEIPT_ENTRY_COLUMNS,
    skew=sa.Float(),
)


async def _record_receipts(
    connection: SAConnection, receipts: list[dict[str, Any]], receipt_clock_skew_seconds: float
) -> list[WriteOutcome]:
    """A receipt applies only to the send it reports on: until that send's answer is stored, it waits.
    Receipts of distinct messages, whose locks are held."""
    outcomes = await _settle_receipts(connection, receipts, receipt_clock_skew_seconds)
    awaiting = [index for index, outcome in enumerate(outcomes) if outcome is WriteOutcome.AWAITING_MESSAGE]
    if awaiting:
        columns = _columns([receipts[index] for index in awaiting], _RECEIPT_COLUMNS)
        parked = set(await _PARK_RECEIPTS.scalar(connection, columns) or ())
        for index in awaiting:
            if receipts[index]["message_id"] not in parked:
                outcomes[index] = WriteOutcome.REPLAYED
    return outcomes


async def _settle_receipts(
    connection: SAConnection, receipts: list[dict[str, Any]], receipt_clock_skew_seconds: float
) -> list[WriteOutcome]:
    """Apply each receipt that fits its send, dated no earlier than the send and no later than now (give
    or take the skew); AWAITING_MESSAGE for one whose send's answer is not stored yet. The messages'
    locks are held."""
    if not receipts:
        return []
    ids = [receipt["message_id"] for receipt in receipts]
    sends = {send.message_id: send for send in await _SENDS_OF.execute(connection, {"message_ids": ids})}
    # A receipt that fits its send is a replay unless its entry is added.
    outcomes = [WriteOutcome.REPLAYED] * len(receipts)
    fitting: list[int] = []
    entries: list[dict[str, Any]] = []
    for index, receipt in enumerate(receipts):
        send = sends.get(receipt["message_id"])
        if send is None or (send.sent_provider_message_id is None and send.status == MessageStatus.QUEUED):
            outcomes[index] = WriteOutcome.AWAITING_MESSAGE
            continue
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
            outcomes[index] = WriteOutcome.REJECTED
            continue
        fitting.append(index)
        entries.append({**receipt, "sent_at": send.sent_at})
    if fitting:
        parameters = {**_columns(entries, _RECEIPT_ENTRY_COLUMNS), "skew": receipt_clock_skew_seconds}
        added = {
            (message_id, status)
            for message_id, status in await _RECORD_RECEIPT_ENTRIES.scalar(connection, parameters) or ()
        }
        await _refresh_statuses(connection, sorted({message_id for message_id, _ in added}))
        for index in fitting:
            if (receipts[index]["message_id"], receipts[index]["status"]) in added:
                outcomes[index] = WriteOutcome.CHANGED
    return outcomes


def _receipt_misfit(send: Row, receipt: dict[str, Any]) -> str | None:
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
