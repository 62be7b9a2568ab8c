"""The service's knobs come from the environment under their documented names."""

import pytest
from pydantic import ValidationError

from conversation_service.settings import ConversationSettings


def test_knobs_are_read_from_their_environment_names(monkeypatch: pytest.MonkeyPatch) -> None:
    # Production, as a non-loopback BIND_HOST needs, with every secret its own.
    monkeypatch.setenv("MESSAGING_PROFILE", "production")
    monkeypatch.setenv("CONVERSATION_SERVICE_PORT", "18083")
    monkeypatch.setenv("BIND_HOST", "0.0.0.0")
    monkeypatch.setenv("MAX_PAGE_SIZE", "500")
    monkeypatch.setenv("DATABASE_URL", "postgresql://someone:s3cr3t-of-its-own@db:5432/conversations")
    monkeypatch.setenv("AMQP_URL", "amqp://messaging:broker-pass-of-its-own@rabbitmq:5672/")
    monkeypatch.setenv("INTERNAL_SERVICE_TOKEN", "a-token-of-its-own-and-long")

    settings = ConversationSettings(_env_file=None)

    assert (settings.conversation_service_port, settings.bind_host) == (18083, "0.0.0.0")
    assert (settings.default_page_size, settings.max_page_size) == (50, 500)
    assert settings.database_url == "postgresql://someone:s3cr3t-of-its-own@db:5432/conversations"
    assert settings.internal_service_token == "a-token-of-its-own-and-long"


def test_a_default_page_larger_than_the_maximum_is_refused() -> None:
    with pytest.raises(ValidationError, match="default_page_size must not exceed max_page_size"):
        ConversationSettings(default_page_size=300, max_page_size=200)
