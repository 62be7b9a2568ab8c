"""Reads are owned by conversation_service: the gateway forwards them and relays the answer."""

from collections.abc import Mapping
from dataclasses import dataclass

from aiohttp import web

from common.accounts import ACCOUNT_HEADER
from common.context import current_account
from gateway.upstream import ConversationService


@dataclass(frozen=True)
class UpstreamAnswer:
    status: int
    body: bytes
    content_type: str


class ConversationReader:
    def __init__(self, upstream: ConversationService, timeout_seconds: float) -> None:
        self._upstream = upstream
        self._timeout_seconds = timeout_seconds

    async def get(self, path: str, query: Mapping[str, str]) -> UpstreamAnswer:
        """The upstream answer as it came: relaying the bytes costs no JSON round trip."""
        # The account the caller's key authenticated: conversation_service shows it only its own.
        headers = {ACCOUNT_HEADER: str(current_account())}
        async with self._upstream.request(
            "GET", path, params=query, headers=headers, timeout_seconds=self._timeout_seconds
        ) as response:
            return UpstreamAnswer(response.status, await response.read(), response.content_type)


CONVERSATION_READER = web.AppKey("conversation_reader", ConversationReader)
