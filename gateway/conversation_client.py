"""conversation_service as the gateway reaches it: one client, on one HTTP session carrying the
service token, for the reads it relays, the Idempotency-Keys it claims, the API keys it verifies and
the address owners it asks about. One rule for failure: unreachable, slow or erring is a 503.
"""

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import aiohttp
from aiohttp import web
from pydantic import BaseModel

from common.accounts import (
    ACCOUNT_HEADER,
    ADDRESS_OWNER_PATH,
    VERIFY_KEY_PATH,
    AddressOwner,
    AddressOwnerQuery,
    KeyIdentity,
    KeyVerification,
)
from common.context import current_account
from common.errors import ServiceUnavailable
from common.idempotency import (
    CLAIM_PATH,
    PUBLISHED_PATH,
    RELEASED_PATH,
    KeyClaim,
    KeyClaimRequest,
    KeyPublished,
    KeyReleased,
)

log = logging.getLogger(__name__)

ValueT = TypeVar("ValueT")
ModelT = TypeVar("ModelT", bound=BaseModel)

# Enough for every key and address a busy deployment uses within a few seconds; past it the oldest
# answers go first, so a flood of made-up keys cannot grow the gateway's memory.
CACHE_ENTRIES = 50_000
# While conversation_service is away (restarting, its database cut off), who owns an address is taken
# from what it said in this window: ownership changes rarely, and inbound messages keep being accepted.
# A key's answer is never used stale: a revoked key must not come back during an outage.
OWNER_STALE_SECONDS = 600.0


@dataclass(frozen=True)
class UpstreamAnswer:
    status: int
    body: bytes
    content_type: str


@dataclass(frozen=True)
class ClientTimeouts:
    read_seconds: float
    key_store_seconds: float
    auth_seconds: float


class ExpiringCache(Generic[ValueT]):
    """Answers fresh for `ttl_seconds` by the loop's clock, then kept `stale_seconds` longer for a
    caller that would rather have an old answer than none; with both 0 it keeps nothing."""

    def __init__(
        self,
        ttl_seconds: float,
        clock: Callable[[], float],
        *,
        stale_seconds: float = 0.0,
        max_entries: int = CACHE_ENTRIES,
    ) -> None:
        self._ttl_seconds = ttl_seconds
        self._stale_seconds = stale_seconds
        self._clock = clock
        self._max_entries = max_entries
        self._entries: dict[str, tuple[float, ValueT]] = {}

    def get(self, key: str) -> tuple[bool, ValueT | None]:
        """(found, value) of a fresh answer: a cached "nobody" is found with the value None."""
        return self._within(key, self._ttl_seconds)

    def stale(self, key: str) -> tuple[bool, ValueT | None]:
        """(found, value) of an answer fresh or no older than the stale window."""
        return self._within(key, self._ttl_seconds + self._stale_seconds)

    def _within(self, key: str, age_seconds: float) -> tuple[bool, ValueT | None]:
        entry = self._entries.get(key)
        if entry is None:
            return False, None
        stored, value = entry
        age = self._clock() - stored
        if age >= self._ttl_seconds + self._stale_seconds:
            del self._entries[key]
        return (True, value) if age < age_seconds else (False, None)

    def put(self, key: str, value: ValueT) -> None:
        if self._ttl_seconds + self._stale_seconds <= 0:
            return
        self._entries.pop(key, None)
        while len(self._entries) >= self._max_entries:
            del self._entries[next(iter(self._entries))]
        self._entries[key] = (self._clock(), value)


class SharedLookups(Generic[ValueT]):
    """Concurrent lookups of one key share one call. When a cached answer lapses under load, every
    request in flight missed it at once: 64 webhooks to one number asked conversation_service 64 times."""

    def __init__(self) -> None:
        self._pending: dict[str, asyncio.Future[ValueT]] = {}

    async def run(self, key: str, look_up: Callable[[], Awaitable[ValueT]]) -> ValueT:
        pending = self._pending.get(key)
        if pending is None:
            pending = asyncio.ensure_future(look_up())
            self._pending[key] = pending
            pending.add_done_callback(lambda _: self._pending.pop(key, None))
        # A caller that gives up (its request cancelled) must not cancel the others' lookup.
        return await asyncio.shield(pending)


class ConversationServiceClient:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        timeouts: ClientTimeouts,
        *,
        cache_seconds: float,
        clock: Callable[[], float],
    ) -> None:
        self._session = session
        self._base_url = base_url.rstrip("/")
        self._timeouts = timeouts
        self._keys: ExpiringCache[KeyIdentity] = ExpiringCache(cache_seconds, clock)
        self._owners: ExpiringCache[uuid.UUID | None] = ExpiringCache(
            cache_seconds, clock, stale_seconds=OWNER_STALE_SECONDS
        )
        self._key_lookups: SharedLookups[KeyIdentity | None] = SharedLookups()
        self._owner_lookups: SharedLookups[uuid.UUID | None] = SharedLookups()

    # Reads: relayed for the account in hand, as they came, so a page costs no JSON round trip.

    async def read(self, path: str, query: Mapping[str, str]) -> UpstreamAnswer:
        headers = {ACCOUNT_HEADER: str(current_account())}
        async with self._request("GET", path, self._timeouts.read_seconds, params=query, headers=headers) as response:
            return UpstreamAnswer(response.status, await response.read(), response.content_type)

    # Idempotency-Keys (the intake's KeyStore).

    async def claim(self, request: KeyClaimRequest) -> KeyClaim:
        return KeyClaim.model_validate_json(await self._post(CLAIM_PATH, request, self._timeouts.key_store_seconds))

    async def mark_published(self, published: KeyPublished) -> None:
        await self._post(PUBLISHED_PATH, published, self._timeouts.key_store_seconds)

    async def release(self, released: KeyReleased) -> None:
        await self._post(RELEASED_PATH, released, self._timeouts.key_store_seconds)

    # Accounts: who holds a key, who owns an address.

    async def verify_key(self, key_hash: str) -> KeyIdentity | None:
        """The key's holder and scopes; None for a key that is unknown, revoked or expired.

        Only a known key's answer is kept: a key created a moment ago works at once.
        """
        found, identity = self._keys.get(key_hash)
        if found:
            return identity
        return await self._key_lookups.run(key_hash, lambda: self._verify_key(key_hash))

    async def _verify_key(self, key_hash: str) -> KeyIdentity | None:
        identity = await self._ask(VERIFY_KEY_PATH, KeyVerification(key_hash=key_hash), KeyIdentity)
        if identity is not None:
            self._keys.put(key_hash, identity)
        return identity

    async def owner_of(self, address: str) -> uuid.UUID | None:
        """The account that owns a normalized address; None when no account does."""
        found, owner = self._owners.get(address)
        if found:
            return owner
        return await self._owner_lookups.run(address, lambda: self._look_up_owner(address))

    async def _look_up_owner(self, address: str) -> uuid.UUID | None:
        try:
            answer = await self._ask(ADDRESS_OWNER_PATH, AddressOwnerQuery(address=address), AddressOwner)
        except ServiceUnavailable:
            found, owner = self._owners.stale(address)
            if not found:
                raise
            log.info("conversation service unavailable; using the owner it named before")
            return owner
        owner = answer.account_id if answer is not None else None
        self._owners.put(address, owner)
        return owner

    async def _ask(self, path: str, body: BaseModel, answer: type[ModelT]) -> ModelT | None:
        """conversation_service's answer, or None where it says there is none (404)."""
        async with self._request("POST", path, self._timeouts.auth_seconds, **_json_body(body)) as response:
            if response.status == 404:
                return None
            _expect_success(response, path)
            return answer.model_validate_json(await response.read())

    async def _post(self, path: str, body: BaseModel, timeout_seconds: float) -> bytes:
        async with self._request("POST", path, timeout_seconds, **_json_body(body)) as response:
            _expect_success(response, path)
            return await response.read()

    @asynccontextmanager
    async def _request(
        self, method: str, path: str, timeout_seconds: float, **options: Any
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """The response to `method path`; a failure to reach it or to read it is a `ServiceUnavailable`."""
        try:
            async with self._session.request(
                method, f"{self._base_url}{path}", timeout=aiohttp.ClientTimeout(total=timeout_seconds), **options
            ) as response:
                yield response
        except (aiohttp.ClientError, TimeoutError) as error:
            # The detail names internal hosts: it is for the log, not for the client.
            log.warning("conversation service unavailable", extra={"path": path, "error": repr(error)})
            raise ServiceUnavailable("the conversation service is unavailable; retry later") from error


def _json_body(body: BaseModel) -> dict[str, Any]:
    return {"data": body.model_dump_json(), "headers": {"Content-Type": "application/json"}}


def _expect_success(response: aiohttp.ClientResponse, path: str) -> None:
    if response.status >= 400:
        # A 401 here means the two services disagree on INTERNAL_SERVICE_TOKEN: an operator's problem.
        log.warning("conversation service refused a call", extra={"path": path, "status": response.status})
        raise ServiceUnavailable("the conversation service is unavailable; retry later")


CONVERSATION_SERVICE = web.AppKey("conversation_service", ConversationServiceClient)


def conversation_service_ctx(
    base_url: str, service_token: str, timeouts: ClientTimeouts, *, cache_seconds: float
) -> Callable[[web.Application], AsyncIterator[None]]:
    """Every call carries the service token: conversation_service answers nobody else."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {service_token}"}) as session:
            loop = asyncio.get_running_loop()
            app[CONVERSATION_SERVICE] = ConversationServiceClient(
                session, base_url, timeouts, cache_seconds=cache_seconds, clock=loop.time
            )
            yield

    return ctx
