"""GET /metrics as Prometheus and an outsider meet it: requests counted by route pattern, one registry
per app, and the production gateway's metrics closed to anyone without the internal service token."""

from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import create_app
from gateway.settings import GatewaySettings
from tests.factories import SMS_REQUEST, production_settings
from tests.fakes import FakeConversationService, MemoryKeyStore, RecordingPublisher
from tests.prometheus import scrape, value

TOKEN = "a-production-internal-token-of-32-chars"


async def gateway(aiohttp_client: Any, aiohttp_server: Any, *, production: bool = False) -> TestClient:
    """The gateway before a fake conversation_service, which gives every address to the development
    account and answers every read."""
    directory = await aiohttp_server(FakeConversationService(TOKEN).app())
    url = str(directory.make_url(""))
    settings = (
        production_settings(GatewaySettings, internal_service_token=TOKEN, conversation_service_url=url)
        if production
        else GatewaySettings(internal_service_token=TOKEN, conversation_service_url=url)
    )
    app = create_app(settings, publisher=RecordingPublisher(), key_store=MemoryKeyStore())
    return await aiohttp_client(app)


def requests(samples: dict[Any, float], method: str, route: str, status: int) -> float:
    return value(samples, "http_requests_total", {"method": method, "route": route, "status": str(status)})


async def test_requests_are_counted_by_route_pattern_and_status(aiohttp_client: Any, aiohttp_server: Any) -> None:
    client = await gateway(aiohttp_client, aiohttp_server)

    for _ in range(3):
        assert (await client.post("/api/messages/sms", json=SMS_REQUEST)).status == 202
    assert (await client.post("/api/messages/sms", json={**SMS_REQUEST, "to": "nobody"})).status == 422
    # Relayed to a conversation_service that is not there: one status for both, whatever it is.
    read_statuses = {(await client.get(f"/api/messages/{message_id}")).status for message_id in ("one", "two")}
    assert (await client.get("/wp-admin/setup.php")).status == 404

    samples = await scrape(client)
    assert requests(samples, "POST", "/api/messages/sms", 202) == 3
    assert requests(samples, "POST", "/api/messages/sms", 422) == 1
    (read_status,) = read_statuses
    assert requests(samples, "GET", "/api/messages/{message_id}", read_status) == 2
    assert requests(samples, "GET", "unmatched", 404) == 1
    raw_urls = {"/api/messages/one", "/api/messages/two", "/wp-admin/setup.php"}
    assert not [labels for _, labels in samples if raw_urls & set(dict(labels).values())]
    latency = {"method": "POST", "route": "/api/messages/sms"}
    assert value(samples, "http_request_duration_seconds_count", latency) == 4
    assert value(samples, "http_request_duration_seconds_bucket", {**latency, "le": "+Inf"}) == 4
    assert value(samples, "process_start_time_seconds") > 0


async def test_each_app_counts_on_a_registry_of_its_own(aiohttp_client: Any, aiohttp_server: Any) -> None:
    busy, idle = await gateway(aiohttp_client, aiohttp_server), await gateway(aiohttp_client, aiohttp_server)

    assert (await busy.post("/api/messages/sms", json=SMS_REQUEST)).status == 202

    assert requests(await scrape(busy), "POST", "/api/messages/sms", 202) == 1
    assert requests(await scrape(idle), "POST", "/api/messages/sms", 202) == 0


async def test_the_development_gateway_serves_metrics_to_anyone(aiohttp_client: Any, aiohttp_server: Any) -> None:
    client = await gateway(aiohttp_client, aiohttp_server)

    response = await client.get("/metrics")

    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    assert any(family.name == "http_requests" for family in text_string_to_metric_families(await response.text()))


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-token-of-the-same-kind-here", f"Basic {TOKEN}", TOKEN, f"Bearer {TOKEN}x", "Bearer "],
)
async def test_the_production_gateway_refuses_metrics_without_the_internal_token(
    aiohttp_client: Any, aiohttp_server: Any, authorization: str | None
) -> None:
    client = await gateway(aiohttp_client, aiohttp_server, production=True)

    response = await client.get("/metrics", headers={"Authorization": authorization} if authorization else None)

    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    body = await response.json()
    assert body["error"] == "unauthorized"
    assert "internal service token" in body["message"]
    assert "http_requests" not in await response.text()


async def test_the_production_gateway_serves_metrics_with_the_internal_token(
    aiohttp_client: Any, aiohttp_server: Any
) -> None:
    client = await gateway(aiohttp_client, aiohttp_server, production=True)
    assert (await client.get("/metrics")).status == 401

    samples = await scrape(client, {"Authorization": f"Bearer {TOKEN}"})

    # The refused scrape is counted too: an operator sees someone knocking.
    assert requests(samples, "GET", "/metrics", 401) == 1
    assert (await client.get("/healthz")).status == 200
