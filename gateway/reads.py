"""Reads are owned by conversation_service: the gateway forwards them and relays the answer."""

import logging
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from common.http import ServiceUnavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UpstreamAnswer:
    status: int
    body: bytes
    content_type: str


class ConversationReader:
    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self._session = session
        self._base_url = base_url.rstrip("/")

    async def get(self, path: str, query: Mapping[str, str]) -> UpstreamAnswer:
        """The upstream answer as it came: relaying the bytes costs no JSON round trip."""
        try:
            async with self._session.get(f"{self._base_url}{path}", params=query) as response:
                return UpstreamAnswer(response.status, await response.read(), response.content_type)
        except (aiohttp.ClientError, TimeoutError) as error:
            # The detail names internal hosts: it is for the log, not for the client.
            log.warning("conversation service unreachable", extra={"path": path, "error": repr(error)})
            raise ServiceUnavailable("the conversation service is unavailable; retry later") from error


CONVERSATION_READER = web.AppKey("conversation_reader", ConversationReader)


def conversation_reader_ctx(base_url: str, timeout_seconds: float) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_seconds)) as session:
            app[CONVERSATION_READER] = ConversationReader(session, base_url)
            yield

    return ctx
