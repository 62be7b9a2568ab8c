"""The gateway's side of Idempotency-Keys: what identifies a request, and the key store it asks.

Keys are kept by conversation_service (the gateway owns nothing durable), so every replica and a
restarted gateway see the same keys.
"""

import hashlib
import json
from typing import Protocol

from pydantic import BaseModel

from common.idempotency import (
    CLAIM_PATH,
    PUBLISHED_PATH,
    RELEASED_PATH,
    KeyClaim,
    KeyClaimRequest,
    KeyPublished,
    KeyReleased,
)
from gateway.requests import SendRequest
from gateway.upstream import ConversationService


def request_fingerprint(request: SendRequest) -> str:
    """The channel and the validated, normalized request, hashed to a short value whatever the body.

    Missing and empty attachments are the same request. A timestamp left out is left out here: the
    stored command keeps the time the first request was accepted.
    """
    timestamp = request.timestamp.isoformat() if request.timestamp is not None else None
    canonical = [request.channel, request.from_address, request.to, request.body, request.attachments or [], timestamp]
    return hashlib.sha256(json.dumps(canonical).encode()).hexdigest()


class KeyStore(Protocol):
    async def claim(self, request: KeyClaimRequest) -> KeyClaim: ...

    async def mark_published(self, published: KeyPublished) -> None: ...

    async def release(self, released: KeyReleased) -> None: ...


class HttpKeyStore:
    """conversation_service's key store over HTTP; unreachable or failing, it is a 503 for the client."""

    def __init__(self, upstream: ConversationService, timeout_seconds: float) -> None:
        self._upstream = upstream
        self._timeout_seconds = timeout_seconds

    async def claim(self, request: KeyClaimRequest) -> KeyClaim:
        return KeyClaim.model_validate_json(await self._post(CLAIM_PATH, request))

    async def mark_published(self, published: KeyPublished) -> None:
        await self._post(PUBLISHED_PATH, published)

    async def release(self, released: KeyReleased) -> None:
        await self._post(RELEASED_PATH, released)

    async def _post(self, path: str, body: BaseModel) -> bytes:
        async with self._upstream.request(
            "POST",
            path,
            data=body.model_dump_json(),
            headers={"Content-Type": "application/json"},
            raise_for_status=True,
            timeout_seconds=self._timeout_seconds,
        ) as response:
            return await response.read()
