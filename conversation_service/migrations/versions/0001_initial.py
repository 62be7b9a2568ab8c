"""Conversations, their participants and their messages.

Revision ID: 0001
Revises:
Create Date: 2024-11-01 00:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _timestamps() -> list[sa.Column]:
    return [
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    ]


def upgrade() -> None:
    op.create_table(
        "conversations",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), nullable=False),
        # The conversation's participants, normalized, sorted and joined: A→B and B→A share one key.
        sa.Column("participant_key", sa.Text, nullable=False),
        sa.Column("channels", ARRAY(sa.Text), nullable=False, server_default=sa.text("'{}'")),
        sa.Column("message_count", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("last_message_id", UUID(as_uuid=True), nullable=True),
        sa.Column("last_message_at", sa.DateTime(timezone=True), nullable=False),
        *_timestamps(),
        sa.PrimaryKeyConstraint("id", name="pk_conversations"),
        sa.UniqueConstraint("participant_key", name="uq_conversations_participant_key"),
    )
    op.create_index("ix_conversations_activity", "conversations", [sa.text("last_message_at DESC"), sa.text("id DESC")])

    op.create_table(
        "conversation_participants",
        sa.Column("conversation_id", sa.BigInteger, nullable=False),
        sa.Column("address", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("conversation_id", "address", name="pk_conversation_participants"),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name="fk_conversation_participants_conversation_id_conversations",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_conversation_participants_address", "conversation_participants", ["address"])

    op.create_table(
        "messages",
        # The contract's message_id: derived from the provider's id or the client's Idempotency-Key,
        # so a replayed event hits this key instead of creating a second row.
        sa.Column("id", UUID(as_uuid=True), nullable=False),
        # Orders messages with equal timestamps by arrival, and makes keyset pagination total.
        sa.Column("seq", sa.BigInteger, sa.Identity(always=False), nullable=False),
        sa.Column("conversation_id", sa.BigInteger, nullable=False),
        sa.Column("direction", sa.Text, nullable=False),
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("from_address", sa.Text, nullable=False),
        sa.Column("to_address", sa.Text, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("attachments", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("provider", sa.Text, nullable=True),
        sa.Column("provider_message_id", sa.Text, nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("timestamp", sa.DateTime(timezone=True), nullable=False),
        *_timestamps(),
        sa.Column("status_changed_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("id", name="pk_messages"),
        sa.UniqueConstraint("seq", name="uq_messages_seq"),
        sa.UniqueConstraint("provider", "provider_message_id", name="uq_messages_provider_provider_message_id"),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name="fk_messages_conversation_id_conversations",
            ondelete="CASCADE",
        ),
        sa.CheckConstraint("direction IN ('inbound', 'outbound')", name="ck_messages_direction"),
        sa.CheckConstraint("type IN ('sms', 'mms', 'email')", name="ck_messages_type"),
        sa.CheckConstraint(
            "status IN ('queued', 'sent', 'delivered', 'failed', 'received')", name="ck_messages_status"
        ),
    )
    op.create_index("ix_messages_conversation_order", "messages", ["conversation_id", "timestamp", "seq"])

    op.create_foreign_key(
        "fk_conversations_last_message_id_messages", "conversations", "messages", ["last_message_id"], ["id"]
    )


def downgrade() -> None:
    op.drop_constraint("fk_conversations_last_message_id_messages", "conversations", type_="foreignkey")
    op.drop_table("messages")
    op.drop_table("conversation_participants")
    op.drop_table("conversations")
