"""The service's knobs come from the environment under their documented names."""

import pytest
from pydantic import ValidationError

from conversation_service.settings import ConversationSettings, MigrationSettings


def test_knobs_are_read_from_their_environment_names(monkeypatch: pytest.MonkeyPatch) -> None:
    # Production, as a non-loopback BIND_HOST needs, with every secret its own.
    monkeypatch.setenv("MESSAGING_PROFILE", "production")
    monkeypatch.setenv("CONVERSATION_SERVICE_PORT", "18083")
    monkeypatch.setenv("BIND_HOST", "127.0.0.2")
    monkeypatch.setenv("MAX_PAGE_SIZE", "500")
    monkeypatch.setenv("DATABASE_URL", "postgresql://someone:s3cr3t-of-its-own@db:5432/conversations")
    monkeypatch.setenv("AMQP_URL", "amqp://messaging:broker-pass-of-its-own@rabbitmq:5672/")
    monkeypatch.setenv("INTERNAL_SERVICE_TOKEN", "a-token-of-its-own-and-long")

    settings = ConversationSettings(_env_file=None)

    assert (settings.conversation_service_port, settings.bind_host) == (18083, "127.0.0.2")
    assert (settings.default_page_size, settings.max_page_size) == (50, 500)
    assert settings.database_url == "postgresql://someone:s3cr3t-of-its-own@db:5432/conversations"
    assert settings.internal_service_token == "a-token-of-its-own-and-long"


def test_a_default_page_larger_than_the_maximum_is_refused() -> None:
    with pytest.raises(ValidationError, match="default_page_size must not exceed max_page_size"):
        ConversationSettings(default_page_size=300, max_page_size=200)


def test_a_write_batch_larger_than_the_deliveries_in_hand_is_refused() -> None:
    # It could never fill: every batch would wait out its whole wait.
    with pytest.raises(ValidationError, match="WRITE_BATCH_SIZE must not exceed CONSUMER_PREFETCH"):
        ConversationSettings(write_batch_size=64, consumer_prefetch=32)


def test_the_migrations_owner_and_runtime_role_must_share_one_database() -> None:
    with pytest.raises(ValidationError, match="must name the same database"):
        MigrationSettings(
            database_url="postgresql://messaging_app:pw@127.0.0.1:5432/messaging_service_test_1",
            database_owner_url="postgresql://messaging_user:pw@127.0.0.1:5432/messaging_service",
        )


def test_production_refuses_a_default_or_missing_owner_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESSAGING_PROFILE", "production")
    monkeypatch.setenv("DATABASE_URL", "postgresql://messaging_app:runtime-pass-of-its-own@db:5432/messaging")

    for owner in (
        "postgresql://messaging_user:messaging_password@db:5432/messaging",
        "postgresql://messaging_user@db:5432/messaging",
    ):
        monkeypatch.setenv("DATABASE_OWNER_URL", owner)
        with pytest.raises(ValidationError, match="DATABASE_OWNER_URL"):
            MigrationSettings(_env_file=None)

    monkeypatch.setenv("DATABASE_OWNER_URL", "postgresql://messaging_user:owner-pass-of-its-own@db:5432/messaging")
    assert MigrationSettings(_env_file=None).database_owner_url.endswith("@db:5432/messaging")
