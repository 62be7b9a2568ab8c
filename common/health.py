"""`/healthz` (the process answers), `/readyz` (its broker and database connections are up) and
`/metrics` (Prometheus text): what an orchestrator and a monitoring system ask every process."""

import asyncio
import hmac
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from common.errors import Unauthorized
from common.metrics import Metrics

ReadinessCheck = Callable[[], Awaitable[bool]]

READINESS_CHECKS = web.AppKey("readiness_checks", dict[str, ReadinessCheck])
METRICS = web.AppKey("metrics", Metrics)
METRICS_TOKEN = web.AppKey("metrics_token", str)

# A request that matched no route is counted under this instead of its URL, so a scan of random
# paths cannot grow a series per path.
UNMATCHED_ROUTE = "unmatched"

CHECK_TIMEOUT_SECONDS = 2.0


def add_health_routes(app: web.Application, *, metrics_token: str | None = None) -> None:
    """Each resource's cleanup_ctx registers its own check in `app[READINESS_CHECKS]`; the app's metrics
    are in `app[METRICS]` from here on, for whatever it wires up to count them.

    With a `metrics_token`, /metrics answers only `Authorization: Bearer <token>`.
    """
    app[READINESS_CHECKS] = {}
    app[METRICS] = Metrics()
    if metrics_token is not None:
        app[METRICS_TOKEN] = metrics_token
    # First, so that it times and counts the answer every other middleware helped make.
    app.middlewares.insert(0, metrics_middleware)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)


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


async def metrics(request: web.Request) -> web.Response:
    token = request.app.get(METRICS_TOKEN)
    if token is not None and not hmac.compare_digest(
        request.headers.get("Authorization", "").encode(), f"Bearer {token}".encode()
    ):
        raise Unauthorized("/metrics needs the internal service token: Authorization: Bearer <token>")
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _run(check: ReadinessCheck) -> bool:
    try:
        return await asyncio.wait_for(check(), CHECK_TIMEOUT_SECONDS)
    except Exception:
        return False


def route_of(request: web.Request) -> str:
    """The route's pattern (`/api/messages/{message_id}`), never the URL a client sent."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED_ROUTE


@web.middleware
async def metrics_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Outermost, so it sees the status the client gets, an error mapped by error_middleware included."""
    metrics = request.app[METRICS]
    route = route_of(request)
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as error:
        status = error.status
        raise
    finally:
        metrics.http_request_duration.labels(method=request.method, route=route).observe(time.perf_counter() - started)
        metrics.http_requests.labels(method=request.method, route=route, status=str(status)).inc()
