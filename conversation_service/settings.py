from typing import Self

from pydantic import Field, model_validator
from yarl import URL

from common.settings import (
    DatabaseSettings,
    PageSettings,
    ProcessSettings,
    ServiceSettings,
    ServiceTokenSettings,
    secret,
)


class ConversationSettings(ServiceSettings, DatabaseSettings, ServiceTokenSettings, PageSettings):
    conversation_service_port: int = 8083
    database_retry_max_interval_seconds: float = Field(
        2.0,
        gt=0,
        description="Longest pause between two tries of a write while the database is unreachable. A write "
        "retries for as long as the database stays away: its message stays unacked, the rest wait on the queue",
    )
    # Measured with `make bench` (10,000 webhooks at 64 in flight, alternately with the reference): with
    # 32 in hand, one batch wrote while at most the rest of the 32 gathered, and batches averaged 15
    # events; 256 in hand with batches of up to 128 took ingestion from 0.45x to 0.55x the reference.
    consumer_prefetch: int = Field(
        256,
        ge=1,
        description="Deliveries conversation_service holds at once, unacked: the batch being written and the "
        "next one gathering. The channel services' default is 32, since theirs are sends in flight; set it "
        "per process",
    )
    write_batch_size: int = Field(
        128,
        ge=1,
        description="Message events written in one transaction at most; each delivery is acked after its "
        "batch committed. At most CONSUMER_PREFETCH, the deliveries in hand",
    )
    write_batch_wait_seconds: float = Field(
        0.002,
        ge=0,
        description="How long the first event of a batch waits for others to join it before the batch is written",
    )
    idempotency_key_ttl_seconds: float = Field(
        86_400.0, gt=0, description="How long a client's Idempotency-Key holds; after that it is a new send"
    )
    idempotency_purge_interval_seconds: float = Field(
        3600.0, gt=0, description="How often expired Idempotency-Keys are deleted"
    )
    idempotency_claim_seconds: float = Field(
        10.0,
        gt=0,
        description="How long a repeat of a send waits for the first one to publish before it publishes "
        "the same command itself (the first one's gateway presumed dead)",
    )

    receipt_clock_skew_seconds: float = Field(
        60.0,
        ge=0,
        description="How far past our clock a provider may date a delivery receipt; a later date is taken as now "
        "and this much (an earlier one than the send's, as the send's)",
    )
    receipt_wait_seconds: float = Field(
        3600.0,
        gt=0,
        description="How long a delivery receipt that came before its send's answer waits for it; then it is "
        "dropped, since it can never be checked against the send",
    )
    receipt_expiry_interval_seconds: float = Field(
        300.0, gt=0, description="How often receipts that waited past RECEIPT_WAIT_SECONDS are dropped"
    )

    @model_validator(mode="after")
    def batch_fits_prefetch(self) -> Self:
        # Fewer deliveries in hand than a batch holds: every batch would wait out its whole wait.
        if self.write_batch_size > self.consumer_prefetch:
            raise ValueError("WRITE_BATCH_SIZE must not exceed CONSUMER_PREFETCH")
        return self


class MigrationSettings(ProcessSettings, DatabaseSettings):
    """What the migrate command needs: it alone changes the schema, as the database's owner, and lets
    `database_url`'s role (the services' and bin/admin's) read and write the tables, nothing more."""

    database_owner_url: str = secret(
        "postgresql://messaging_user:messaging_password@127.0.0.1:5432/messaging_service",
        "PostgreSQL URL of the role that owns the database and runs the migrations; the services never use it",
    )

    @model_validator(mode="after")
    def one_database(self) -> Self:
        # Otherwise a DATABASE_URL moved alone (to a test database, say) would have the migrations
        # change the database the owner URL still names, and grant on it.
        runtime, owner = URL(self.database_url), URL(self.database_owner_url)
        if (runtime.host, runtime.port, runtime.path) != (owner.host, owner.port, owner.path):
            raise ValueError("DATABASE_URL and DATABASE_OWNER_URL must name the same database (host, port, name)")
        return self
