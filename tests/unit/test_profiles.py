"""MESSAGING_PROFILE: development serves loopback only; production refuses missing or default secrets."""

import subprocess
import sys

import pytest
from pydantic import ValidationError

from common.settings import Profile
from conversation_service.settings import ConversationSettings
from gateway.settings import GatewaySettings

OWN_SECRETS = {
    "amqp_url": "amqp://messaging:Zq8w1lT0pX@rabbitmq:5672/",
    "database_url": "postgresql://messaging_app:Yv3s9pQ7kL@postgres:5432/messaging_service",
    "internal_service_token": "a-token-of-this-deployment-only",
}


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10", "example.com"])
def test_development_refuses_to_listen_beyond_loopback(host: str) -> None:
    with pytest.raises(ValidationError, match=f"BIND_HOST={host} is not a loopback address"):
        GatewaySettings(_env_file=None, bind_host=host)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_development_listens_on_any_loopback_address(host: str) -> None:
    assert GatewaySettings(_env_file=None, bind_host=host).bind_host == host


def test_production_names_every_secret_left_at_its_default() -> None:
    with pytest.raises(ValidationError) as refused:
        ConversationSettings(_env_file=None, messaging_profile=Profile.PRODUCTION, bind_host="0.0.0.0")

    for name in ("AMQP_URL", "DATABASE_URL", "INTERNAL_SERVICE_TOKEN"):
        assert name in str(refused.value)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("amqp_url", "amqp://guest:guest@rabbitmq:5672/"),
        ("amqp_url", "amqp://messaging@rabbitmq:5672/"),
        ("database_url", "postgresql://messaging_app:messaging_app_password@postgres:5432/messaging_service"),
        ("database_url", "postgresql://postgres:postgres@postgres:5432/messaging_service"),
        ("internal_service_token", ""),
    ],
)
def test_production_refuses_a_default_credential_under_another_host(name: str, value: str) -> None:
    with pytest.raises(ValidationError, match=f"(?i){name}"):
        ConversationSettings(
            _env_file=None, messaging_profile=Profile.PRODUCTION, bind_host="0.0.0.0", **{**OWN_SECRETS, name: value}
        )


def test_production_starts_with_secrets_of_its_own_on_any_interface() -> None:
    settings = ConversationSettings(
        _env_file=None, messaging_profile=Profile.PRODUCTION, bind_host="0.0.0.0", **OWN_SECRETS
    )

    assert settings.bind_host == "0.0.0.0"


def test_a_service_started_without_its_secrets_exits_non_zero_naming_each(tmp_path: object) -> None:
    env = {"MESSAGING_PROFILE": "production", "BIND_HOST": "0.0.0.0", "PATH": "/usr/bin:/bin"}

    started = subprocess.run(
        [sys.executable, "-m", "conversation_service"], env=env, capture_output=True, text=True, timeout=60
    )

    assert started.returncode != 0
    assert "cannot start: invalid settings" in started.stderr
    for name in ("AMQP_URL", "DATABASE_URL", "INTERNAL_SERVICE_TOKEN"):
        assert name in started.stderr
    assert "Traceback" not in started.stderr
