"""bin/seed.py (`make seed`) as a developer runs it, against the test database: what it loads holds
every invariant conversation_service's writes keep, and the read API pages through it."""

import os
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from aiopg.sa import Engine, create_engine

from common.accounts import DEVELOPMENT_ACCOUNT_ID
from common.contracts import STATUS_RANK
from common.conversations import ConversationList, MessageList
from conversation_service.repository import MessageRepository
from conversation_service.schema import participant_key

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT / "bin" / "seed.py"


def seed(database_url: str, owner_url: str, *arguments: str) -> str:
    environment = {**os.environ, "DATABASE_URL": database_url, "DATABASE_OWNER_URL": owner_url}
    done = subprocess.run(
        [sys.executable, str(SEED), *arguments], env=environment, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def query(database_url: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg2.connect(database_url) as connection, connection.cursor() as cursor:
        cursor.execute(sql)
        rows = cursor.fetchall()
    connection.close()
    return rows


@pytest.fixture
def seeded(database_url: str, database_owner_url: str) -> str:
    """Two runs: 3,000 messages with a big conversation of 600, then 1,000 more with one of 100."""
    first = seed(database_url, database_owner_url, "--messages", "3000", "--big", "600")
    second = seed(database_url, database_owner_url, "--messages", "1000")
    # Each run says which ids it took, and gives the first to its big conversation.
    [first_last_id] = re.findall(r"seeded 3,000 messages .* ids 1-(\d+), .* is conversation 1 \(600 messages\)", first)
    assert re.search(
        rf"seeded 1,000 messages .* ids {int(first_last_id) + 1}-\d+, .* is conversation "
        rf"{int(first_last_id) + 1} \(100 messages\)",
        second,
    ), second
    return database_url


def test_each_run_adds_its_own_conversations_with_ids_from_the_sequence(seeded: str) -> None:
    [(conversations, first_id, last_id, messages, accounts)] = query(
        seeded,
        "SELECT count(*), min(id), max(id), sum(message_count), array_agg(DISTINCT account_id::text) "
        "FROM conversations",
    )
    assert (first_id, last_id) == (1, conversations)
    assert messages == 4000
    assert accounts == [str(DEVELOPMENT_ACCOUNT_ID)]
    assert query(seeded, "SELECT count(*) FROM messages") == [(4000,)]
    assert query(seeded, "SELECT id, message_count FROM conversations ORDER BY message_count DESC LIMIT 1") == [
        (1, 600)
    ]
    assert (100,) in query(seeded, "SELECT message_count FROM conversations")
    # A real-looking mix, not one kind of message.
    mix = query(seeded, "SELECT DISTINCT direction, type, status FROM messages")
    assert {row[0] for row in mix} == {"inbound", "outbound"}
    assert {row[1] for row in mix} == {"sms", "mms", "email"}
    assert {row[2] for row in mix} == {"received", "queued", "sent", "delivered", "failed"}


def test_conversations_sum_up_their_messages_as_the_writes_keep_them(seeded: str) -> None:
    wrong = query(
        seeded,
        """
        SELECT c.id FROM conversations c
        JOIN LATERAL (
            SELECT count(*) AS n, max(timestamp) AS last_at,
                   (array_agg(id ORDER BY timestamp DESC, seq DESC))[1] AS last_id,
                   bool_or(account_id <> c.account_id) AS elsewhere
            FROM messages WHERE conversation_id = c.id
        ) s ON true
        WHERE (c.message_count, c.last_message_at, c.last_message_id, s.elsewhere)
              IS DISTINCT FROM (s.n, s.last_at, s.last_id, false)
           OR c.channels IS DISTINCT FROM (
                SELECT array_agg(type ORDER BY first_seq) FROM (
                    SELECT type, min(seq) AS first_seq FROM messages WHERE conversation_id = c.id GROUP BY type
                ) t)
           OR (SELECT array_agg(address ORDER BY address) FROM conversation_participants WHERE conversation_id = c.id)
              IS DISTINCT FROM (
                SELECT array_agg(DISTINCT a ORDER BY a)
                FROM messages, LATERAL (VALUES (from_address), (to_address)) AS p(a)
                WHERE conversation_id = c.id)
        """,
    )
    assert wrong == []
    keys = query(
        seeded,
        "SELECT c.participant_key, array_agg(p.address) FROM conversations c "
        "JOIN conversation_participants p ON p.conversation_id = c.id GROUP BY c.id",
    )
    assert all(key == participant_key(addresses) for key, addresses in keys)


def test_every_message_is_what_its_status_history_says(seeded: str) -> None:
    rank = "CASE status " + " ".join(f"WHEN '{s.value}' THEN {r}" for s, r in STATUS_RANK.items()) + " END"
    outcome_first, send_first = "rank DESC, occurred_at, status", "rank, occurred_at, status"
    wrong = query(
        seeded,
        f"""
        WITH ranked AS (SELECT h.*, {rank} AS rank FROM message_status_history h),
        derived AS (
            SELECT message_id,
                   (array_agg(status ORDER BY {outcome_first}))[1] AS status,
                   (array_agg(occurred_at ORDER BY {outcome_first}))[1] AS status_changed_at,
                   coalesce((array_agg(attempts ORDER BY {outcome_first})
                             FILTER (WHERE attempts IS NOT NULL))[1], 0) AS attempts,
                   (array_agg(provider ORDER BY {send_first}) FILTER (WHERE provider IS NOT NULL))[1] AS provider,
                   (array_agg(provider_message_id ORDER BY {send_first})
                    FILTER (WHERE provider_message_id IS NOT NULL))[1] AS provider_message_id,
                   (array_agg(error ORDER BY {outcome_first}))[1] AS last_error,
                   bool_or(status = 'queued') AS queued
            FROM ranked GROUP BY message_id
        )
        SELECT m.id FROM messages m FULL JOIN derived d ON d.message_id = m.id
        WHERE (m.status, m.status_changed_at, m.attempts, m.provider, m.provider_message_id, m.last_error)
              IS DISTINCT FROM (d.status, d.status_changed_at, d.attempts, d.provider, d.provider_message_id,
                                d.last_error)
           OR d.queued IS DISTINCT FROM (m.direction = 'outbound')
        """,
    )
    assert wrong == []


# The read API as conversation_service serves it: kept to these two helpers so that moving the reads
# moves only them.
@pytest.fixture
async def engine(seeded: str) -> AsyncIterator[Engine]:
    async with create_engine(seeded) as engine:
        yield engine


async def every_page(engine: Engine, conversation_id: int | None = None) -> list[list[Any]]:
    repository, pages, cursor = MessageRepository(engine, retry_max_interval=0.1), [], None
    while True:
        if conversation_id is None:
            conversation_page = ConversationList.model_validate_json(
                await repository.list_conversations(DEVELOPMENT_ACCOUNT_ID, 50, cursor)
            )
            items, cursor = list(conversation_page.conversations), conversation_page.next_cursor
        else:
            message_page = MessageList.model_validate_json(
                await repository.list_messages(DEVELOPMENT_ACCOUNT_ID, conversation_id, 50, cursor)
            )
            items, cursor = list(message_page.messages), message_page.next_cursor
        pages.append(items)
        if cursor is None:
            return pages


async def test_the_read_api_pages_through_the_seeded_conversations(engine: Engine, seeded: str) -> None:
    pages = await every_page(engine)
    conversations = [conversation for page in pages for conversation in page]
    assert [len(page) for page in pages[:-1]] == [50] * (len(pages) - 1)
    assert [c.id for c in conversations] == [
        id_ for (id_,) in query(seeded, "SELECT id FROM conversations ORDER BY last_message_at DESC, id DESC")
    ]
    assert all(c.last_message is not None and c.last_message.timestamp == c.last_message_at for c in conversations)


async def test_the_read_api_pages_through_the_big_conversation(engine: Engine, seeded: str) -> None:
    pages = await every_page(engine, 1)
    messages = [message for page in pages for message in page]
    assert len(pages) == 12
    assert [str(m.id) for m in messages] == [
        str(uuid.UUID(str(id_)))
        for (id_,) in query(seeded, "SELECT id FROM messages WHERE conversation_id = 1 ORDER BY timestamp, seq")
    ]
