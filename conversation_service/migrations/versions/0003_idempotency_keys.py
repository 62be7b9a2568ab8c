"""Clients' Idempotency-Keys on sends, kept durably so they hold across restarts and replicas.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21 00:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "idempotency_keys",
        sa.Column("key", sa.Text, nullable=False),
        # What the first request asked for; the same key with another request is refused.
        sa.Column("request_fingerprint", sa.Text, nullable=False),
        sa.Column("message_id", UUID(as_uuid=True), nullable=False),
        # The SendMessage the first request made, so a repeat can answer and, if the first publish
        # never completed, publish exactly the same command.
        sa.Column("command", JSONB, nullable=False),
        # The key expires this long after it was first used (or reused after it expired).
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        # When a request last took on publishing the command: a repeat waits for it to finish, and
        # takes over once the claim is so old that its gateway must have died before publishing.
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("key", name="pk_idempotency_keys"),
    )
    op.create_index("ix_idempotency_keys_created_at", "idempotency_keys", ["created_at"])


def downgrade() -> None:
    op.drop_table("idempotency_keys")
