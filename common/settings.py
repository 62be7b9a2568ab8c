"""Settings every service shares; each service extends `ServiceSettings` with its own knobs.

Only a service's `main()` instantiates these from the environment; `create_app` takes them as an
argument so tests can build any configuration without touching `os.environ`.
"""

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ProcessSettings(BaseSettings):
    """What every process has, the mock providers included."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    bind_host: str = Field("127.0.0.1", description="Interface the HTTP server binds to")
    log_level: str = "INFO"
    log_format: Literal["json", "text"] = Field(
        "json", description="json: one object per line, for log shippers; text: for reading in a terminal"
    )


class ServiceSettings(ProcessSettings):
    amqp_url: str = Field("amqp://guest:guest@127.0.0.1:5672/", description="RabbitMQ connection URL")
    broker_namespace: str = Field(
        "",
        description="Prefix for every exchange and queue name, so several deployments (or a test run) "
        "can share one RabbitMQ vhost without seeing each other's messages",
    )
    consumer_prefetch: int = Field(
        32,
        ge=1,
        description="Unacknowledged deliveries a consumer holds, and so works on, at once: each runs in a task "
        "of its own, so a send waiting out a provider's backoff holds one of these slots (for up to "
        "PROVIDER_DEADLINE_SECONDS) while the others go on. Size it above the sends you expect to be "
        "retrying at the same time; past it, new messages wait on the queue",
    )
    delivery_limit: int = Field(20, ge=1, description="Deliveries of one message before the broker dead-letters it")
    shutdown_grace_seconds: float = Field(
        10.0, gt=0, description="How long a stopping consumer waits for in-flight messages"
    )


class DatabaseSettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    database_url: str = Field(
        "postgresql://messaging_user:messaging_password@127.0.0.1:5432/messaging_service",
        description="PostgreSQL URL of the service's own database",
    )
    database_admin_url: str = Field(
        "postgresql://postgres:postgres@127.0.0.1:5432/postgres",
        description="A superuser URL, used only by the migrate command to create the role and database",
    )
    database_pool_size: int = Field(10, ge=1)
