"""docker-compose.yml, bin/start.sh and .env.example must describe the same stack as the code, and
the compose stack must expose nothing but the gateway and hold no default credential.

No Docker engine runs here, so these checks are what keeps the compose file honest.
"""

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic_settings import BaseSettings

from common.settings import ServiceSettings
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
    "common.queue_migration": (ServiceSettings,),
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


# `${NAME:?message}` (required) or `${NAME:-default}`: the variables compose fills in.
COMPOSE_VARIABLE = re.compile(r"\$\{(?P<name>[A-Z_][A-Z0-9_]*)(?P<rule>:[?-])?(?P<rest>[^}]*)\}")
# Run once before the services, to completion; everything else runs for good.
ONE_OFF_JOBS = {"migrate", "migrate_queues"}


@pytest.fixture(scope="module")
def compose_text() -> str:
    return (ROOT / "docker-compose.yml").read_text()


@pytest.fixture(scope="module")
def compose(compose_text: str) -> dict[str, Any]:
    return yaml.safe_load(compose_text)


def env_example() -> dict[str, str]:
    return dict(
        line.split("=", 1)
        for line in (ROOT / ".env.example").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )


def compose_variables(text: str) -> dict[str, str | None]:
    """Each variable compose fills in, with its rule (`:?` required, `:-` defaulted)."""
    return {match["name"]: match["rule"] for match in COMPOSE_VARIABLE.finditer(text)}


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
    assert set(composed) - set(started) == ONE_OFF_JOBS
    assert composed["migrate"] == "conversation_service.migrate"
    assert composed["migrate_queues"] == "common.queue_migration"
    setup = (ROOT / "bin/setup.sh").read_text()
    assert "-m conversation_service.migrate" in setup
    assert "-m common.queue_migration" in setup


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


def test_only_the_gateway_is_published_and_on_loopback_by_default(compose: dict[str, Any]) -> None:
    published = {name: service["ports"] for name, service in compose["services"].items() if "ports" in service}
    # An optional tool (a `profiles:` service, off unless asked for) may show its UI on loopback.
    tools = {name: published.pop(name) for name in list(published) if "profiles" in compose["services"][name]}

    assert published == {"gateway": ["${GATEWAY_PUBLISH:-127.0.0.1:8080}:8080"]}
    assert all(port.startswith("127.0.0.1:") for ports in tools.values() for port in ports), tools
    # Nor opened to the host some other way.
    for name, service in compose["services"].items():
        assert service.get("network_mode") != "host", name
        assert "expose" not in service or name == "gateway", name


def test_rabbitmqs_management_ui_is_not_published(compose_text: str, compose: dict[str, Any]) -> None:
    assert "15672" not in compose_text
    assert "ports" not in compose["services"]["rabbitmq"]


def test_no_default_credential_anywhere_in_compose(compose_text: str, compose: dict[str, Any]) -> None:
    assert "guest" not in compose_text.lower()
    assert "postgres:postgres" not in compose_text
    assert "password@" not in compose_text.lower()
    for name, service in compose["services"].items():
        for variable, value in service.get("environment", {}).items():
            value = str(value)
            for url_password in re.findall(r"://[^:/@\s]+:([^@\s]+)@", value):
                assert COMPOSE_VARIABLE.fullmatch(url_password), f"{name} {variable} has a literal password"
            if re.search(r"PASSWORD|PASS$|TOKEN|SECRET|PRIVATE_KEY|PUBLIC_KEY", variable):
                match = COMPOSE_VARIABLE.fullmatch(value)
                assert match and match["rule"] == ":?", f"{name} {variable} is not a required variable: {value}"


def test_every_credential_is_a_required_variable_listed_in_env_example(compose_text: str) -> None:
    variables = compose_variables(compose_text)
    listed = env_example()
    required = {name for name, rule in variables.items() if rule == ":?"}

    assert {
        "POSTGRES_PASSWORD",
        "DATABASE_PASSWORD",
        "DATABASE_OWNER_PASSWORD",
        "RABBITMQ_USER",
        "RABBITMQ_PASSWORD",
    } <= required
    webhook_secrets = {"SMS_WEBHOOK_AUTH_TOKEN", "EMAIL_WEBHOOK_SECRET", "EMAIL_EVENTS_PUBLIC_KEY"}
    assert webhook_secrets | {"EMAIL_EVENTS_PRIVATE_KEY", "INTERNAL_SERVICE_TOKEN", "PUBLIC_BASE_URL"} <= required
    # Listed as a setting, or described in a comment where a copied line would do harm (a key pair).
    described = set(re.findall(r"^# ([A-Z_][A-Z0-9_]*)=", (ROOT / ".env.example").read_text(), re.MULTILINE))
    assert set(variables) <= set(listed) | described, set(variables) - set(listed) - described
    # A required variable has no value to copy unless it is a setting, whose default production refuses.
    settings = {name for module in SETTINGS_OF_MODULE for name in env_names(module)}
    for name in required - settings:
        assert listed[name] == "", f"{name} has a value in .env.example: compose would start with it"


def test_the_services_use_a_rabbitmq_user_of_their_own(compose: dict[str, Any]) -> None:
    rabbitmq = compose["services"]["rabbitmq"]["environment"]
    amqp_urls = {
        str(service["environment"]["AMQP_URL"])
        for service in python_services(compose).values()
        if "AMQP_URL" in service.get("environment", {})
    }

    assert rabbitmq["RABBITMQ_DEFAULT_USER"] == "${RABBITMQ_USER:?set RABBITMQ_USER}"
    assert rabbitmq["RABBITMQ_DEFAULT_PASS"] == "${RABBITMQ_PASSWORD:?set RABBITMQ_PASSWORD}"
    assert len(amqp_urls) == 1
    assert amqp_urls.pop().startswith("amqp://${RABBITMQ_USER:?set RABBITMQ_USER}:${RABBITMQ_PASSWORD:?")


def test_every_service_runs_in_the_production_profile(compose: dict[str, Any]) -> None:
    for name, service in python_services(compose).items():
        assert service["environment"]["MESSAGING_PROFILE"] == "production", name
        # A one-off job serves no HTTP.
        if name not in ONE_OFF_JOBS:
            assert service["environment"]["BIND_HOST"] == "0.0.0.0", name


def test_the_development_dependencies_are_published_on_loopback_only() -> None:
    development = yaml.safe_load((ROOT / "docker-compose.dev.yml").read_text())

    assert set(development["services"]) == {"postgres", "rabbitmq"}
    for name, service in development["services"].items():
        for port in service["ports"]:
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    assert "docker-compose.dev.yml" in (ROOT / "bin/setup.sh").read_text()


def test_env_example_lists_only_real_settings_with_their_defaults(compose_text: str) -> None:
    known: dict[str, Any] = {}
    for settings_of_process in SETTINGS_OF_MODULE.values():
        for settings in settings_of_process:
            known |= env_defaults(settings)
    # Besides settings, the variables only docker-compose.yml reads.
    entries = {name: value for name, value in env_example().items() if name not in known}
    assert set(entries) <= set(compose_variables(compose_text)), set(entries) - set(compose_variables(compose_text))
    entries = {name: value for name, value in env_example().items() if name in known}

    for name, value in entries.items():
        assert value == str(known[name]), f"{name}={value} in .env.example, but the default is {known[name]}"
    assert {"DATABASE_URL", "AMQP_URL", "GATEWAY_PORT", "SMS_PROVIDER_URL", "EMAIL_PROVIDER_URL"} <= set(entries)


def seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)(s|m)", duration)
    assert match, f"{duration!r} is not a duration in whole seconds or minutes"
    return int(match[1]) * (60 if match[2] == "m" else 1)


def test_every_http_process_is_healthy_only_once_its_readyz_answers(compose: dict[str, Any]) -> None:
    for name, service in python_services(compose).items():
        if name in ONE_OFF_JOBS:
            continue
        port = service["environment"][PORT_SETTING[module_of(service["command"])].upper()]
        test = " ".join(service["healthcheck"]["test"])
        assert f"http://127.0.0.1:{port}/readyz" in test, f"{name}'s healthcheck is not its own /readyz: {test}"
    for name in ("postgres", "rabbitmq"):
        assert compose["services"][name]["healthcheck"]["test"], name


def test_every_service_restarts_and_one_off_jobs_only_until_they_succeed(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        expected = "on-failure" if name in ONE_OFF_JOBS else "unless-stopped"
        assert service.get("restart") == expected, f"{name} restarts {service.get('restart')!r}"


def test_services_start_after_what_they_need_is_healthy_or_done(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        for needed, how in service.get("depends_on", {}).items():
            expected = "service_completed_successfully" if needed in ONE_OFF_JOBS else "service_healthy"
            assert how == {"condition": expected}, f"{name} waits for {needed} with {how}"
            assert needed in ONE_OFF_JOBS or "healthcheck" in services[needed], f"{needed} has no healthcheck"
    for name in ("gateway", "sms_service", "email_service", "conversation_service"):
        assert {"rabbitmq", "migrate_queues"} <= set(services[name]["depends_on"]), name


def test_docker_waits_for_a_stopping_service_past_its_shutdown_grace(compose: dict[str, Any]) -> None:
    grace = ServiceSettings.model_fields["shutdown_grace_seconds"].default
    for name, service in python_services(compose).items():
        assert seconds(service["stop_grace_period"]) > grace, f"{name} is killed before its grace is over"


def test_the_cluster_override_runs_three_nodes_every_service_knows_of(compose: dict[str, Any]) -> None:
    cluster = yaml.safe_load((ROOT / "docker-compose.cluster.yml").read_text())
    services = cluster["services"]
    nodes = {name: service for name, service in services.items() if name.startswith("rabbitmq")}

    assert set(nodes) == {"rabbitmq", "rabbitmq-2", "rabbitmq-3"}
    names = {service["environment"]["RABBITMQ_NODENAME"] for service in nodes.values()}
    assert names == {f"rabbit@{service['hostname']}" for service in nodes.values()} and len(names) == 3
    peers = (ROOT / "deploy" / "rabbitmq-cluster.conf").read_text()
    assert all(f"= {name}" in peers for name in names)
    for service in nodes.values():
        assert "./deploy/rabbitmq-cluster.conf:/etc/rabbitmq/conf.d/20-cluster.conf:ro" in service["volumes"]
    hosts = set(nodes)
    for name, service in python_services(compose).items():
        if "AMQP_URL" not in service.get("environment", {}):
            continue
        urls = services[name]["environment"]["AMQP_URL"].split(",")
        assert {url.split("@")[1].split(":")[0] for url in urls} == hosts, f"{name} does not know every node"
    for worker in ("conversation_service", "sms_service", "email_service"):
        assert services[worker]["deploy"]["replicas"] >= 2
        assert "ports" not in services[worker] and "ports" not in compose["services"][worker], worker
    assert all(service["restart"] == "unless-stopped" for service in nodes.values())
