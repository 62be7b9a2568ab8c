"""Accounts, the addresses they own and their API keys; conversations, messages and Idempotency-Keys
belong to an account.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 00:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY, UUID

from common.accounts import DEVELOPMENT_ACCOUNT_ID, DEVELOPMENT_ACCOUNT_NAME

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _account_column() -> sa.Column:
    return sa.Column("account_id", UUID(as_uuid=True), nullable=True)


def _account_key(table: str) -> None:
    op.create_foreign_key(f"fk_{table}_account_id_accounts", table, "accounts", ["account_id"], ["id"])


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("id", UUID(as_uuid=True), nullable=False, server_default=sa.text("gen_random_uuid()")),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("id", name="pk_accounts"),
        sa.UniqueConstraint("name", name="uq_accounts_name"),
    )
    # Everything stored before accounts existed was the development profile's: it becomes that account's.
    op.execute(
        sa.text("INSERT INTO accounts (id, name) VALUES (:id, :name)").bindparams(
            id=str(DEVELOPMENT_ACCOUNT_ID), name=DEVELOPMENT_ACCOUNT_NAME
        )
    )

    op.create_table(
        "account_addresses",
        # Normalized (E.164, a lower-cased email, or a lower-cased `@domain`): the primary key makes an
        # address owned by one account at most.
        sa.Column("address", sa.Text, nullable=False),
        sa.Column("account_id", UUID(as_uuid=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("address", name="pk_account_addresses"),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name="fk_account_addresses_account_id_accounts", ondelete="CASCADE"
        ),
    )
    op.create_index("ix_account_addresses_account_id", "account_addresses", ["account_id"])

    op.create_table(
        "api_keys",
        # The key's visible part, which names it in lists, logs and `keys revoke`.
        sa.Column("prefix", sa.Text, nullable=False),
        # SHA-256 of the whole key: the key itself is never stored.
        sa.Column("key_hash", sa.Text, nullable=False),
        sa.Column("account_id", UUID(as_uuid=True), nullable=False),
        sa.Column("scopes", ARRAY(sa.Text), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        # Recorded at most once a minute: a busy key is not a write per request.
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("prefix", name="pk_api_keys"),
        sa.UniqueConstraint("key_hash", name="uq_api_keys_key_hash"),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name="fk_api_keys_account_id_accounts", ondelete="CASCADE"
        ),
        sa.CheckConstraint(
            "cardinality(scopes) > 0 AND scopes <@ ARRAY['send', 'read']::text[]", name="ck_api_keys_scopes"
        ),
    )
    op.create_index("ix_api_keys_account_id", "api_keys", ["account_id"])

    development = sa.text(f"'{DEVELOPMENT_ACCOUNT_ID}'::uuid")

    op.add_column("conversations", _account_column())
    op.execute(sa.update(sa.table("conversations", sa.column("account_id"))).values(account_id=development))
    op.alter_column("conversations", "account_id", nullable=False)
    _account_key("conversations")
    op.drop_constraint("uq_conversations_participant_key", "conversations", type_="unique")
    op.create_unique_constraint(
        "uq_conversations_account_id_participant_key", "conversations", ["account_id", "participant_key"]
    )
    op.drop_index("ix_conversations_activity", "conversations")
    op.create_index(
        "ix_conversations_account_activity",
        "conversations",
        ["account_id", sa.text("last_message_at DESC"), sa.text("id DESC")],
    )

    op.add_column("messages", _account_column())
    op.execute(
        "UPDATE messages SET account_id = conversations.account_id FROM conversations "
        "WHERE conversations.id = messages.conversation_id"
    )
    op.alter_column("messages", "account_id", nullable=False)
    _account_key("messages")

    op.add_column("idempotency_keys", _account_column())
    op.execute(sa.update(sa.table("idempotency_keys", sa.column("account_id"))).values(account_id=development))
    op.alter_column("idempotency_keys", "account_id", nullable=False)
    _account_key("idempotency_keys")
    op.drop_constraint("pk_idempotency_keys", "idempotency_keys", type_="primary")
    op.create_primary_key("pk_idempotency_keys", "idempotency_keys", ["account_id", "key"])


def downgrade() -> None:
    # Fails, changing nothing, where two accounts share a participant set or an Idempotency-Key: one
    # of them would have to lose data.
    op.drop_constraint("pk_idempotency_keys", "idempotency_keys", type_="primary")
    op.create_primary_key("pk_idempotency_keys", "idempotency_keys", ["key"])
    op.drop_constraint("fk_idempotency_keys_account_id_accounts", "idempotency_keys", type_="foreignkey")
    op.drop_column("idempotency_keys", "account_id")

    op.drop_constraint("fk_messages_account_id_accounts", "messages", type_="foreignkey")
    op.drop_column("messages", "account_id")

    op.drop_index("ix_conversations_account_activity", "conversations")
    op.create_index("ix_conversations_activity", "conversations", [sa.text("last_message_at DESC"), sa.text("id DESC")])
    op.drop_constraint("uq_conversations_account_id_participant_key", "conversations", type_="unique")
    op.create_unique_constraint("uq_conversations_participant_key", "conversations", ["participant_key"])
    op.drop_constraint("fk_conversations_account_id_accounts", "conversations", type_="foreignkey")
    op.drop_column("conversations", "account_id")

    op.drop_table("api_keys")
    op.drop_table("account_addresses")
    op.drop_table("accounts")
