"""conversation_service as the gateway reaches it: one HTTP session for the reads it relays and the
Idempotency-Keys it claims, and one rule for failure: unreachable, slow or erring is a 503."""

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from aiohttp import web

from common.errors import ServiceUnavailable

log = logging.getLogger(__name__)


class ConversationService:
    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self._session = session
        self._base_url = base_url.rstrip("/")

    @asynccontextmanager
    async def request(
        self, method: str, path: str, *, timeout_seconds: float, **options: Any
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """The response to `method path`; a failure to reach it or to read it is a `ServiceUnavailable`."""
        url = f"{self._base_url}{path}"
        try:
            async with self._session.request(
                method, url, timeout=aiohttp.ClientTimeout(total=timeout_seconds), **options
            ) as response:
                yield response
        except (aiohttp.ClientError, TimeoutError) as error:
            # The detail names internal hosts: it is for the log, not for the client.
            log.warning("conversation service unavailable", extra={"path": path, "error": repr(error)})
            raise ServiceUnavailable("the conversation service is unavailable; retry later") from error


CONVERSATION_SERVICE = web.AppKey("conversation_service", ConversationService)


def conversation_service_ctx(base_url: str, service_token: str) -> Callable[[web.Application], AsyncIterator[None]]:
    """Every call carries the service token: conversation_service answers nobody else."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {service_token}"}) as session:
            app[CONVERSATION_SERVICE] = ConversationService(session, base_url)
            yield

    return ctx
