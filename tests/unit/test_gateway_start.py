"""`python -m gateway` as an operator starts it: a profile that does not hold ends the process before it
listens or connects, naming every setting at fault."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.settings import GatewaySettings

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 60


def start_gateway(tmp_path: Path, **environment: str) -> subprocess.CompletedProcess[str]:
    # Away from any .env, with none of the developer's settings: only what the test gives.
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), **environment}
    return subprocess.run(
        [sys.executable, "-m", "gateway"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT,
        check=False,
    )


def secret_settings() -> list[str]:
    return [
        name.upper()
        for name, field in GatewaySettings.model_fields.items()
        if isinstance(field.json_schema_extra, dict) and field.json_schema_extra.get("secret")
    ]


def test_production_refuses_to_start_without_its_secrets_naming_each(tmp_path: Path) -> None:
    finished = start_gateway(tmp_path, MESSAGING_PROFILE="production")

    assert finished.returncode != 0
    assert "cannot start" in finished.stderr
    assert {"AMQP_URL", "INTERNAL_SERVICE_TOKEN", "SMS_WEBHOOK_AUTH_TOKEN", "PUBLIC_BASE_URL"} <= set(secret_settings())
    for name in secret_settings():
        assert name in finished.stderr, f"{name} is not named in: {finished.stderr}"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("AMQP_URL", "amqp://guest:guest@rabbitmq:5672/"),
        ("AMQP_URL", "amqp://messaging@rabbitmq:5672/"),
        ("INTERNAL_SERVICE_TOKEN", "development-internal-service-token"),
    ],
    ids=["guest password", "no password", "the development token"],
)
def test_production_refuses_a_default_or_well_known_secret(tmp_path: Path, variable: str, value: str) -> None:
    finished = start_gateway(tmp_path, MESSAGING_PROFILE="production", **{variable: value})

    assert finished.returncode != 0
    assert variable in finished.stderr


def test_development_refuses_to_listen_beyond_loopback(tmp_path: Path) -> None:
    finished = start_gateway(tmp_path, BIND_HOST="0.0.0.0")

    assert finished.returncode != 0
    assert "BIND_HOST=0.0.0.0" in finished.stderr
