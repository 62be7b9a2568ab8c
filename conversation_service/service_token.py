"""Only the gateway may call conversation_service: every route but the health checks wants the
internal service token, `Authorization: Bearer <INTERNAL_SERVICE_TOKEN>`."""

import hmac
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from common.errors import Unauthorized

# Probes and scrapers carry no token; these routes say nothing about any account.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


def service_token_middleware(token: str) -> Middleware:
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.path not in OPEN_PATHS:
            presented = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
            # Constant time: how long a refusal takes tells nothing of how much of the token was right.
            if not hmac.compare_digest(presented, expected):
                raise Unauthorized("this service answers only the gateway's internal service token")
        return await handler(request)

    return middleware
