"""Each conversation's JSON, as a page lists it, kept in its row, its last message's included.

Building it (participants split, channels sorted, two timestamps) and fetching its last message's
`view` (0006) by a lookup into `messages` per conversation was most of what PostgreSQL still did for
a conversations page; with `messages` larger than the buffer cache, those lookups were reads from
the OS. A trigger writes it with every change of the conversation row, which changes with every
message added anyway, and a second one writes it again when its last message changes (a status).

It is the shape of common.conversations.ConversationView as conversation_service.reads builds it: a
change to either needs a migration that replaces these functions and writes every row's view again
(`test_each_conversation_keeps_the_json_a_page_would_build_for_it` fails until then).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 13:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _utc(column: str) -> str:
    # Alembic reads the SQL as a text() clause, in which a bare colon starts a parameter.
    return rf"""replace(to_char(timezone('UTC', NEW.{column}), 'YYYY-MM-DD"T"HH24\:MI\:SS.US"Z"'), '.000000Z', 'Z')"""


_VIEW = (
    "(SELECT row_to_json(conversationview) FROM (SELECT NEW.id AS id, "
    "array_to_json(string_to_array(NEW.participant_key, E'\\n')) AS participants, "
    """(SELECT coalesce(array_to_json(array_agg(channels.channel ORDER BY channels.channel COLLATE "C")), """
    "'[]'::json) FROM unnest(NEW.channels) AS channels(channel)) AS channels, NEW.message_count AS message_count, "
    "(SELECT view FROM messages WHERE id = NEW.last_message_id) AS last_message, "
    f"{_utc('last_message_at')} AS last_message_at, {_utc('created_at')} AS created_at) AS conversationview)"
)


def upgrade() -> None:
    op.add_column("conversations", sa.Column("view", sa.JSON, nullable=True))
    op.execute(
        "CREATE FUNCTION conversation_view() RETURNS trigger LANGUAGE plpgsql AS $$ "
        f"BEGIN NEW.view := {_VIEW}; RETURN NEW; END $$"
    )
    op.execute(
        "CREATE TRIGGER conversation_view BEFORE INSERT OR UPDATE ON conversations "
        "FOR EACH ROW EXECUTE FUNCTION conversation_view()"
    )
    # Once per statement, for all the messages it changed: a batch's statuses rewrite each
    # conversation whose last message they are once, through the trigger above.
    op.execute(
        "CREATE FUNCTION last_message_view() RETURNS trigger LANGUAGE plpgsql AS $$ "
        "BEGIN UPDATE conversations SET view = NULL FROM changed "
        "WHERE conversations.id = changed.conversation_id AND conversations.last_message_id = changed.id; "
        "RETURN NULL; END $$"
    )
    op.execute(
        "CREATE TRIGGER last_message_view AFTER UPDATE ON messages REFERENCING NEW TABLE AS changed "
        "FOR EACH STATEMENT EXECUTE FUNCTION last_message_view()"
    )
    # Each row rewritten once, through the trigger.
    op.execute("UPDATE conversations SET view = NULL")
    op.alter_column("conversations", "view", nullable=False)


def downgrade() -> None:
    op.execute("DROP TRIGGER last_message_view ON messages")
    op.execute("DROP FUNCTION last_message_view()")
    op.execute("DROP TRIGGER conversation_view ON conversations")
    op.execute("DROP FUNCTION conversation_view()")
    op.drop_column("conversations", "view")
