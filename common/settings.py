"""Settings every service shares; each service extends `ServiceSettings` with its own knobs.

Only a service's `main()` instantiates these from the environment; `create_app` takes them as an
argument so tests can build any configuration without touching `os.environ`.
"""

import ipaddress
from enum import StrEnum
from typing import Any, Literal, Self, TypeVar

from pydantic import Field, ValidationError, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, SettingsConfigDict
from yarl import URL

SettingsT = TypeVar("SettingsT", bound=BaseSettings)


class Profile(StrEnum):
    # Loopback only, no keys needed (the built-in development account), unsigned webhooks accepted.
    DEVELOPMENT = "development"
    # Keys and webhook signatures required; no secret may be missing or left at a default.
    PRODUCTION = "production"


def secret(default: Any, description: str, **options: Any) -> Any:
    """A field that production refuses to start with while it is empty or still `default`.

    For a URL, "still the default" also means its password is the default URL's (or `guest`, or
    missing), so a development credential cannot ride along under another host name.
    """
    return Field(default, description=description, json_schema_extra={"secret": True}, **options)


# Credentials that ship in public images and tutorials: never acceptable in production.
_WELL_KNOWN_PASSWORDS = frozenset({"guest", "postgres", "password", "changeme", "secret"})


def _is_default(value: Any, field: FieldInfo) -> bool:
    if value is None or value == "" or value == field.default:
        return True
    if isinstance(value, str) and "," in value and "://" in value:
        # A cluster's URLs (AMQP_URL): each one must have its own secret.
        return any(_is_default(url.strip(), field) for url in value.split(","))
    # A credential URL (its default is one): its password must be its own. A URL that carries no
    # credential (a public origin) only has to be set.
    if isinstance(value, str) and "://" in value and isinstance(field.default, str) and "://" in field.default:
        password = URL(value).password
        return not password or password == URL(field.default).password or password in _WELL_KNOWN_PASSWORDS
    return False


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ProcessSettings(BaseSettings):
    """What every process has, the mock providers included."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    messaging_profile: Profile = Field(
        Profile.DEVELOPMENT,
        description="development: loopback only, no keys needed, unsigned webhooks accepted; "
        "production: keys and signatures required, and no secret may be missing or a default",
    )
    bind_host: str = Field(
        "127.0.0.1", description="Interface the HTTP server binds to; loopback only in the development profile"
    )
    log_level: str = "INFO"
    log_format: Literal["json", "text"] = Field(
        "json", description="json: one object per line, for log shippers; text: for reading in a terminal"
    )
    log_summary_interval_seconds: float = Field(
        60.0,
        gt=0,
        description="How often a process logs, at INFO, how many requests and messages it handled by kind and "
        "outcome since the last summary (none when idle); each request and message is logged only at DEBUG",
    )

    @model_validator(mode="after")
    def profile_holds(self) -> Self:
        """Development listens on loopback only; production has every secret set to its own value.

        Every problem is named at once, by its environment variable, so an operator fixes them in one go.
        """
        if self.messaging_profile is Profile.DEVELOPMENT:
            if not is_loopback(self.bind_host):
                raise ValueError(
                    f"BIND_HOST={self.bind_host} is not a loopback address, and the development profile "
                    "serves loopback only (its requests need no key); set MESSAGING_PROFILE=production"
                )
            return self
        missing = [
            name.upper()
            for name, field in type(self).model_fields.items()
            if isinstance(field.json_schema_extra, dict)
            and field.json_schema_extra.get("secret")
            and _is_default(getattr(self, name), field)
        ]
        if missing:
            raise ValueError(
                "the production profile needs its own value for each of: "
                + ", ".join(missing)
                + " (each is missing, empty or still a default)"
            )
        return self


class ServiceSettings(ProcessSettings):
    amqp_url: str = secret(
        "amqp://guest:guest@127.0.0.1:5672/",
        "RabbitMQ connection URL; for a cluster, each node's URL, comma-separated: a lost connection is "
        "made again to the next node in turn",
    )
    broker_namespace: str = Field(
        "",
        description="Prefix for every exchange and queue name, so several deployments (or a test run) "
        "can share one RabbitMQ vhost without seeing each other's messages",
    )
    consumer_prefetch: int = Field(
        32,
        ge=1,
        description="Unacknowledged deliveries a consumer holds, and messages it works on at once (a bundle's "
        "counted one by one): each runs in a task of its own, so a send waiting out a provider's backoff holds "
        "one of these slots (for up to PROVIDER_DEADLINE_SECONDS) while the others go on. Size it above the "
        "sends you expect to be retrying at the same time; past it, new messages wait on the queue",
    )
    delivery_limit: int = Field(20, ge=1, description="Deliveries of one message before the broker dead-letters it")
    # Measured with `make bench` (see README, Bundled publishes).
    publish_bundle_limit: int = Field(
        64,
        ge=1,
        description="Most messages published together as one bundle: those published while PUBLISHES_IN_FLIGHT "
        "earlier ones wait for the broker's confirm go together once one is confirmed; 1 publishes each alone",
    )
    publishes_in_flight: int = Field(
        1,
        ge=1,
        description="Publishes (each a message or a bundle) that wait for the broker's confirm at once; past "
        "them, what is published waits to go in the next bundle",
    )
    shutdown_grace_seconds: float = Field(
        10.0, gt=0, description="How long a stopping consumer waits for in-flight messages"
    )
    queue_max_length: int = Field(
        100_000,
        ge=1,
        description="Ready messages one queue holds; past it the broker refuses a publish to it and the "
        "gateway answers 503 with Retry-After, so a stalled consumer cannot fill the broker's memory. A queue "
        "argument: changing it takes `make migrate-queues` (see README, Limits)",
    )
    consumer_hold_seconds: float = Field(
        600.0,
        gt=0,
        description="While a consumer is paused (conversation_service while the database is away), how long "
        "after a delivery arrived it keeps working on it before handing it back to the queue as a fresh copy, "
        "uncounted. Keep it below the broker's consumer_timeout (30 minutes by default), past which the "
        "broker takes it back itself and counts a delivery",
    )
    consumer_pause_check_seconds: float = Field(
        1.0,
        gt=0,
        description="How often conversation_service's consumer asks whether the database answers: it pauses "
        "at the first check that fails and resumes at the first that passes",
    )

    @property
    def amqp_urls(self) -> list[str]:
        return [url.strip() for url in self.amqp_url.split(",") if url.strip()]


class DatabaseSettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    database_url: str = secret(
        "postgresql://messaging_app:messaging_app_password@127.0.0.1:5432/messaging_service",
        "PostgreSQL URL of the service's own database, as its runtime role: it reads and writes rows, and "
        "may not change the schema (DATABASE_OWNER_URL, used by the migrate command, does)",
    )
    database_admin_url: str = Field(
        "postgresql://postgres:postgres@127.0.0.1:5432/postgres",
        description="A superuser URL, used only by the migrate command to create the roles and database",
    )
    database_pool_size: int = Field(10, ge=1)


class ServiceTokenSettings(BaseSettings):
    """The token the gateway shows conversation_service on every internal call."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    internal_service_token: str = secret(
        "development-internal-service-token",
        "Bearer token of internal HTTP calls (gateway to conversation_service); conversation_service "
        "refuses calls without it",
        min_length=16,
    )


class PageSettings(BaseSettings):
    """The read API's page sizes: conversation_service enforces them and the gateway documents them in
    its OpenAPI description, each from its own environment, so both read the same variables."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    default_page_size: int = Field(50, ge=1, description="Page size of a list read that names no `limit`")
    max_page_size: int = Field(200, ge=1, description="Largest `limit` a list read accepts")

    @model_validator(mode="after")
    def default_page_fits(self) -> Self:
        if self.default_page_size > self.max_page_size:
            raise ValueError("default_page_size must not exceed max_page_size")
        return self


def load_settings(kind: type[SettingsT]) -> SettingsT:
    """A process's settings from its environment and `.env`; invalid ones end the process, naming each."""
    try:
        return kind()
    except ValidationError as error:
        problems = "\n".join(
            f"  {'.'.join(str(part) for part in item['loc']).upper() or 'settings'}: "
            f"{item['msg'].removeprefix('Value error, ')}"
            for item in error.errors(include_url=False)
        )
        raise SystemExit(f"cannot start: invalid settings\n{problems}") from None
