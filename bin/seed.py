"""Load a realistic data set straight into PostgreSQL, for the read benchmarks (`make seed`).

    .venv/bin/python bin/seed.py --messages 1000000

Everything belongs to the development account: one conversation of `--big` messages (100,000, or a
tenth of `--messages` if that is smaller) and the rest spread over conversations of varied sizes
(most a few messages, some thousands), SMS, SMS mixed with MMS, and email, inbound and outbound, in
every status. The rows are the ones conversation_service would have written for those events: each
message's status columns derived from its status history, each conversation's count, channels,
participants, participant key and latest message as the writes keep them, and conversation ids drawn
from the sequence without a gap. Each run adds a new set of conversations beside what is there (new
counterpart addresses, new ids); it never changes or deletes a row.

It writes as DATABASE_URL's role, in one transaction of a few set-based statements, then vacuums and
analyzes the tables as DATABASE_OWNER_URL's role so that reads are planned on the new data at once.
"""

import argparse
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg2
from psycopg2.extensions import connection as Connection

from common.accounts import DEVELOPMENT_ACCOUNT_ID
from common.contracts import EMAIL_PROVIDER, SMS_PROVIDER
from common.settings import load_settings
from conversation_service.settings import MigrationSettings

BIG_CONVERSATION = 100_000
# Conversation sizes are log-normal: a median of about 12 messages, a mean of about 30, a long tail.
SIZE_MU, SIZE_SIGMA, SIZE_MAX = 2.5, 1.3, 5_000
# What a conversation is about: SMS only, SMS with some MMS, or email.
KINDS = ("sms", "mixed", "email")
KIND_WEIGHTS = (0.55, 0.2, 0.25)
HISTORY_DAYS = 365
# PROVIDER_MAX_ATTEMPTS' default: a failed send tried this many times.
FAILED_ATTEMPTS = 5


@dataclass(frozen=True)
class Plan:
    """The conversations to make, the big one first: each one's size, kind and time span."""

    sizes: list[int]
    kinds: list[str]
    first_at: list[datetime]
    last_at: list[datetime]


@dataclass(frozen=True)
class Loaded:
    first_conversation_id: int
    conversations: int
    messages: int
    status_entries: int
    big_conversation_id: int
    big_conversation_messages: int


def plan(messages: int, big: int, rng: random.Random, now: datetime) -> Plan:
    # Every other conversation smaller than the big one, however few messages there are.
    largest = max(1, min(SIZE_MAX, big // 2))
    sizes, rest = [big], messages - big
    while rest > 0:
        size = min(rest, largest, max(1, int(rng.lognormvariate(SIZE_MU, SIZE_SIGMA))))
        sizes.append(size)
        rest -= size
    kinds = ["mixed", *rng.choices(KINDS, KIND_WEIGHTS, k=len(sizes) - 1)]
    first_at, last_at = [], []
    for size in sizes:
        # About a minute to an hour between messages, and every conversation over before now.
        span = timedelta(seconds=size * rng.uniform(60, 3600))
        end = now - timedelta(seconds=rng.uniform(0, HISTORY_DAYS * 86_400))
        first_at.append(end - span)
        last_at.append(end)
    return Plan(sizes, kinds, first_at, last_at)


# Our side of each conversation is one of a few numbers and mailboxes of the development account
# (which owns every address no other account does); the other side is an address of the
# conversation's own, derived from its id, so every run's conversations are new ones.
_PLAN_CONVERSATIONS = """
CREATE TEMPORARY TABLE seed_conversation ON COMMIT DROP AS
SELECT named.*,
       CASE WHEN ours COLLATE "C" < theirs COLLATE "C" THEN ARRAY[ours, theirs] ELSE ARRAY[theirs, ours] END
           AS participants
FROM (
    SELECT numbered.*,
           CASE WHEN kind = 'email' THEN 'support@seed.example.org'
                ELSE '+1201666' || (1234 + ordinal %% 10) END AS ours,
           CASE WHEN kind = 'email' THEN 'customer' || id || '@example.com' ELSE '+1' || (4150000000 + id) END
               AS theirs
    FROM (
        SELECT drawn.id, p.*
        FROM unnest(%(sizes)s::int[], %(kinds)s::text[], %(first_at)s::timestamptz[], %(last_at)s::timestamptz[])
             WITH ORDINALITY AS p(n, kind, first_at, last_at, ordinal)
        -- Ids drawn in any order, handed out in the plan's: the big conversation gets the first.
        JOIN (
            SELECT id, row_number() OVER (ORDER BY id) AS ordinal
            FROM (SELECT nextval(pg_get_serial_sequence('conversations', 'id')) AS id
                  FROM generate_series(1, cardinality(%(sizes)s::int[]))) AS ids
        ) AS drawn USING (ordinal)
    ) numbered
) named
"""
_INSERT_CONVERSATIONS = """
INSERT INTO conversations (id, account_id, participant_key, channels, message_count, last_message_at,
                           created_at, updated_at)
SELECT id, %(account_id)s, array_to_string(participants, E'\\n'), '{}', 0, first_at, first_at, last_at
FROM seed_conversation ORDER BY id
"""
_INSERT_PARTICIPANTS = """
INSERT INTO conversation_participants (conversation_id, address)
SELECT id, unnest(participants) FROM seed_conversation
"""
# One row per message with its whole life: which way it went, its channel, and how far it got
# (outbound: 3% still queued, 5% failed at the provider, 32% sent, 60% delivered). Dice come from
# hashing the message's place, so they are independent of each other and of the planner.
_INSERT_MESSAGES_AND_HISTORY = """
WITH planned AS MATERIALIZED (
    SELECT gen_random_uuid() AS id, c.id AS conversation_id, k, dice.*,
           CASE WHEN direction = 'outbound' THEN c.ours ELSE c.theirs END AS from_address,
           CASE WHEN direction = 'outbound' THEN c.theirs ELSE c.ours END AS to_address,
           CASE WHEN type = 'email' THEN %(email_provider)s ELSE %(sms_provider)s END AS provider,
           CASE WHEN direction = 'inbound' THEN 'received'
                WHEN fate < 3 THEN 'queued' WHEN fate < 8 THEN 'failed' WHEN fate < 40 THEN 'sent'
                ELSE 'delivered' END AS status,
           c.first_at + (c.last_at - c.first_at) * (k::float8 / greatest(c.n - 1, 1)) AS at
    FROM seed_conversation c
    CROSS JOIN generate_series(0, c.n - 1) AS k
    CROSS JOIN LATERAL (
        SELECT CASE WHEN abs(hashint8(c.id * 1000003 + k)) %% 100 < 45 THEN 'inbound' ELSE 'outbound' END
                   AS direction,
               CASE WHEN c.kind = 'email' THEN 'email'
                    WHEN c.kind = 'mixed' AND abs(hashint8(c.id * 1000033 + k)) %% 100 < 25 THEN 'mms'
                    ELSE 'sms' END AS type,
               abs(hashint8(c.id * 1000037 + k)) %% 100 AS fate,
               1 + (abs(hashint8(c.id * 1000039 + k)) %% 100 >= 90)::int AS send_attempts
    ) AS dice
),
lived AS (
    SELECT p.*,
           CASE WHEN type = 'email' THEN left(md5(id::text), 22) ELSE 'SM' || md5(id::text) END
               AS provider_message_id,
           at + interval '1 second' AS sent_at,
           at + interval '2 seconds' AS failed_at,
           at + interval '4 seconds' AS delivered_at
    FROM planned p
),
history AS (
    SELECT l.id AS message_id, h.*
    FROM lived l CROSS JOIN LATERAL (VALUES
        ('received', l.at, NULL::int, l.provider, l.provider_message_id, NULL::text, l.status = 'received'),
        ('queued', l.at, NULL, NULL, NULL, NULL, l.direction = 'outbound'),
        ('sent', l.sent_at, l.send_attempts, l.provider, l.provider_message_id, NULL,
         l.status IN ('sent', 'delivered')),
        ('failed', l.failed_at, %(failed_attempts)s, l.provider, NULL, %(failure)s, l.status = 'failed'),
        -- SendGrid's events name the send's id with a suffix of their own.
        ('delivered', l.delivered_at, NULL, l.provider,
         l.provider_message_id || CASE WHEN l.type = 'email' THEN '.filter0001-seed' ELSE '' END, NULL,
         l.status = 'delivered')
    ) AS h(status, occurred_at, attempts, provider, provider_message_id, error, happened)
    WHERE h.happened
),
inserted_history AS (
    INSERT INTO message_status_history (message_id, status, occurred_at, attempts, provider,
                                        provider_message_id, error, recorded_at)
    SELECT message_id, status, occurred_at, attempts, provider, provider_message_id, error, occurred_at
    FROM history
    RETURNING 1
)
INSERT INTO messages (id, conversation_id, account_id, direction, type, from_address, to_address, body,
                      attachments, status, provider, provider_message_id, attempts, last_error, timestamp,
                      created_at, updated_at, status_changed_at)
SELECT id, conversation_id, %(account_id)s, direction, type, from_address, to_address,
       CASE WHEN type = 'email' THEN (ARRAY[
                'Hello, following up on your order. Let us know if anything is missing.',
                'Thanks for reaching out! Your ticket is open and someone will reply within a day.',
                'Here is the summary you asked for, with the invoice attached below.'])[1 + k %% 3]
            ELSE (ARRAY['ok, see you then', 'Running 10 min late', 'Can you send the address?',
                        'Your code is ready for pickup', 'thanks!', 'Is 3pm still good?'])[1 + k %% 6]
       END || ' (' || k || ')',
       CASE WHEN type = 'mms' THEN jsonb_build_array('https://cdn.example.com/seed/' || id || '.jpg')
            ELSE '[]'::jsonb END,
       status,
       CASE WHEN status IN ('queued') THEN NULL ELSE provider END,
       CASE WHEN status IN ('queued', 'failed') THEN NULL ELSE provider_message_id END,
       CASE WHEN status = 'failed' THEN %(failed_attempts)s WHEN status IN ('sent', 'delivered') THEN send_attempts
            ELSE 0 END,
       CASE WHEN status = 'failed' THEN %(failure)s END,
       at, at, changed_at, changed_at
FROM lived
CROSS JOIN LATERAL (
    SELECT CASE status WHEN 'sent' THEN sent_at WHEN 'failed' THEN failed_at WHEN 'delivered' THEN delivered_at
                       ELSE at END AS changed_at
) AS outcome
-- Arrival order: `seq` follows time within each conversation, as it would have live.
ORDER BY conversation_id, k
"""
# As the writes keep them: channels in the order they first appeared, the latest message the last of
# the latest timestamp.
_SUM_UP_CONVERSATIONS = """
UPDATE conversations c SET
    message_count = s.message_count,
    channels = s.channels,
    last_message_id = s.last_message_id,
    last_message_at = s.last_message_at
FROM (
    SELECT m.conversation_id, count(*) AS message_count,
           (array_agg(m.id ORDER BY m.timestamp DESC, m.seq DESC))[1] AS last_message_id,
           max(m.timestamp) AS last_message_at,
           (SELECT array_agg(t.type ORDER BY t.first_seq)
            FROM (SELECT type, min(seq) AS first_seq FROM messages WHERE conversation_id = m.conversation_id
                  GROUP BY type) t) AS channels
    FROM messages m JOIN seed_conversation sc ON sc.id = m.conversation_id
    GROUP BY m.conversation_id
) s
WHERE c.id = s.conversation_id
"""
_LOADED = """
SELECT min(id), count(*), sum(n), (SELECT id FROM seed_conversation ORDER BY n DESC, id LIMIT 1), max(n),
       (SELECT count(*) FROM message_status_history h JOIN messages m ON m.id = h.message_id
        JOIN seed_conversation sc ON sc.id = m.conversation_id)
FROM seed_conversation
"""
_TABLES = ("conversations", "conversation_participants", "messages", "message_status_history")


def load(connection: Connection, seed_plan: Plan) -> Loaded:
    """Write the planned conversations and their messages in one transaction."""
    parameters = {
        "sizes": seed_plan.sizes,
        "kinds": seed_plan.kinds,
        "first_at": seed_plan.first_at,
        "last_at": seed_plan.last_at,
        "account_id": str(DEVELOPMENT_ACCOUNT_ID),
        "sms_provider": SMS_PROVIDER,
        "email_provider": EMAIL_PROVIDER,
        "failed_attempts": FAILED_ATTEMPTS,
        "failure": "the provider answered 500 to every attempt",
    }
    with connection, connection.cursor() as cursor:
        # The per-message plan is held in memory once, for both the messages and their history.
        cursor.execute("SET LOCAL work_mem = '256MB'")
        for statement in (
            _PLAN_CONVERSATIONS,
            _INSERT_CONVERSATIONS,
            _INSERT_PARTICIPANTS,
            _INSERT_MESSAGES_AND_HISTORY,
            _SUM_UP_CONVERSATIONS,
        ):
            cursor.execute(statement, parameters)
        cursor.execute(_LOADED)
        first, conversations, messages, big_id, big_size, entries = cursor.fetchone()
    return Loaded(first, conversations, messages, entries, big_id, big_size)


def refresh_statistics(owner_url: str) -> None:
    """The runtime role may not analyze; the owner does, and vacuums so that index-only scans work."""
    connection = psycopg2.connect(owner_url)
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            for table in _TABLES:
                cursor.execute(f"VACUUM (ANALYZE) {table}")
    finally:
        connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=1_000_000, help="messages in all (default 1,000,000)")
    parser.add_argument(
        "--big", type=int, help=f"messages of the one big conversation (default {BIG_CONVERSATION:,} or a tenth)"
    )
    parser.add_argument("--random-seed", type=int, help="makes the conversations' sizes and times repeatable")
    arguments = parser.parse_args()
    big = arguments.big if arguments.big is not None else min(BIG_CONVERSATION, arguments.messages // 10)
    if not 1 <= big <= arguments.messages:
        parser.error("--messages must be at least 10, and --big between 1 and --messages")
    settings = load_settings(MigrationSettings)

    started = time.monotonic()
    seed_plan = plan(arguments.messages, big, random.Random(arguments.random_seed), datetime.now(UTC))
    connection = psycopg2.connect(settings.database_url)
    try:
        loaded = load(connection, seed_plan)
    finally:
        connection.close()
    loaded_in = time.monotonic() - started
    refresh_statistics(settings.database_owner_url)
    last_id = loaded.first_conversation_id + loaded.conversations - 1
    print(
        f"seeded {loaded.messages:,} messages ({loaded.status_entries:,} status entries) in "
        f"{loaded.conversations:,} conversations, ids {loaded.first_conversation_id}-{last_id}, for account "
        f"{DEVELOPMENT_ACCOUNT_ID}; the big one is conversation {loaded.big_conversation_id} "
        f"({loaded.big_conversation_messages:,} messages)"
    )
    print(f"took {loaded_in:.1f}s to load and {time.monotonic() - started - loaded_in:.1f}s to vacuum and analyze")


if __name__ == "__main__":
    main()
