"""Fakes of the gateway's injected dependencies, for tests that run without a broker, a key store or
conversation_service."""

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from common.accounts import (
    ACCOUNT_HEADER,
    ADDRESS_OWNER_PATH,
    DEVELOPMENT_ACCOUNT_ID,
    VERIFY_KEY_PATH,
    AddressOwner,
    AddressOwnerQuery,
    KeyIdentity,
    KeyVerification,
    Scope,
    generate_api_key,
    hash_api_key,
)
from common.broker import BrokerUnavailable
from common.contracts import Contract, SendMessage
from common.errors import ServiceUnavailable
from common.idempotency import ClaimState, KeyClaim, KeyClaimRequest, KeyPublished, KeyReleased


class RecordingPublisher:
    def __init__(self) -> None:
        self.published: list[Contract] = []
        self.fail = False

    async def publish(self, contract: Contract) -> None:
        if self.fail:
            raise BrokerUnavailable("broker is down")
        self.published.append(contract)


class MemoryKeyStore:
    """conversation_service's key store rules in memory, without expiry: keys per account; a claim is
    handed over only once it was released."""

    def __init__(self) -> None:
        self.keys: dict[tuple[uuid.UUID, str], tuple[str, SendMessage]] = {}
        self.published: set[tuple[uuid.UUID, str]] = set()
        self.released: set[tuple[uuid.UUID, str]] = set()
        self.reachable = True

    async def claim(self, request: KeyClaimRequest) -> KeyClaim:
        self._answer()
        key = (request.command.account_id, request.key)
        fingerprint, command = self.keys.setdefault(key, (request.request_fingerprint, request.command))
        if command == request.command:
            return KeyClaim(state=ClaimState.CLAIMED, command=command)
        if fingerprint != request.request_fingerprint:
            return KeyClaim(state=ClaimState.MISMATCH, command=command)
        if key in self.released:
            self.released.discard(key)
            return KeyClaim(state=ClaimState.CLAIMED, command=command)
        state = ClaimState.PUBLISHED if key in self.published else ClaimState.IN_PROGRESS
        return KeyClaim(state=state, command=command)

    async def mark_published(self, published: KeyPublished) -> None:
        self._answer()
        self.published.add((published.account_id, published.key))

    async def release(self, released: KeyReleased) -> None:
        self._answer()
        self.released.add((released.account_id, released.key))

    def _answer(self) -> None:
        if not self.reachable:
            raise ServiceUnavailable("the idempotency key store is unavailable; retry later")


class FakeConversationService:
    """conversation_service's internal API as the gateway calls it, in memory: key verification and
    address owners by the rules of common.accounts, and reads that answer with the account they were
    asked for. It answers only callers with its service token, as the real one does."""

    def __init__(self, service_token: str, *, development_fallback: bool = True) -> None:
        self.service_token = service_token
        self.development_fallback = development_fallback
        # Off: an expired key is still vouched for, as a cached answer from before its expiry would be.
        self.honours_expiry = True
        # Off: every call is a 503, as while its database is unreachable.
        self.available = True
        self.keys: dict[str, KeyIdentity] = {}
        self.owners: dict[str, uuid.UUID] = {}
        self.verifications = 0
        self.owner_lookups = 0
        self.owner_asked = asyncio.Event()
        # Set, owner lookups are answered only once it is released: lookups in flight together.
        self.owner_gate: asyncio.Event | None = None
        self.reads: list[tuple[str, str | None]] = []

    def add_key(
        self, account_id: uuid.UUID, scopes: tuple[Scope, ...] = (Scope.SEND, Scope.READ), **options: Any
    ) -> str:
        key, prefix = generate_api_key()
        self.keys[hash_api_key(key)] = KeyIdentity(account_id=account_id, key_prefix=prefix, scopes=scopes, **options)
        return key

    def revoke(self, key: str) -> None:
        del self.keys[hash_api_key(key)]

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._token_middleware])
        app.router.add_post(VERIFY_KEY_PATH, self._verify)
        app.router.add_post(ADDRESS_OWNER_PATH, self._owner)
        app.router.add_get("/{path:.*}", self._read)
        return app

    @web.middleware
    async def _token_middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {self.service_token}":
            return web.json_response({"error": "unauthorized"}, status=401)
        if not self.available:
            return web.json_response({"error": "service_unavailable"}, status=503)
        return await handler(request)

    async def _verify(self, request: web.Request) -> web.Response:
        self.verifications += 1
        query = KeyVerification.model_validate_json(await request.read())
        identity = self.keys.get(query.key_hash)
        expires_at = identity.expires_at if identity is not None else None
        expired = self.honours_expiry and expires_at is not None and expires_at <= datetime.now(UTC)
        if identity is None or expired:
            return web.json_response({"error": "not_found"}, status=404)
        return web.json_response(text=identity.model_dump_json())

    async def _owner(self, request: web.Request) -> web.Response:
        self.owner_lookups += 1
        self.owner_asked.set()
        if self.owner_gate is not None:
            await self.owner_gate.wait()
        address = AddressOwnerQuery.model_validate_json(await request.read()).address
        owner = self.owners.get(address) or self.owners.get("@" + address.rpartition("@")[2])
        if owner is None and self.development_fallback:
            owner = DEVELOPMENT_ACCOUNT_ID
        if owner is None:
            return web.json_response({"error": "not_found"}, status=404)
        return web.json_response(text=AddressOwner(account_id=owner).model_dump_json())

    async def _read(self, request: web.Request) -> web.Response:
        account = request.headers.get(ACCOUNT_HEADER)
        self.reads.append((request.path, account))
        return web.json_response({"path": request.path, "account_id": account})


class AddressBook:
    """The intake's address directory in memory: `owners`, else `fallback` (as the development
    profile's development account)."""

    def __init__(self, fallback: uuid.UUID | None = DEVELOPMENT_ACCOUNT_ID) -> None:
        self.owners: dict[str, uuid.UUID] = {}
        self.fallback = fallback

    async def owner_of(self, address: str) -> uuid.UUID | None:
        return self.owners.get(address, self.fallback)
