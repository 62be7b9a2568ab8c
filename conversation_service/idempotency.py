"""Clients' Idempotency-Keys, kept for every gateway replica: claim a key for a send, report it published.

Keys are per account: two accounts' `order-42` are two keys, and neither ever sees the other's.

A claim is one transaction that locks the key's row, so of any number of requests with one key,
on any number of gateways, exactly one holds it at a time. The gateway builds each request's
command with a fresh message id; the stored command is the one every repeat answers with and, if
the first request never published it, publishes.
"""

import logging
import uuid
from datetime import timedelta

import sqlalchemy as sa
from aiohttp import web
from aiopg.sa import Engine, SAConnection
from sqlalchemy.dialects import postgresql as pg

from common.contracts import SendMessage
from common.errors import NotFound, ServiceUnavailable
from common.http import request_validation
from common.idempotency import (
    CLAIM_PATH,
    PUBLISHED_PATH,
    RELEASED_PATH,
    ClaimState,
    KeyClaim,
    KeyClaimRequest,
    KeyPublished,
    KeyReleased,
)
from conversation_service.database import CONNECTION_ERRORS
from conversation_service.schema import idempotency_keys

log = logging.getLogger(__name__)


class IdempotencyKeyStore:
    """`ttl_seconds` is how long a key holds; `claim_seconds` how long a request that claimed a key
    has to publish before a repeat takes the publish over."""

    def __init__(self, engine: Engine, *, ttl_seconds: float, claim_seconds: float) -> None:
        self._engine = engine
        self._ttl = timedelta(seconds=ttl_seconds)
        self._claim = timedelta(seconds=claim_seconds)

    async def claim(self, request: KeyClaimRequest) -> KeyClaim:
        try:
            async with self._engine.acquire() as connection, connection.begin():
                return await self._claim_locked(connection, request)
        except CONNECTION_ERRORS as error:
            raise ServiceUnavailable("the database is unavailable; retry later") from error

    async def mark_published(self, account_id: uuid.UUID, key: str, message_id: uuid.UUID) -> bool:
        """False if the key no longer holds this message (it expired and was used again)."""
        statement = (
            idempotency_keys.update()
            .where(_is_key(account_id, key), idempotency_keys.c.message_id == message_id)
            .values(published_at=sa.func.coalesce(idempotency_keys.c.published_at, sa.func.now()))
        )
        return await self._updated(statement)

    async def release(self, account_id: uuid.UUID, key: str, message_id: uuid.UUID) -> bool:
        """Let the next claim of `key` take it over at once; False if the key holds no such unpublished
        message. Safe even if the publish did reach the broker after all: the repeat publishes the same
        command, and its message id makes that a duplicate downstream."""
        statement = (
            idempotency_keys.update()
            .where(
                _is_key(account_id, key),
                idempotency_keys.c.message_id == message_id,
                idempotency_keys.c.published_at.is_(None),
            )
            .values(claimed_at=sa.func.now() - self._claim)
        )
        return await self._updated(statement)

    async def _updated(self, statement: sa.sql.Update) -> bool:
        """Whether `statement` updated the key's row."""
        try:
            async with self._engine.acquire() as connection:
                return await connection.scalar(statement.returning(idempotency_keys.c.key)) is not None
        except CONNECTION_ERRORS as error:
            raise ServiceUnavailable("the database is unavailable; retry later") from error

    async def purge_expired(self) -> int:
        """Delete the keys that no longer hold; how many went. A claim treats an expired key as new
        anyway, so this only keeps the table from growing with every key ever used."""
        statement = idempotency_keys.delete().where(idempotency_keys.c.created_at <= sa.func.now() - self._ttl)
        async with self._engine.acquire() as connection:
            result = await connection.execute(statement)
            return result.rowcount

    async def _claim_locked(self, connection: SAConnection, request: KeyClaimRequest) -> KeyClaim:
        command = request.command
        result = await connection.execute(_insert_or_lock(request))
        row = await result.first()
        if row.message_id == command.message_id:
            return KeyClaim(state=ClaimState.CLAIMED, command=command)
        if row.created_at <= row.now - self._ttl:
            await connection.execute(_take_over(request, _new_key_values(request)))
            return KeyClaim(state=ClaimState.CLAIMED, command=command)
        stored = SendMessage.model_validate(row.command)
        if row.request_fingerprint != request.request_fingerprint:
            return KeyClaim(state=ClaimState.MISMATCH, command=stored)
        if row.published_at is not None:
            return KeyClaim(state=ClaimState.PUBLISHED, command=stored)
        if row.claimed_at <= row.now - self._claim:
            await connection.execute(_take_over(request, {"claimed_at": sa.func.now()}))
            return KeyClaim(state=ClaimState.CLAIMED, command=stored)
        return KeyClaim(state=ClaimState.IN_PROGRESS, command=stored)


def _new_key_values(request: KeyClaimRequest) -> dict[str, object]:
    return {
        "request_fingerprint": request.request_fingerprint,
        "message_id": request.command.message_id,
        "command": request.command.model_dump(mode="json"),
        "created_at": sa.func.now(),
        "claimed_at": sa.func.now(),
        "published_at": None,
    }


def _insert_or_lock(request: KeyClaimRequest) -> sa.sql.Insert:
    """Insert the key, or, if it is taken, lock its row for this transaction and return it.

    The no-op update is what makes a taken key return its row and wait for any other transaction on
    it: ON CONFLICT DO NOTHING would return nothing and lock nothing.
    """
    insert = pg.insert(idempotency_keys).values(
        account_id=request.command.account_id, key=request.key, **_new_key_values(request)
    )
    return insert.on_conflict_do_update(
        index_elements=[idempotency_keys.c.account_id, idempotency_keys.c.key], set_={"key": insert.excluded.key}
    ).returning(*idempotency_keys.c, sa.func.now().label("now"))


def _is_key(account_id: uuid.UUID, key: str) -> sa.sql.ColumnElement:
    return sa.and_(idempotency_keys.c.account_id == account_id, idempotency_keys.c.key == key)


def _take_over(request: KeyClaimRequest, values: dict[str, object]) -> sa.sql.Update:
    return idempotency_keys.update().where(_is_key(request.command.account_id, request.key)).values(values)


KEY_STORE = web.AppKey("idempotency_key_store", IdempotencyKeyStore)


async def claim_key(request: web.Request) -> web.Response:
    with request_validation():
        claim = KeyClaimRequest.model_validate_json(await request.read())
    answer = await request.app[KEY_STORE].claim(claim)
    return web.json_response(text=answer.model_dump_json())


async def mark_published(request: web.Request) -> web.Response:
    with request_validation():
        published = KeyPublished.model_validate_json(await request.read())
    if not await request.app[KEY_STORE].mark_published(published.account_id, published.key, published.message_id):
        raise NotFound(f"the key holds no message {published.message_id}")
    return web.Response(status=204)


async def release_key(request: web.Request) -> web.Response:
    with request_validation():
        released = KeyReleased.model_validate_json(await request.read())
    if not await request.app[KEY_STORE].release(released.account_id, released.key, released.message_id):
        raise NotFound(f"the key holds no unpublished message {released.message_id}")
    return web.Response(status=204)


def add_key_routes(app: web.Application) -> None:
    app.router.add_post(CLAIM_PATH, claim_key)
    app.router.add_post(PUBLISHED_PATH, mark_published)
    app.router.add_post(RELEASED_PATH, release_key)
