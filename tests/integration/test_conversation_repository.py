"""The repository on the real PostgreSQL: what each event stores, and that replays and reorderings change nothing."""

import asyncio
import itertools
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

import psycopg2
import pytest
import sqlalchemy as sa
from aiopg.sa import Engine, create_engine
from psycopg2.extensions import make_dsn, parse_dsn

from common.accounts import DEVELOPMENT_ACCOUNT_ID
from common.contracts import (
    EMAIL_PROVIDER,
    SMS_PROVIDER,
    Channel,
    DeliveryReported,
    MessageEvent,
    MessageReceived,
    MessageStatus,
    MessageStatusChanged,
    SendMessage,
)
from common.conversations import ConversationList, ConversationView, MessageDetail, MessageList, MessageView
from common.errors import InvalidRequest, NotFound, ServiceUnavailable
from conversation_service.database import connect
from conversation_service.handlers import WriteOutcome
from conversation_service.migrate import create_roles_and_database, drop_database
from conversation_service.reads import conversation_object, message_object
from conversation_service.repository import MessageRepository
from conversation_service.schema import (
    accounts,
    conversation_participants,
    conversations,
    message_status_history,
    messages,
    pending_receipts,
)
from conversation_service.settings import MigrationSettings
from tests.factories import (
    OUR_PHONE,
    START,
    THEIR_PHONE,
    delivery_reported,
    eventually,
    message_received,
    send_message,
    status_changed,
)

pytestmark = pytest.mark.integration

ItemT = TypeVar("ItemT")


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[Engine]:
    async with connect(database_url, pool_size=20) as engine:
        yield engine


@pytest.fixture
def repository(engine: Engine) -> MessageRepository:
    return MessageRepository(engine, retry_max_interval=0.1)


async def store(repository: MessageRepository, event: MessageEvent) -> WriteOutcome:
    writes = {
        SendMessage: repository.store_outbound,
        MessageReceived: repository.store_inbound,
        MessageStatusChanged: repository.store_status,
        DeliveryReported: repository.store_receipt,
    }
    return await writes[type(event)](event)  # type: ignore[operator]


async def rows(engine: Engine, table: sa.Table, *order_by: sa.Column) -> list[dict[str, Any]]:
    async with engine.acquire() as connection:
        result = await connection.execute(sa.select(table).order_by(*order_by))
        return [dict(row) for row in await result.fetchall()]


async def snapshot(engine: Engine) -> list[list[dict[str, Any]]]:
    return [
        await rows(engine, conversations, conversations.c.id),
        await rows(engine, conversation_participants, *conversation_participants.c),
        await rows(engine, messages, messages.c.seq),
        await rows(engine, message_status_history, *message_status_history.primary_key),
    ]


@dataclass(frozen=True)
class Page(Generic[ItemT]):
    items: list[ItemT]
    next_cursor: str | None


# The repository answers the JSON bodies clients get; these read them back through the contract.
async def read_conversations(
    repository: MessageRepository, account_id: uuid.UUID, **page: Any
) -> Page[ConversationView]:
    answer = ConversationList.model_validate_json(await repository.list_conversations(account_id, **page))
    return Page(answer.conversations, answer.next_cursor)


async def read_messages(
    repository: MessageRepository, account_id: uuid.UUID, conversation_id: int, **page: Any
) -> Page[MessageView]:
    answer = MessageList.model_validate_json(await repository.list_messages(account_id, conversation_id, **page))
    return Page(answer.messages, answer.next_cursor)


async def read_message(repository: MessageRepository, account_id: uuid.UUID, message_id: uuid.UUID) -> MessageDetail:
    return MessageDetail.model_validate_json(await repository.get_message(account_id, message_id))


async def message_row(engine: Engine, message_id: uuid.UUID) -> dict[str, Any]:
    """The message's stored facts; its `view`, derived from them, has a test of its own."""
    (row,) = [row for row in await rows(engine, messages) if row["id"] == message_id]
    return {name: value for name, value in row.items() if name != "view"}


async def test_a_send_is_stored_queued_in_a_new_conversation(repository: MessageRepository, engine: Engine) -> None:
    command = send_message(Channel.MMS, attachments=("https://example.com/a.png",))

    assert await repository.store_outbound(command) is WriteOutcome.CHANGED

    (conversation,) = await rows(engine, conversations)
    assert conversation["id"] == 1
    assert conversation["message_count"] == 1
    assert conversation["channels"] == ["mms"]
    assert conversation["last_message_id"] == command.message_id
    assert conversation["last_message_at"] == START
    assert [row["address"] for row in await rows(engine, conversation_participants)] == [OUR_PHONE, THEIR_PHONE]
    message = await message_row(engine, command.message_id)
    assert message | {"seq": None, "created_at": None, "updated_at": None} == {
        "id": command.message_id,
        "seq": None,
        "conversation_id": 1,
        "account_id": DEVELOPMENT_ACCOUNT_ID,
        "direction": "outbound",
        "type": "mms",
        "from_address": OUR_PHONE,
        "to_address": THEIR_PHONE,
        "body": "text message",
        "attachments": ["https://example.com/a.png"],
        "status": "queued",
        "provider": None,
        "provider_message_id": None,
        "attempts": 0,
        "last_error": None,
        "timestamp": START,
        "created_at": None,
        "updated_at": None,
        "status_changed_at": command.occurred_at,
    }


async def test_a_received_message_keeps_its_provider_ids(repository: MessageRepository, engine: Engine) -> None:
    event = message_received(provider_message_id="message-7")

    assert await repository.store_inbound(event) is WriteOutcome.CHANGED

    message = await message_row(engine, event.message_id)
    assert message["direction"] == "inbound"
    assert message["status"] == "received"
    assert (message["provider"], message["provider_message_id"]) == ("sms-provider", "message-7")
    assert (message["from_address"], message["to_address"]) == (THEIR_PHONE, OUR_PHONE)
    (entry,) = await rows(engine, message_status_history)
    assert (entry["status"], entry["occurred_at"], entry["provider_message_id"]) == (
        "received",
        event.occurred_at,
        "message-7",
    )


async def test_both_directions_share_one_conversation_and_another_pair_gets_the_next_id(
    repository: MessageRepository,
) -> None:
    await repository.store_outbound(send_message(at=START))
    await repository.store_inbound(message_received(at=START + timedelta(minutes=1)))
    await repository.store_outbound(send_message(Channel.MMS, at=START + timedelta(minutes=2)))
    await repository.store_outbound(send_message(to_address="+13125550000", at=START + timedelta(minutes=3)))

    page = await read_conversations(repository, DEVELOPMENT_ACCOUNT_ID, limit=10)

    assert [(c.id, c.participants, c.channels, c.message_count) for c in page.items] == [
        (2, ["+12016661234", "+13125550000"], ["sms"], 1),
        (1, [OUR_PHONE, THEIR_PHONE], ["mms", "sms"], 3),
    ]


async def test_replaying_every_event_changes_nothing(repository: MessageRepository, engine: Engine) -> None:
    command = send_message()
    events: list[MessageEvent] = [
        command,
        message_received(at=START + timedelta(seconds=1)),
        status_changed(command, MessageStatus.SENT, provider_message_id="SM1"),
        delivery_reported(command, provider_message_id="SM1"),
        send_message(Channel.MMS, at=START + timedelta(seconds=2)),
    ]
    for event in events:
        assert await store(repository, event) is WriteOutcome.CHANGED
    before = await snapshot(engine)

    for event in events:
        assert await store(repository, event) is WriteOutcome.REPLAYED

    assert await snapshot(engine) == before
    assert before[0][0]["message_count"] == 3
    assert len(before[3]) == 5


@pytest.mark.parametrize(
    ("statuses", "final"),
    [
        ([MessageStatus.SENT], "sent"),
        ([MessageStatus.SENT, MessageStatus.FAILED], "failed"),
        ([MessageStatus.FAILED, MessageStatus.SENT], "failed"),
        ([MessageStatus.DELIVERED, MessageStatus.SENT], "delivered"),
        ([MessageStatus.FAILED, MessageStatus.DELIVERED], "failed"),
    ],
)
async def test_a_status_only_moves_forward_whatever_the_order(
    repository: MessageRepository, engine: Engine, statuses: list[MessageStatus], final: str
) -> None:
    command = send_message()
    await repository.store_outbound(command)
    for attempt, status in enumerate(statuses, start=1):
        await repository.store_status(status_changed(command, status, attempts=attempt))

    # The send command redelivered late must not take the status back to queued.
    assert await repository.store_outbound(command) is WriteOutcome.REPLAYED

    message = await message_row(engine, command.message_id)
    assert message["status"] == final
    assert message["attempts"] == statuses.index(MessageStatus(final)) + 1


async def test_a_failure_records_attempts_and_the_providers_error(
    repository: MessageRepository, engine: Engine
) -> None:
    command = send_message()
    await repository.store_outbound(command)
    failure = status_changed(command, MessageStatus.FAILED, attempts=3, error="HTTP 500 from the provider")

    assert await repository.store_status(failure) is WriteOutcome.CHANGED

    message = await message_row(engine, command.message_id)
    assert (message["status"], message["attempts"], message["last_error"]) == (
        "failed",
        3,
        "HTTP 500 from the provider",
    )
    assert message["status_changed_at"] == failure.occurred_at
    assert message["updated_at"] >= message["created_at"]


async def test_a_status_that_overtakes_its_send_stores_the_message(
    repository: MessageRepository, engine: Engine
) -> None:
    command = send_message()
    sent = status_changed(command, MessageStatus.SENT, attempts=2, provider_message_id="SM42")

    assert await repository.store_status(sent) is WriteOutcome.CHANGED
    # Its own history entry is new, but the message keeps the status it got from the sent.
    assert await repository.store_outbound(command) is WriteOutcome.CHANGED

    message = await message_row(engine, command.message_id)
    assert (message["status"], message["attempts"], message["provider_message_id"]) == ("sent", 2, "SM42")
    assert (message["direction"], message["body"]) == ("outbound", "text message")
    (conversation,) = await rows(engine, conversations)
    assert conversation["message_count"] == 1


async def test_the_latest_message_is_the_one_with_the_latest_timestamp_not_the_last_stored(
    repository: MessageRepository,
) -> None:
    newer = send_message(at=START + timedelta(hours=1), body="newer")
    await repository.store_outbound(newer)
    await repository.store_outbound(send_message(at=START, body="older"))

    (conversation,) = (await read_conversations(repository, DEVELOPMENT_ACCOUNT_ID, limit=10)).items

    assert conversation.message_count == 2
    assert conversation.last_message is not None and conversation.last_message.id == newer.message_id
    assert conversation.last_message_at == newer.content.timestamp


async def test_concurrent_writers_create_one_conversation_and_count_every_message(
    repository: MessageRepository, engine: Engine
) -> None:
    commands = [send_message(at=START + timedelta(seconds=i)) for i in range(10)]
    replies = [message_received(at=START, provider_message_id=f"m-{i}") for i in range(10)]

    await asyncio.gather(
        *(repository.store_outbound(c) for c in commands),
        *(repository.store_inbound(r) for r in replies),
        # Without provider ids: the sends may not share one (provider, provider_message_id).
        *(repository.store_status(status_changed(c, provider_message_id=None)) for c in commands),
    )

    (conversation,) = await rows(engine, conversations)
    assert conversation["message_count"] == 20
    assert conversation["last_message_id"] == commands[-1].message_id
    stored = await rows(engine, messages)
    assert len(stored) == 20
    assert {row["status"] for row in stored if row["direction"] == "outbound"} == {"sent"}


async def test_messages_page_through_oldest_first_each_exactly_once(repository: MessageRepository) -> None:
    # Equal timestamps are ordered by arrival, and must not be skipped or repeated at a page edge.
    commands = [send_message(at=START + timedelta(minutes=i // 2)) for i in range(7)]
    for command in reversed(commands[4:]):
        await repository.store_outbound(command)
    for command in commands[:4]:
        await repository.store_outbound(command)

    seen: list[uuid.UUID] = []
    cursor: str | None = None
    pages = 0
    while True:
        page = await read_messages(repository, DEVELOPMENT_ACCOUNT_ID, 1, limit=3, cursor=cursor)
        seen += [message.id for message in page.items]
        pages += 1
        if page.next_cursor is None:
            break
        cursor = page.next_cursor

    assert pages == 3
    expected = [c.message_id for c in commands[:4]] + [commands[5].message_id, commands[4].message_id]
    expected += [commands[6].message_id]
    assert seen == expected


async def test_conversations_page_through_latest_activity_first_each_exactly_once(
    repository: MessageRepository,
) -> None:
    partners = [f"+1312555{i:04d}" for i in range(5)]
    for i, partner in enumerate(partners):
        # Two conversations share a latest time: the id orders them.
        await repository.store_outbound(send_message(to_address=partner, at=START + timedelta(minutes=min(i, 3))))

    first = await read_conversations(repository, DEVELOPMENT_ACCOUNT_ID, limit=2)
    second = await read_conversations(repository, DEVELOPMENT_ACCOUNT_ID, limit=2, cursor=first.next_cursor)
    third = await read_conversations(repository, DEVELOPMENT_ACCOUNT_ID, limit=2, cursor=second.next_cursor)

    assert [c.id for c in first.items + second.items + third.items] == [5, 4, 3, 2, 1]
    assert third.next_cursor is None


async def test_reading_what_is_not_there(repository: MessageRepository) -> None:
    await repository.store_outbound(send_message())

    with pytest.raises(NotFound):
        await read_messages(repository, DEVELOPMENT_ACCOUNT_ID, 2, limit=10)
    with pytest.raises(NotFound):
        await read_message(repository, DEVELOPMENT_ACCOUNT_ID, uuid.uuid4())
    with pytest.raises(InvalidRequest):
        await read_messages(repository, DEVELOPMENT_ACCOUNT_ID, 1, limit=10, cursor="bogus")


def drop_connections_of(database_url: str) -> None:
    """What a database restart does to a pool: every connection it holds is dead."""
    with psycopg2.connect(database_url) as admin, admin.cursor() as cursor:
        cursor.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        (terminated,) = cursor.fetchone()
    admin.close()
    assert terminated >= 1


async def test_a_write_survives_the_database_dropping_its_connections(
    repository: MessageRepository, database_url: str
) -> None:
    await repository.store_outbound(send_message())
    drop_connections_of(database_url)

    command = send_message(at=START + timedelta(minutes=1))
    assert await repository.store_outbound(command) is WriteOutcome.CHANGED

    assert (await read_message(repository, DEVELOPMENT_ACCOUNT_ID, command.message_id)).status == "queued"


async def test_a_read_survives_the_database_dropping_its_connections(
    repository: MessageRepository, database_url: str
) -> None:
    command = send_message()
    await repository.store_outbound(command)
    # Read once first, so that the connection dropped is one the read's statement was prepared on.
    await read_message(repository, DEVELOPMENT_ACCOUNT_ID, command.message_id)
    drop_connections_of(database_url)

    assert (await read_message(repository, DEVELOPMENT_ACCOUNT_ID, command.message_id)).id == command.message_id


async def test_a_database_that_stays_away_is_service_unavailable_for_reads_and_waited_out_by_writes(
    database_settings: MigrationSettings,
) -> None:
    # A database of this test's own, dropped under the pool: no other test loses its connections.
    gone = f"{parse_dsn(database_settings.database_url)['dbname']}_gone_{uuid.uuid4().hex[:8]}"
    doomed = database_settings.model_copy(
        update={
            name: make_dsn(**{**parse_dsn(getattr(database_settings, name)), "dbname": gone})
            for name in ("database_url", "database_owner_url")
        }
    )
    create_roles_and_database(doomed)
    async with create_engine(doomed.database_url) as engine:
        repository = MessageRepository(engine, retry_max_interval=0.05, read_retry_seconds=0.3)
        drop_database(doomed)

        with pytest.raises(ServiceUnavailable):
            await read_conversations(repository, DEVELOPMENT_ACCOUNT_ID, limit=10)
        # The consumer holds the message unacked meanwhile: a nack would count toward the queue's
        # delivery limit, and a long outage would dead-letter good events.
        write = asyncio.create_task(repository.store_outbound(send_message()))
        done, _ = await asyncio.wait({write}, timeout=1.0)
        assert not done
        write.cancel()
        done, _ = await asyncio.wait({write}, timeout=1.0)
        assert done == {write} and write.cancelled()


async def test_a_status_racing_its_send_into_the_database_is_not_lost(
    repository: MessageRepository, engine: Engine
) -> None:
    await repository.store_outbound(send_message(body="opens conversation 1"))
    command = send_message(at=START + timedelta(minutes=1))
    async with engine.acquire() as sending:
        # The send's transaction has inserted the row but not committed when the status arrives.
        transaction = await sending.begin()
        await sending.execute(
            messages.insert().values(
                id=command.message_id,
                conversation_id=1,
                account_id=command.account_id,
                direction="outbound",
                type="sms",
                from_address=OUR_PHONE,
                to_address=THEIR_PHONE,
                body="text message",
                status="queued",
                timestamp=command.content.timestamp,
            )
        )
        status = asyncio.create_task(repository.store_status(status_changed(command, MessageStatus.SENT)))
        await eventually(
            lambda: _a_backend_waits_for_a_lock(engine), "a write to wait for the open transaction", timeout=10.0
        )
        await transaction.commit()

        assert await asyncio.wait_for(status, timeout=10) is WriteOutcome.CHANGED

    assert (await message_row(engine, command.message_id))["status"] == "sent"


async def _a_backend_waits_for_a_lock(engine: Engine) -> bool:
    query = sa.text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    async with engine.acquire() as connection:
        return await connection.scalar(query) > 0


async def test_conversations_created_by_racing_writers_get_ids_without_gaps(
    repository: MessageRepository, engine: Engine
) -> None:
    # A send and its status reach the service at once for a conversation nobody has written to yet.
    for i in range(8):
        command = send_message(to_address=f"+1312555{i:04d}")
        await asyncio.gather(
            # Without provider ids: the sends may not share one (provider, provider_message_id).
            repository.store_status(status_changed(command, provider_message_id=None)),
            repository.store_outbound(command),
        )

    assert [row["id"] for row in await rows(engine, conversations, conversations.c.id)] == list(range(1, 9))


def lifecycle(command: SendMessage) -> dict[str, MessageEvent]:
    """A send's three reports, each a little later than the last, as they happen in the world."""
    sent = status_changed(command, MessageStatus.SENT, attempts=2, provider_message_id="SM42")
    delivered = delivery_reported(command, provider_message_id="SM42")
    return {
        "queued": command,
        "sent": sent.model_copy(update={"occurred_at": command.occurred_at + timedelta(seconds=1)}),
        "delivered": delivered.model_copy(update={"occurred_at": command.occurred_at + timedelta(seconds=5)}),
    }


@pytest.mark.parametrize("order", list(itertools.permutations(["queued", "sent", "delivered"])), ids="-".join)
async def test_every_arrival_order_ends_delivered_with_the_full_history(
    repository: MessageRepository, engine: Engine, order: tuple[str, ...]
) -> None:
    command = send_message()
    events = lifecycle(command)

    outcomes = [await store(repository, events[name]) for name in order]

    # A receipt that arrives before the send's answer waits for it, to be checked against it.
    expected = {name: WriteOutcome.CHANGED for name in order}
    if order.index("delivered") < order.index("sent"):
        expected["delivered"] = WriteOutcome.AWAITING_MESSAGE
    assert outcomes == [expected[name] for name in order]
    message = await read_message(repository, DEVELOPMENT_ACCOUNT_ID, command.message_id)
    assert (message.status, message.attempts, message.provider, message.provider_message_id, message.last_error) == (
        "delivered",
        2,
        "sms-provider",
        "SM42",
        None,
    )
    assert message.status_changed_at == events["delivered"].occurred_at
    assert [(change.status, change.at, change.attempts, change.provider_message_id) for change in message.history] == [
        ("queued", command.occurred_at, None, None),
        ("sent", events["sent"].occurred_at, 2, "SM42"),
        ("delivered", events["delivered"].occurred_at, None, "SM42"),
    ]
    (conversation,) = await rows(engine, conversations)
    assert conversation["message_count"] == 1


async def test_a_receipt_for_a_message_never_stored_waits_apart_and_expires(
    repository: MessageRepository, engine: Engine
) -> None:
    receipt = delivery_reported(send_message(), MessageStatus.FAILED, error="error 30003")

    assert await repository.store_receipt(receipt) is WriteOutcome.AWAITING_MESSAGE
    assert await repository.store_receipt(receipt) is WriteOutcome.REPLAYED

    assert await rows(engine, messages) == []
    assert await rows(engine, conversations) == []
    assert await rows(engine, message_status_history) == []
    (waiting,) = await rows(engine, pending_receipts)
    assert (waiting["message_id"], waiting["status"], waiting["error"]) == (receipt.message_id, "failed", "error 30003")
    with pytest.raises(NotFound):
        await read_message(repository, DEVELOPMENT_ACCOUNT_ID, receipt.message_id)

    assert await repository.expire_pending_receipts(older_than_seconds=3600) == 0
    assert await repository.expire_pending_receipts(older_than_seconds=0) == 1
    assert await rows(engine, pending_receipts) == []


async def test_a_failed_receipt_after_sent_fails_the_message_and_keeps_the_sends_attempts(
    repository: MessageRepository, engine: Engine
) -> None:
    command = send_message()
    await repository.store_outbound(command)
    await repository.store_status(status_changed(command, MessageStatus.SENT, attempts=3, provider_message_id="SM7"))
    before = await message_row(engine, command.message_id)
    receipt = delivery_reported(command, MessageStatus.FAILED, provider_message_id="SM7", error="error 30003")

    assert await repository.store_receipt(receipt) is WriteOutcome.CHANGED

    message = await message_row(engine, command.message_id)
    assert (message["status"], message["attempts"], message["provider_message_id"], message["last_error"]) == (
        "failed",
        3,
        "SM7",
        "error 30003",
    )
    assert message["status_changed_at"] == receipt.occurred_at
    assert message["updated_at"] > before["updated_at"]
    assert [
        entry["status"] for entry in await rows(engine, message_status_history, message_status_history.c.occurred_at)
    ] == [
        "queued",
        "sent",
        "failed",
    ]


async def test_a_receipt_that_came_before_the_sends_answer_applies_with_it_and_keeps_its_time(
    repository: MessageRepository, engine: Engine
) -> None:
    command = send_message()
    events = lifecycle(command)
    await repository.store_outbound(command)
    await store(repository, events["delivered"])
    assert (await message_row(engine, command.message_id))["status"] == "queued"

    assert await store(repository, events["sent"]) is WriteOutcome.CHANGED

    after = await message_row(engine, command.message_id)
    # The send's attempts and provider id are learnt; the status and its time are the receipt's.
    assert (after["status"], after["attempts"], after["status_changed_at"]) == (
        "delivered",
        2,
        events["delivered"].occurred_at,
    )
    assert len(await rows(engine, message_status_history)) == 3


async def test_of_two_final_reports_the_first_to_happen_wins_whatever_order_they_arrive_in(
    repository: MessageRepository, engine: Engine
) -> None:
    command = send_message()
    delivered = delivery_reported(command)
    bounced = delivery_reported(command, MessageStatus.FAILED, error="error 30005").model_copy(
        update={"occurred_at": delivered.occurred_at + timedelta(seconds=1)}
    )
    await repository.store_outbound(command)
    await repository.store_status(status_changed(command, provider_message_id=delivered.provider_message_id))
    await repository.store_receipt(bounced)
    assert (await message_row(engine, command.message_id))["status"] == "failed"

    await repository.store_receipt(delivered)

    message = await message_row(engine, command.message_id)
    assert (message["status"], message["last_error"]) == ("delivered", None)


async def test_a_receipt_racing_its_send_is_never_lost(repository: MessageRepository, engine: Engine) -> None:
    commands = [send_message(to_address=f"+1312555{i:04d}") for i in range(20)]

    for command in commands:
        provider_message_id = f"SM{command.message_id}"
        outcomes = await asyncio.gather(
            repository.store_receipt(delivery_reported(command, provider_message_id=provider_message_id)),
            repository.store_status(status_changed(command, provider_message_id=provider_message_id)),
            repository.store_outbound(command),
        )
        assert outcomes[1:] == [WriteOutcome.CHANGED] * 2

    stored = await rows(engine, messages)
    assert len(stored) == 20
    assert {row["status"] for row in stored} == {"delivered"}
    assert len(await rows(engine, message_status_history)) == 60
    assert await rows(engine, pending_receipts) == []


async def _sent(repository: MessageRepository, command: SendMessage, provider_message_id: str = "SM42") -> None:
    await repository.store_outbound(command)
    await repository.store_status(status_changed(command, provider_message_id=provider_message_id))


async def _history(repository: MessageRepository, message_id: uuid.UUID) -> list[tuple[str, datetime]]:
    return [
        (change.status, change.at)
        for change in (await read_message(repository, DEVELOPMENT_ACCOUNT_ID, message_id)).history
    ]


async def test_a_forged_bounce_dated_1970_leaves_a_delivered_email_as_it_was(
    repository: MessageRepository, engine: Engine
) -> None:
    command = send_message(Channel.EMAIL)
    await _sent(repository, command, "x-message-id-1")
    await repository.store_receipt(delivery_reported(command, provider_message_id="x-message-id-1.filter0001"))
    before = await read_message(repository, DEVELOPMENT_ACCOUNT_ID, command.message_id)
    forged = delivery_reported(command, MessageStatus.FAILED, provider_message_id="x", error="forged").model_copy(
        update={"occurred_at": datetime(1970, 1, 1, tzinfo=UTC)}
    )

    assert await repository.store_receipt(forged) is WriteOutcome.REJECTED

    assert await read_message(repository, DEVELOPMENT_ACCOUNT_ID, command.message_id) == before
    assert before.status == "delivered"


@pytest.mark.parametrize(
    ("why", "channel", "receipt_channel", "provider_message_id"),
    [
        ("another provider id", Channel.SMS, Channel.SMS, "SM-someone-else"),
        ("an id that only starts like the send's", Channel.SMS, Channel.SMS, "SM42x"),
        ("an email receipt naming an SMS", Channel.SMS, Channel.EMAIL, "SM42"),
        ("an SMS receipt naming an email", Channel.EMAIL, Channel.SMS, "SM42"),
    ],
)
async def test_a_receipt_that_does_not_fit_its_send_changes_nothing(
    repository: MessageRepository,
    why: str,
    channel: Channel,
    receipt_channel: Channel,
    provider_message_id: str,
) -> None:
    command = send_message(channel)
    await _sent(repository, command)
    before = await read_message(repository, DEVELOPMENT_ACCOUNT_ID, command.message_id)
    receipt = delivery_reported(command, MessageStatus.FAILED, provider_message_id=provider_message_id)
    receipt = receipt.model_copy(
        update={
            "channel": receipt_channel,
            "provider": EMAIL_PROVIDER if receipt_channel is Channel.EMAIL else SMS_PROVIDER,
        }
    )

    assert await repository.store_receipt(receipt) is WriteOutcome.REJECTED, why

    assert await read_message(repository, DEVELOPMENT_ACCOUNT_ID, command.message_id) == before


async def test_a_receipt_naming_a_message_we_received_changes_nothing(repository: MessageRepository) -> None:
    inbound = message_received(provider_message_id="SM42")
    await repository.store_inbound(inbound)
    before = await read_message(repository, DEVELOPMENT_ACCOUNT_ID, inbound.message_id)
    receipt = DeliveryReported(
        message_id=inbound.message_id,
        correlation_id=uuid.uuid4(),
        channel=Channel.SMS,
        provider=SMS_PROVIDER,
        provider_message_id="SM42",
        status=MessageStatus.FAILED,
        error="forged",
    )

    assert await repository.store_receipt(receipt) is WriteOutcome.REJECTED

    assert await read_message(repository, DEVELOPMENT_ACCOUNT_ID, inbound.message_id) == before


async def test_a_receipt_that_waited_is_checked_when_the_send_comes_and_dropped_if_it_does_not_fit(
    repository: MessageRepository, engine: Engine
) -> None:
    command = send_message()
    forged = delivery_reported(command, MessageStatus.FAILED, provider_message_id="SM-forged")
    assert await repository.store_receipt(forged) is WriteOutcome.AWAITING_MESSAGE

    await _sent(repository, command)

    message = await read_message(repository, DEVELOPMENT_ACCOUNT_ID, command.message_id)
    assert (message.status, [change.status for change in message.history]) == ("sent", ["queued", "sent"])
    assert await rows(engine, pending_receipts) == []


async def test_a_receipt_is_dated_between_its_send_and_now(repository: MessageRepository) -> None:
    early, late = send_message(), send_message(to_address="+13125550001")
    await _sent(repository, early, "SM-early")
    await _sent(repository, late, "SM-late")
    sent_at = dict(await _history(repository, early.message_id))["sent"]
    before_1970 = delivery_reported(early, provider_message_id="SM-early").model_copy(
        update={"occurred_at": datetime(1970, 1, 1, tzinfo=UTC)}
    )
    in_2099 = delivery_reported(late, provider_message_id="SM-late").model_copy(
        update={"occurred_at": datetime(2099, 1, 1, tzinfo=UTC)}
    )

    await repository.store_receipt(before_1970)
    await repository.store_receipt(in_2099)

    assert dict(await _history(repository, early.message_id))["delivered"] == sent_at
    delivered_at = dict(await _history(repository, late.message_id))["delivered"]
    assert delivered_at <= datetime.now(UTC) + timedelta(seconds=61)


async def test_receipts_in_one_batch_end_each_as_if_written_alone(
    repository: MessageRepository, engine: Engine
) -> None:
    fits, repeated, forged, unsent, parked_before, unknown = (
        send_message(to_address=f"+1312555000{n}") for n in range(6)
    )
    for command in (fits, repeated, forged):
        await _sent(repository, command, f"SM-{command.message_id}")
    await repository.store_outbound(unsent)
    await repository.store_outbound(parked_before)

    def receipt(command: SendMessage, provider_message_id: str | None = None) -> DeliveryReported:
        return delivery_reported(command, provider_message_id=provider_message_id or f"SM-{command.message_id}")

    assert await repository.store_receipt(receipt(repeated)) is WriteOutcome.CHANGED
    assert await repository.store_receipt(receipt(parked_before)) is WriteOutcome.AWAITING_MESSAGE

    outcomes = await repository.store_batch(
        [
            receipt(fits),
            receipt(repeated),
            receipt(forged, "SM-forged"),
            receipt(unsent),
            receipt(parked_before),
            receipt(unknown),
        ]
    )

    assert outcomes == [
        WriteOutcome.CHANGED,
        WriteOutcome.REPLAYED,
        WriteOutcome.REJECTED,
        WriteOutcome.AWAITING_MESSAGE,
        WriteOutcome.REPLAYED,
        WriteOutcome.AWAITING_MESSAGE,
    ]
    statuses = {
        command.message_id: (await read_message(repository, DEVELOPMENT_ACCOUNT_ID, command.message_id)).status
        for command in (fits, repeated, forged, unsent, parked_before)
    }
    assert list(statuses.values()) == ["delivered", "delivered", "sent", "queued", "queued"]
    waiting = {row["message_id"] for row in await rows(engine, pending_receipts)}
    assert waiting == {unsent.message_id, parked_before.message_id, unknown.message_id}


@pytest.fixture
async def acme(engine: Engine) -> uuid.UUID:
    """A second account, besides the development one."""
    async with engine.acquire() as connection:
        return await connection.scalar(accounts.insert().values(name="acme").returning(accounts.c.id))


async def test_the_same_participants_in_two_accounts_are_two_conversations(
    repository: MessageRepository, acme: uuid.UUID
) -> None:
    ours = send_message(body="ours")
    theirs = send_message(account_id=acme, body="theirs")
    # Their reply, and a status that overtook their next send: each lands in its own account.
    reply = message_received(account_id=acme, provider_message_id="reply-1")
    overtaking = status_changed(send_message(account_id=acme, at=START + timedelta(minutes=1)))
    for event in (ours, theirs, reply, overtaking):
        await store(repository, event)

    (our_conversation,) = (await read_conversations(repository, DEVELOPMENT_ACCOUNT_ID, limit=10)).items
    (their_conversation,) = (await read_conversations(repository, acme, limit=10)).items

    assert (our_conversation.id, our_conversation.message_count) == (1, 1)
    assert (their_conversation.id, their_conversation.message_count) == (2, 3)
    assert our_conversation.participants == their_conversation.participants
    their_messages = (await read_messages(repository, acme, 2, limit=10)).items
    assert {message.id for message in their_messages} == {theirs.message_id, reply.message_id, overtaking.message_id}


async def test_another_accounts_conversation_and_message_are_not_found_nor_listed(
    repository: MessageRepository, acme: uuid.UUID
) -> None:
    theirs = send_message(account_id=acme)
    await repository.store_outbound(theirs)
    missing = uuid.uuid4()

    assert (await read_conversations(repository, DEVELOPMENT_ACCOUNT_ID, limit=10)).items == []
    with pytest.raises(NotFound) as not_theirs:
        await read_messages(repository, DEVELOPMENT_ACCOUNT_ID, 1, limit=10)
    with pytest.raises(NotFound) as not_there:
        await read_messages(repository, DEVELOPMENT_ACCOUNT_ID, 2, limit=10)
    assert str(not_theirs.value).replace("1", "2") == str(not_there.value)
    with pytest.raises(NotFound) as not_theirs_either:
        await read_message(repository, DEVELOPMENT_ACCOUNT_ID, theirs.message_id)
    with pytest.raises(NotFound) as not_there_either:
        await read_message(repository, DEVELOPMENT_ACCOUNT_ID, missing)
    assert str(not_theirs_either.value).replace(str(theirs.message_id), str(missing)) == str(not_there_either.value)
    # The owner still reads them.
    assert (await read_message(repository, acme, theirs.message_id)).id == theirs.message_id
    assert len((await read_messages(repository, acme, 1, limit=10)).items) == 1


async def test_the_json_postgresql_writes_is_the_contracts_own_whatever_the_session_time_zone(
    database_url: str,
) -> None:
    """Each body reads back into its model and writes out again the same: the contract's key names,
    UTC with a `Z`, microseconds only where there are any, lists sorted, strings kept byte for byte."""
    hostile = 'he said "hi"\\ \n\t\u0001 été 😀 </script><b>'
    # Kathmandu is +05:45: a session there would shift every time PostgreSQL formatted in its zone.
    async with create_engine(database_url, options="-c TimeZone=Asia/Kathmandu") as engine:
        repository = MessageRepository(engine, retry_max_interval=0.1)
        first = send_message(Channel.MMS, body=hostile, attachments=("https://example.com/a.png",))
        await repository.store_outbound(first)
        await repository.store_status(status_changed(first))
        later = START + timedelta(seconds=1, microseconds=250_000)
        await repository.store_inbound(message_received(Channel.SMS, body=hostile, at=later))

        bodies = {
            ConversationList: await repository.list_conversations(DEVELOPMENT_ACCOUNT_ID, limit=1),
            MessageList: await repository.list_messages(DEVELOPMENT_ACCOUNT_ID, 1, limit=1),
            MessageDetail: await repository.get_message(DEVELOPMENT_ACCOUNT_ID, first.message_id),
        }

    for model, body in bodies.items():
        assert json.loads(body) == json.loads(model.model_validate_json(body).model_dump_json(by_alias=True))
    conversation = json.loads(bodies[ConversationList])["conversations"][0]
    assert (conversation["participants"], conversation["channels"]) == ([OUR_PHONE, THEIR_PHONE], ["mms", "sms"])
    assert conversation["last_message"]["body"] == hostile
    assert conversation["last_message_at"] == "2024-11-01T14:00:01.250000Z"
    messages_page = json.loads(bodies[MessageList])
    assert (messages_page["conversation_id"], messages_page["next_cursor"] is not None) == (1, True)
    assert [message["timestamp"] for message in messages_page["messages"]] == ["2024-11-01T14:00:00Z"]
    detail = json.loads(bodies[MessageDetail])
    assert (detail["from"], detail["to"], detail["body"]) == (OUR_PHONE, THEIR_PHONE, hostile)
    assert [change["status"] for change in detail["history"]] == ["queued", "sent"]


@pytest.mark.parametrize("order", list(itertools.permutations(["queued", "sent", "delivered"])), ids="-".join)
async def test_a_messages_events_in_one_batch_end_as_if_written_one_after_the_other(
    repository: MessageRepository, engine: Engine, order: tuple[str, ...]
) -> None:
    command = send_message()
    events = lifecycle(command)
    other = send_message(to_address="+13125550000")

    outcomes = await repository.store_batch([events[name] for name in order] + [other])

    expected = {name: WriteOutcome.CHANGED for name in order}
    if order.index("delivered") < order.index("sent"):
        expected["delivered"] = WriteOutcome.AWAITING_MESSAGE
    assert outcomes == [expected[name] for name in order] + [WriteOutcome.CHANGED]
    message = await read_message(repository, DEVELOPMENT_ACCOUNT_ID, command.message_id)
    assert (message.status, message.attempts, message.provider_message_id) == ("delivered", 2, "SM42")
    assert [change.status for change in message.history] == ["queued", "sent", "delivered"]
    assert await rows(engine, pending_receipts) == []
    assert [(row["id"], row["message_count"]) for row in await rows(engine, conversations, conversations.c.id)] == [
        (1, 1),
        (2, 1),
    ]


async def test_a_batch_counts_each_conversation_once_and_numbers_new_ones_in_arrival_order(
    repository: MessageRepository, engine: Engine
) -> None:
    await repository.store_outbound(send_message(at=START + timedelta(minutes=10), body="already there"))
    partners = [f"+1312555{i:04d}" for i in range(3)]
    batch: list[MessageEvent] = [
        send_message(Channel.MMS, at=START, body="older, into conversation 1"),
        send_message(to_address=partners[0], at=START + timedelta(minutes=1)),
        message_received(provider_message_id="reply", at=START + timedelta(minutes=10)),
        send_message(to_address=partners[1], at=START),
        send_message(Channel.MMS, to_address=partners[0], at=START + timedelta(minutes=1)),
        send_message(to_address=partners[2], at=START),
    ]

    assert await repository.store_batch(batch) == [WriteOutcome.CHANGED] * 6
    assert await repository.store_batch(batch) == [WriteOutcome.REPLAYED] * 6

    stored = await rows(engine, conversations, conversations.c.id)
    # The channels in the order they first came, as when written one by one.
    assert [(row["id"], row["channels"], row["message_count"]) for row in stored] == [
        (1, ["sms", "mms"], 3),
        (2, ["sms", "mms"], 2),
        (3, ["sms"], 1),
        (4, ["sms"], 1),
    ]
    assert [row["participant_key"].split("\n")[-1] for row in stored[1:]] == partners
    # Of equal timestamps the last stored is the latest, as when written one by one.
    assert (stored[0]["last_message_id"], stored[1]["last_message_id"]) == (batch[2].message_id, batch[4].message_id)
    messages_of_2 = (await read_messages(repository, DEVELOPMENT_ACCOUNT_ID, 2, limit=10)).items
    assert [m.id for m in messages_of_2] == [batch[1].message_id, batch[4].message_id]


async def test_replicas_writing_overlapping_batches_make_one_conversation_per_participant_set_without_gaps(
    engine: Engine, database_url: str
) -> None:
    async with create_engine(database_url, maxsize=5) as other_engine:
        replicas = [
            MessageRepository(engine, retry_max_interval=0.1),
            MessageRepository(other_engine, retry_max_interval=0.1),
        ]
        partners = [f"+1312555{i:04d}" for i in range(12)]
        for round_ in range(3):
            sends = [send_message(to_address=partner, at=START + timedelta(minutes=round_)) for partner in partners]
            statuses = [status_changed(command, provider_message_id=None) for command in sends]
            # Each replica gets the other's events too, in another order: a send on one, its status on the other.
            await asyncio.gather(
                replicas[0].store_batch([*sends[::2], *statuses[1::2], *reversed(sends[6:])]),
                replicas[1].store_batch([*reversed(statuses), *sends[1::2]]),
            )

    stored = await rows(engine, conversations, conversations.c.id)
    assert [row["id"] for row in stored] == list(range(1, 13))
    assert {row["message_count"] for row in stored} == {3}
    assert {row["status"] for row in await rows(engine, messages)} == {"sent"}


async def test_each_message_keeps_the_json_a_page_would_build_for_it(
    repository: MessageRepository, engine: Engine
) -> None:
    """The `view` the trigger of migration 0006 writes, against the reads' own builder of a message:
    a change to MessageView that no migration followed fails here."""
    command = send_message(Channel.MMS, attachments=("https://example.com/a.png",))
    failed = send_message(body="never sent")
    await repository.store_outbound(command)
    await repository.store_status(status_changed(command, MessageStatus.SENT, attempts=2))
    await repository.store_receipt(delivery_reported(command))
    await repository.store_outbound(failed)
    await repository.store_status(status_changed(failed, MessageStatus.FAILED, error="provider answered HTTP 500"))
    await repository.store_inbound(
        message_received(body='quotes " and \\ and \u00e9', at=START.replace(microsecond=120000))
    )

    async with engine.acquire() as connection:
        result = await connection.execute(
            sa.select(
                messages.c.status,
                sa.cast(messages.c.view, sa.Text).label("kept"),
                sa.cast(message_object(messages), sa.Text).label("built"),
            )
        )
        kept = await result.fetchall()

    assert sorted(row.status for row in kept) == ["delivered", "failed", "received"]
    assert [row.kept for row in kept] == [row.built for row in kept]


async def test_each_conversation_keeps_the_json_a_page_would_build_for_it(
    repository: MessageRepository, engine: Engine
) -> None:
    """The `view` the triggers of migration 0007 write, against the reads' own builder, through new
    messages and a status of the last one and of an earlier one: a change to ConversationView that
    no migration followed fails here. A page is what the contract writes itself, byte for byte."""
    sms = send_message()
    mms = send_message(Channel.MMS, attachments=("https://example.com/a.png",))
    await repository.store_outbound(sms)
    await repository.store_outbound(mms)
    await repository.store_status(status_changed(mms, MessageStatus.SENT, attempts=2))
    await repository.store_status(status_changed(sms, MessageStatus.FAILED, error="provider answered HTTP 500"))
    await repository.store_inbound(message_received(Channel.EMAIL, at=START.replace(microsecond=120000)))

    last_message = (
        sa.select(messages.c.view)
        .where(messages.c.id == conversations.c.last_message_id)
        .correlate(conversations)
        .scalar_subquery()
    )
    async with engine.acquire() as connection:
        result = await connection.execute(
            sa.select(
                conversations.c.channels,
                sa.cast(conversations.c.view, sa.Text).label("kept"),
                sa.cast(conversation_object(conversations, last_message), sa.Text).label("built"),
            ).order_by(conversations.c.id)
        )
        kept = await result.fetchall()
    page = await repository.list_conversations(DEVELOPMENT_ACCOUNT_ID, limit=10)

    assert [row.channels for row in kept] == [["sms", "mms"], ["email"]]
    assert [row.kept for row in kept] == [row.built for row in kept]
    assert [c.last_message.status for c in ConversationList.model_validate_json(page).conversations] == [
        MessageStatus.RECEIVED,
        MessageStatus.SENT,
    ]
    assert page == ConversationList.model_validate_json(page).model_dump_json(by_alias=True).encode()
