"""docker-compose.yml, bin/start.sh and .env.example must describe the same stack as the code.

No Docker engine runs here, so these checks are what keeps the compose file honest.
"""

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic_settings import BaseSettings

from conversation_service.settings import ConversationSettings, MigrationSettings
from email_service.settings import EmailMockBehaviourSettings, EmailMockProviderSettings, EmailSettings
from gateway.settings import GatewaySettings
from sms_service.settings import SmsMockBehaviourSettings, SmsMockProviderSettings, SmsSettings

ROOT = Path(__file__).resolve().parents[2]

# What each process reads from the environment; a mock reads its behaviour under a prefix of its own.
SETTINGS_OF_MODULE: dict[str, tuple[type[BaseSettings], ...]] = {
    "gateway": (GatewaySettings,),
    "sms_service": (SmsSettings,),
    "email_service": (EmailSettings,),
    "conversation_service": (ConversationSettings,),
    "conversation_service.migrate": (MigrationSettings,),
    "sms_service.mock_provider": (SmsMockProviderSettings, SmsMockBehaviourSettings),
    "email_service.mock_provider": (EmailMockProviderSettings, EmailMockBehaviourSettings),
}
PORT_SETTING = {
    "gateway": "gateway_port",
    "sms_service": "sms_service_port",
    "email_service": "email_service_port",
    "conversation_service": "conversation_service_port",
    "sms_service.mock_provider": "sms_provider_port",
    "email_service.mock_provider": "email_provider_port",
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def module_of(command: list[str]) -> str:
    assert command[:2] == ["python", "-m"], command
    return command[2]


def python_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: service for name, service in compose["services"].items() if "command" in service}


def start_script_services() -> dict[str, str]:
    """`run_service NAME "$PY" -m MODULE` lines of bin/start.sh, as {name: module}."""
    lines = re.findall(r'^run_service (\S+) "\$PY" -m (\S+)$', (ROOT / "bin/start.sh").read_text(), re.MULTILINE)
    return dict(lines)


def env_defaults(settings: type[BaseSettings]) -> dict[str, Any]:
    """Each setting's environment name, its `env_prefix` included, and its default."""
    prefix = settings.model_config.get("env_prefix", "")
    return {f"{prefix}{name}".upper(): field.default for name, field in settings.model_fields.items()}


def env_names(module: str) -> set[str]:
    return {name for settings in SETTINGS_OF_MODULE[module] for name in env_defaults(settings)}


def test_compose_runs_the_processes_start_sh_runs(compose: dict[str, Any]) -> None:
    started = start_script_services()
    composed = {name: module_of(service["command"]) for name, service in python_services(compose).items()}

    assert len(started) == 6
    assert {name: composed[name] for name in started} == started
    assert set(composed) - set(started) == {"migrate"}
    assert composed["migrate"] == "conversation_service.migrate"
    assert "-m conversation_service.migrate" in (ROOT / "bin/setup.sh").read_text()


def test_every_compose_environment_name_is_a_setting_of_its_process(compose: dict[str, Any]) -> None:
    for name, service in python_services(compose).items():
        module = module_of(service["command"])
        unknown = set(service.get("environment", {})) - env_names(module)
        assert not unknown, f"{name} sets {unknown}, which {module} does not read"


def test_compose_ports_are_the_ones_each_process_listens_on(compose: dict[str, Any]) -> None:
    for name, service in python_services(compose).items():
        module = module_of(service["command"])
        if module not in PORT_SETTING:
            continue
        setting = PORT_SETTING[module]
        port = service["environment"][setting.upper()]
        default = SETTINGS_OF_MODULE[module][0].model_fields[setting].default
        assert int(port) == default, f"{name} listens on {port}, the code's default is {default}"
        assert service["ports"] == [f"{port}:{port}"]


def test_env_example_lists_only_real_settings_with_their_defaults() -> None:
    known: dict[str, Any] = {}
    for settings_of_process in SETTINGS_OF_MODULE.values():
        for settings in settings_of_process:
            known |= env_defaults(settings)
    entries = dict(
        line.split("=", 1)
        for line in (ROOT / ".env.example").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )

    assert set(entries) <= set(known), set(entries) - set(known)
    for name, value in entries.items():
        assert value == str(known[name]), f"{name}={value} in .env.example, but the default is {known[name]}"
    assert {"DATABASE_URL", "AMQP_URL", "GATEWAY_PORT", "SMS_PROVIDER_URL", "EMAIL_PROVIDER_URL"} <= set(entries)
