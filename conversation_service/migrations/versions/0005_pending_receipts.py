"""Delivery receipts that wait for the send they report on, apart from the message's history.

A receipt now applies only once it is checked against its send (channel, provider, provider id,
time), so one that arrives first waits here instead of in the history, and expires if its send
never comes. Receipts that earlier revisions kept in the history for messages never stored move here.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 00:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "pending_receipts",
        # No foreign key: the message itself may not be stored yet.
        sa.Column("message_id", UUID(as_uuid=True), nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        # The receipt's channel and provider, checked against the send's once it is known.
        sa.Column("channel", sa.Text, nullable=False),
        sa.Column("provider", sa.Text, nullable=False),
        sa.Column("provider_message_id", sa.Text, nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("error", sa.Text, nullable=True),
        # A receipt whose send never comes is dropped this long after it arrived.
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        # A replayed receipt finds its row taken.
        sa.PrimaryKeyConstraint("message_id", "status", name="pk_pending_receipts"),
        sa.CheckConstraint("status IN ('delivered', 'failed')", name="ck_pending_receipts_status"),
    )
    op.create_index("ix_pending_receipts_received_at", "pending_receipts", ["received_at"])
    op.execute(
        "INSERT INTO pending_receipts "
        "(message_id, status, channel, provider, provider_message_id, occurred_at, error) "
        "SELECT h.message_id, h.status, "
        "CASE WHEN h.provider = 'email-provider' THEN 'email' ELSE 'sms' END, "
        "h.provider, h.provider_message_id, h.occurred_at, h.error "
        "FROM message_status_history h "
        "WHERE h.status IN ('delivered', 'failed') AND h.provider IS NOT NULL AND h.provider_message_id IS NOT NULL "
        "AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.id = h.message_id)"
    )
    op.execute(
        "DELETE FROM message_status_history h WHERE NOT EXISTS (SELECT 1 FROM messages m WHERE m.id = h.message_id)"
    )


def downgrade() -> None:
    op.drop_index("ix_pending_receipts_received_at", table_name="pending_receipts")
    op.drop_table("pending_receipts")
