"""The tables the repository reads and writes, as SQLAlchemy Core.

The migrations under `migrations/versions` create and change them; this module mirrors the head
revision and is never used to create anything.
"""

from collections.abc import Iterable

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, JSON, JSONB, UUID

from common.contracts import STATUS_RANK

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

accounts = sa.Table(
    "accounts",
    metadata,
    sa.Column("id", UUID(as_uuid=True), primary_key=True, server_default=sa.text("gen_random_uuid()")),
    sa.Column("name", sa.Text, nullable=False, unique=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)

account_addresses = sa.Table(
    "account_addresses",
    metadata,
    sa.Column("address", sa.Text, primary_key=True),
    sa.Column(
        "account_id", UUID(as_uuid=True), sa.ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False, index=True
    ),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("prefix", sa.Text, primary_key=True),
    sa.Column("key_hash", sa.Text, nullable=False, unique=True),
    sa.Column(
        "account_id", UUID(as_uuid=True), sa.ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False, index=True
    ),
    sa.Column("scopes", ARRAY(sa.Text), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint(
        "cardinality(scopes) > 0 AND scopes <@ ARRAY['send', 'read']::text[]", name="ck_api_keys_scopes"
    ),
)

conversations = sa.Table(
    "conversations",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(always=False), primary_key=True),
    sa.Column("account_id", UUID(as_uuid=True), sa.ForeignKey("accounts.id"), nullable=False),
    sa.Column("participant_key", sa.Text, nullable=False),
    sa.Column("channels", ARRAY(sa.Text), nullable=False, server_default=sa.text("'{}'")),
    sa.Column("message_count", sa.Integer, nullable=False, server_default=sa.text("0")),
    # use_alter: conversations and messages refer to each other, so this key is added after both exist.
    sa.Column(
        "last_message_id",
        UUID(as_uuid=True),
        sa.ForeignKey("messages.id", use_alter=True, name="fk_conversations_last_message_id_messages"),
        nullable=True,
    ),
    sa.Column("last_message_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    # The conversation as a page lists it, written by a trigger with every change of the row or of its
    # last message (migration 0007).
    sa.Column("view", JSON, nullable=False),
    sa.UniqueConstraint("account_id", "participant_key"),
    sa.Index("ix_conversations_account_activity", "account_id", sa.text("last_message_at DESC"), sa.text("id DESC")),
)

# Never part of an address written by the gateway, so joining with it cannot make two different
# sets of participants look alike.
PARTICIPANT_SEPARATOR = "\n"


def participant_key(participants: Iterable[str]) -> str:
    """`conversations.participant_key`: the participants sorted (code point order) and joined."""
    return PARTICIPANT_SEPARATOR.join(sorted(participants))


conversation_participants = sa.Table(
    "conversation_participants",
    metadata,
    sa.Column(
        "conversation_id", sa.BigInteger, sa.ForeignKey("conversations.id", ondelete="CASCADE"), primary_key=True
    ),
    sa.Column("address", sa.Text, primary_key=True),
    sa.Index("ix_conversation_participants_address", "address"),
)

messages = sa.Table(
    "messages",
    metadata,
    sa.Column("id", UUID(as_uuid=True), primary_key=True),
    sa.Column("seq", sa.BigInteger, sa.Identity(always=False), nullable=False, unique=True),
    sa.Column(
        "conversation_id",
        sa.BigInteger,
        sa.ForeignKey("conversations.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("account_id", UUID(as_uuid=True), sa.ForeignKey("accounts.id"), nullable=False),
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
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("status_changed_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    # The message as a page lists it, written by a trigger with every change of the row (migration 0006).
    sa.Column("view", JSON, nullable=False),
    sa.CheckConstraint("direction IN ('inbound', 'outbound')", name="ck_messages_direction"),
    sa.CheckConstraint("type IN ('sms', 'mms', 'email')", name="ck_messages_type"),
    sa.CheckConstraint("status IN ('queued', 'sent', 'delivered', 'failed', 'received')", name="ck_messages_status"),
    sa.UniqueConstraint("provider", "provider_message_id"),
    sa.Index("ix_messages_conversation_order", "conversation_id", "timestamp", "seq"),
)

message_status_history = sa.Table(
    "message_status_history",
    metadata,
    sa.Column("message_id", UUID(as_uuid=True), primary_key=True),
    sa.Column("status", sa.Text, primary_key=True),
    sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=True),
    sa.Column("provider", sa.Text, nullable=True),
    sa.Column("provider_message_id", sa.Text, nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.CheckConstraint(
        "status IN ('queued', 'sent', 'delivered', 'failed', 'received')", name="ck_message_status_history_status"
    ),
)

_history_rank = sa.case(
    {status.value: rank for status, rank in STATUS_RANK.items()}, value=message_status_history.c.status
)
# A message's outcome is the highest rank; of two final ones (a provider that reported delivered and
# failed), the first to happen, whatever order they arrive in.
OUTCOME_FIRST = (_history_rank.desc(), message_status_history.c.occurred_at, message_status_history.c.status)
# Lifecycle order, not time alone: providers date receipts on their own clocks, some to the whole
# second, which could put a `delivered` before the `queued` it followed. Provider ids are taken from
# the lowest rank that has one: as the provider answered the send, not as a receipt spells them
# (SendGrid's events suffix the id its send answered with).
SEND_FIRST = (_history_rank, message_status_history.c.occurred_at, message_status_history.c.status)

pending_receipts = sa.Table(
    "pending_receipts",
    metadata,
    sa.Column("message_id", UUID(as_uuid=True), primary_key=True),
    sa.Column("status", sa.Text, primary_key=True),
    sa.Column("channel", sa.Text, nullable=False),
    sa.Column("provider", sa.Text, nullable=False),
    sa.Column("provider_message_id", sa.Text, nullable=False),
    sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.CheckConstraint("status IN ('delivered', 'failed')", name="ck_pending_receipts_status"),
    sa.Index("ix_pending_receipts_received_at", "received_at"),
)

idempotency_keys = sa.Table(
    "idempotency_keys",
    metadata,
    sa.Column("account_id", UUID(as_uuid=True), sa.ForeignKey("accounts.id"), primary_key=True),
    sa.Column("key", sa.Text, primary_key=True),
    sa.Column("request_fingerprint", sa.Text, nullable=False),
    sa.Column("message_id", UUID(as_uuid=True), nullable=False),
    sa.Column("command", JSONB, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
    sa.Index("ix_idempotency_keys_created_at", "created_at"),
)
