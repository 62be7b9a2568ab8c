"""The repository on the real PostgreSQL: what each event stores, and that replays and reorderings change nothing."""

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import psycopg2
import pytest
import sqlalchemy as sa
from aiopg.sa import Engine, create_engine
from psycopg2.extensions import make_dsn, parse_dsn

from common.contracts import Channel, MessageReceived, MessageStatus, MessageStatusChanged, SendMessage
from common.http import InvalidRequest, NotFound, ServiceUnavailable
from common.settings import DatabaseSettings
from conversation_service.migrate import create_role_and_database, drop_database
from conversation_service.repository import MessageRepository
from conversation_service.schema import conversation_participants, conversations, messages
from tests.factories import (
    OUR_PHONE,
    START,
    THEIR_PHONE,
    eventually,
    message_received,
    send_message,
    status_changed,
)

pytestmark = pytest.mark.integration


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[Engine]:
    async with create_engine(database_url, maxsize=20) as engine:
        yield engine


@pytest.fixture
def repository(engine: Engine) -> MessageRepository:
    return MessageRepository(engine, retry_seconds=10.0)


async def rows(engine: Engine, table: sa.Table, *order_by: sa.Column) -> list[dict[str, Any]]:
    async with engine.acquire() as connection:
        result = await connection.execute(sa.select(table).order_by(*order_by))
        return [dict(row) for row in await result.fetchall()]


async def snapshot(engine: Engine) -> list[list[dict[str, Any]]]:
    return [
        await rows(engine, conversations, conversations.c.id),
        await rows(engine, conversation_participants, *conversation_participants.c),
        await rows(engine, messages, messages.c.seq),
    ]


async def message_row(engine: Engine, message_id: uuid.UUID) -> dict[str, Any]:
    (row,) = [row for row in await rows(engine, messages) if row["id"] == message_id]
    return row


async def test_a_send_is_stored_queued_in_a_new_conversation(repository: MessageRepository, engine: Engine) -> None:
    command = send_message(Channel.MMS, attachments=("https://example.com/a.png",))

    assert await repository.store_outbound(command) is True

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

    assert await repository.store_inbound(event) is True

    message = await message_row(engine, event.message_id)
    assert message["direction"] == "inbound"
    assert message["status"] == "received"
    assert (message["provider"], message["provider_message_id"]) == ("sms-provider", "message-7")
    assert (message["from_address"], message["to_address"]) == (THEIR_PHONE, OUR_PHONE)


async def test_both_directions_share_one_conversation_and_another_pair_gets_the_next_id(
    repository: MessageRepository,
) -> None:
    await repository.store_outbound(send_message(at=START))
    await repository.store_inbound(message_received(at=START + timedelta(minutes=1)))
    await repository.store_outbound(send_message(Channel.MMS, at=START + timedelta(minutes=2)))
    await repository.store_outbound(send_message(to_address="+13125550000", at=START + timedelta(minutes=3)))

    page = await repository.list_conversations(limit=10)

    assert [(c.id, c.participants, c.channels, c.message_count) for c in page.items] == [
        (2, ["+12016661234", "+13125550000"], ["sms"], 1),
        (1, [OUR_PHONE, THEIR_PHONE], ["mms", "sms"], 3),
    ]


async def test_replaying_every_event_changes_nothing(repository: MessageRepository, engine: Engine) -> None:
    command = send_message()
    events: list[SendMessage | MessageReceived | MessageStatusChanged] = [
        command,
        message_received(at=START + timedelta(seconds=1)),
        status_changed(command, MessageStatus.SENT, provider_message_id="SM1"),
        send_message(Channel.MMS, at=START + timedelta(seconds=2)),
    ]
    writes = {
        SendMessage: repository.store_outbound,
        MessageReceived: repository.store_inbound,
        MessageStatusChanged: repository.store_status,
    }
    for event in events:
        assert await writes[type(event)](event) is True
    before = await snapshot(engine)

    for event in events:
        assert await writes[type(event)](event) is False

    assert await snapshot(engine) == before
    assert before[0][0]["message_count"] == 3


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
    assert await repository.store_outbound(command) is False

    message = await message_row(engine, command.message_id)
    assert message["status"] == final
    assert message["attempts"] == statuses.index(MessageStatus(final)) + 1


async def test_a_failure_records_attempts_and_the_providers_error(
    repository: MessageRepository, engine: Engine
) -> None:
    command = send_message()
    await repository.store_outbound(command)
    failure = status_changed(command, MessageStatus.FAILED, attempts=3, error="HTTP 500 from the provider")

    assert await repository.store_status(failure) is True

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

    assert await repository.store_status(sent) is True
    assert await repository.store_outbound(command) is False

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

    (conversation,) = (await repository.list_conversations(limit=10)).items

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
        page = await repository.list_messages(1, limit=3, cursor=cursor)
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

    first = await repository.list_conversations(limit=2)
    second = await repository.list_conversations(limit=2, cursor=first.next_cursor)
    third = await repository.list_conversations(limit=2, cursor=second.next_cursor)

    assert [c.id for c in first.items + second.items + third.items] == [5, 4, 3, 2, 1]
    assert third.next_cursor is None


async def test_reading_what_is_not_there(repository: MessageRepository) -> None:
    await repository.store_outbound(send_message())

    with pytest.raises(NotFound):
        await repository.list_messages(2, limit=10)
    with pytest.raises(NotFound):
        await repository.get_message(uuid.uuid4())
    with pytest.raises(InvalidRequest):
        await repository.list_messages(1, limit=10, cursor="bogus")


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
    assert await repository.store_outbound(command) is True

    assert (await repository.get_message(command.message_id)).status == "queued"


async def test_a_read_survives_the_database_dropping_its_connections(
    repository: MessageRepository, database_url: str
) -> None:
    command = send_message()
    await repository.store_outbound(command)
    drop_connections_of(database_url)

    assert (await repository.get_message(command.message_id)).id == command.message_id


async def test_a_database_that_stays_away_is_service_unavailable_for_reads_and_an_error_for_writes(
    database_settings: DatabaseSettings,
) -> None:
    # A database of this test's own, dropped under the pool: no other test loses its connections.
    dsn = parse_dsn(database_settings.database_url)
    doomed = database_settings.model_copy(
        update={"database_url": make_dsn(**{**dsn, "dbname": f"{dsn['dbname']}_gone_{uuid.uuid4().hex[:8]}"})}
    )
    create_role_and_database(doomed)
    async with create_engine(doomed.database_url) as engine:
        repository = MessageRepository(engine, retry_seconds=0.3, read_retry_seconds=0.3)
        drop_database(doomed)

        with pytest.raises(ServiceUnavailable):
            await repository.list_conversations(limit=10)
        # The consumer adapter nacks on this, and the broker hands the message out again later.
        with pytest.raises(psycopg2.OperationalError):
            await repository.store_outbound(send_message())


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

        assert await asyncio.wait_for(status, timeout=10) is True

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
