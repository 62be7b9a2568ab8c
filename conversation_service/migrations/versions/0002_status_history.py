"""Every status a message reached, with when and what the provider said.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21 00:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "message_status_history",
        # No foreign key to messages: a delivery receipt can arrive before the message it reports on,
        # and is kept here until the message is stored.
        sa.Column("message_id", UUID(as_uuid=True), nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        # When the change happened, as the event that reported it says; not when it was stored.
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        # What the event reported, NULL where it says nothing: the message's own columns are derived
        # from these rows (see conversation_service.repository).
        sa.Column("attempts", sa.Integer, nullable=True),
        sa.Column("provider", sa.Text, nullable=True),
        sa.Column("provider_message_id", sa.Text, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        # One row per status: a replayed event finds its row taken.
        sa.PrimaryKeyConstraint("message_id", "status", name="pk_message_status_history"),
        sa.CheckConstraint(
            "status IN ('queued', 'sent', 'delivered', 'failed', 'received')",
            name="ck_message_status_history_status",
        ),
    )
    # Messages stored before this revision get the one status they hold, so that deriving a message
    # from its history does not forget what a later event leaves out (the attempts of its send).
    op.execute(
        "INSERT INTO message_status_history "
        "(message_id, status, occurred_at, attempts, provider, provider_message_id, error) "
        "SELECT id, status, status_changed_at, NULLIF(attempts, 0), provider, provider_message_id, last_error "
        "FROM messages"
    )


def downgrade() -> None:
    op.drop_table("message_status_history")
