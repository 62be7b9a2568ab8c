"""The INFO summary that stands in for a log line per request: what grew since the last one, by
route and outcome, silent while a process only answers probes."""

import logging
from typing import Any

import pytest
from aiohttp import web

from common.activity import activity_since, activity_summary_ctx
from common.health import METRICS, add_health_routes
from tests.factories import eventually


async def work(request: web.Request) -> web.Response:
    return web.json_response({"done": True}, status=202)


def app_with_summary(interval_seconds: float) -> web.Application:
    app = web.Application()
    add_health_routes(app)
    app.router.add_post("/work", work)
    app.cleanup_ctx.append(activity_summary_ctx(interval_seconds))
    return app


async def test_the_summary_counts_requests_by_route_and_status(
    aiohttp_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="common.activity")
    client = await aiohttp_client(app_with_summary(0.05))

    for _ in range(3):
        assert (await client.post("/work")).status == 202

    async def summary() -> list[logging.LogRecord]:
        return [record for record in caplog.records if record.__dict__.get("counts")]

    (first, *_) = await eventually(summary, "a summary of the three requests")
    assert first.__dict__["counts"]["http_requests"] == {"POST /work 202": 3}


async def test_probes_and_scrapes_are_not_activity(aiohttp_client: Any) -> None:
    app = app_with_summary(3600)
    client = await aiohttp_client(app)
    registry = app[METRICS].registry
    before, _ = activity_since(registry, {})

    for path in ("/healthz", "/readyz", "/metrics"):
        assert (await client.get(path)).status == 200
    after, grown = activity_since(registry, before)
    assert grown == {}

    assert (await client.post("/work")).status == 202
    _, grown = activity_since(registry, after)
    assert grown == {"http_requests": {"POST /work 202": 1}}


async def test_what_happened_since_the_last_summary_is_logged_on_the_way_out(
    aiohttp_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="common.activity")
    client = await aiohttp_client(app_with_summary(3600))
    assert (await client.post("/work")).status == 202

    await client.close()

    (record,) = [record for record in caplog.records if record.__dict__.get("counts")]
    assert record.__dict__["counts"]["http_requests"] == {"POST /work 202": 1}
