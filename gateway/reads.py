"""Reads are owned by conversation_service: the gateway forwards them and relays the answer."""

from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import aiohttp
from aiohttp import web

from common.http import ServiceUnavailable


class ConversationReader:
    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self._session = session
        self._base_url = base_url.rstrip("/")

    async def get(self, path: str, query: Mapping[str, str]) -> tuple[int, Any]:
        try:
            async with self._session.get(f"{self._base_url}{path}", params=query) as response:
                return response.status, await response.json()
        except (aiohttp.ClientError, TimeoutError) as error:
            raise ServiceUnavailable(f"conversation service unavailable: {error!r}") from error


CONVERSATION_READER = web.AppKey("conversation_reader", ConversationReader)


def conversation_reader_ctx(base_url: str, timeout_seconds: float) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_seconds)) as session:
            app[CONVERSATION_READER] = ConversationReader(session, base_url)
            yield

    return ctx
