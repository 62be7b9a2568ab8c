"""`/healthz` (the process answers) and `/readyz` (its broker and database connections are up)."""

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import web

ReadinessCheck = Callable[[], Awaitable[bool]]

READINESS_CHECKS = web.AppKey("readiness_checks", dict[str, ReadinessCheck])

CHECK_TIMEOUT_SECONDS = 2.0


def add_health_routes(app: web.Application) -> None:
    """Each resource's cleanup_ctx registers its own check in `app[READINESS_CHECKS]`."""
    app[READINESS_CHECKS] = {}
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    checks = request.app[READINESS_CHECKS]
    results = await asyncio.gather(*(_run(check) for check in checks.values()))
    report = dict(zip(checks, results, strict=True))
    ready = all(report.values())
    return web.json_response(
        {"status": "ready" if ready else "not ready", "checks": report}, status=200 if ready else 503
    )


async def _run(check: ReadinessCheck) -> bool:
    try:
        return await asyncio.wait_for(check(), CHECK_TIMEOUT_SECONDS)
    except Exception:
        return False
