"""Each message's JSON, as a page lists it, kept in its row.

Building it took PostgreSQL about half of a messages page (its row and four timestamps for each of
fifty messages) and, for a conversations page, most of each conversation's last message. Written
with the row, it costs about 5 µs per row written; a page reads it as it is. A trigger writes it, so
that no statement that inserts or changes a message can leave it stale.

It is the shape of common.conversations.MessageView as conversation_service.reads builds it: a
change to either needs a migration that replaces this function and writes every row's view again
(`test_each_message_keeps_the_json_a_page_would_build_for_it` fails until then).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 00:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _utc(column: str) -> str:
    # Alembic reads the SQL as a text() clause, in which a bare colon starts a parameter.
    return rf"""replace(to_char(timezone('UTC', NEW.{column}), 'YYYY-MM-DD"T"HH24\:MI\:SS.US"Z"'), '.000000Z', 'Z')"""


_VIEW = (
    "(SELECT row_to_json(messageview) FROM (SELECT NEW.id AS id, NEW.conversation_id AS conversation_id, "
    'NEW.direction AS direction, NEW.type AS type, NEW.from_address AS "from", NEW.to_address AS "to", '
    "NEW.body AS body, NEW.attachments AS attachments, NEW.status AS status, NEW.provider AS provider, "
    "NEW.provider_message_id AS provider_message_id, NEW.attempts AS attempts, NEW.last_error AS last_error, "
    f"{_utc('timestamp')} AS timestamp, {_utc('created_at')} AS created_at, {_utc('updated_at')} AS updated_at, "
    f"{_utc('status_changed_at')} AS status_changed_at) AS messageview)"
)


def upgrade() -> None:
    op.add_column("messages", sa.Column("view", sa.JSON, nullable=True))
    op.execute(
        "CREATE FUNCTION message_view() RETURNS trigger LANGUAGE plpgsql AS $$ "
        f"BEGIN NEW.view := {_VIEW}; RETURN NEW; END $$"
    )
    op.execute(
        "CREATE TRIGGER message_view BEFORE INSERT OR UPDATE ON messages FOR EACH ROW EXECUTE FUNCTION message_view()"
    )
    # Each row rewritten once, through the trigger.
    op.execute("UPDATE messages SET view = NULL")
    op.alter_column("messages", "view", nullable=False)


def downgrade() -> None:
    op.execute("DROP TRIGGER message_view ON messages")
    op.execute("DROP FUNCTION message_view()")
    op.drop_column("messages", "view")
