"""Prometheus in docker-compose.yml scrapes every long-running process of the stack where it listens,
with the token the production gateway asks for. No Docker engine runs here: these checks are what
keeps deploy/prometheus.yml honest."""

from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def scrape_configs() -> dict[str, dict[str, Any]]:
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    return {job["job_name"]: job for job in config["scrape_configs"]}


def targets(job: dict[str, Any]) -> list[str]:
    return [target for static in job["static_configs"] for target in static["targets"]]


def test_every_long_running_process_is_scraped_on_its_port(
    compose: dict[str, Any], scrape_configs: dict[str, dict[str, Any]]
) -> None:
    # Only the gateway publishes a port; each serving process's own is its *_PORT setting (a one-off
    # job, a migration, has none).
    processes = {
        name: port
        for name, service in compose["services"].items()
        if "command" in service
        for key, port in service["environment"].items()
        if key.endswith("_PORT")
    }

    assert len(processes) == 6
    for name, port in processes.items():
        assert targets(scrape_configs[name]) == [f"{name}:{port}"], name
        assert scrape_configs[name].get("metrics_path", "/metrics") == "/metrics"


def test_prometheus_is_optional_and_reads_the_config_it_is_given(compose: dict[str, Any]) -> None:
    prometheus = compose["services"]["prometheus"]

    assert prometheus["profiles"] == ["metrics"]
    assert "./deploy/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prometheus["volumes"]
    assert (ROOT / "deploy" / "prometheus.yml").is_file()


def test_the_gateway_is_scraped_with_the_internal_service_token(
    compose: dict[str, Any], scrape_configs: dict[str, dict[str, Any]]
) -> None:
    authorization = scrape_configs["gateway"]["authorization"]
    (secret,) = compose["services"]["prometheus"]["secrets"]

    assert authorization == {"type": "Bearer", "credentials_file": f"/run/secrets/{secret}"}
    assert compose["secrets"][secret] == {"file": "./deploy/secrets/internal_service_token"}
    assert "deploy/secrets/" in (ROOT / ".gitignore").read_text()
