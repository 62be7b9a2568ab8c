"""Accounts, the sender addresses they own and their API keys, in PostgreSQL.

The gateway asks (through conversation_service's internal routes) who holds a key and who owns an
address; operators create and change them with bin/admin. A key is stored only as its SHA-256 and
its visible prefix: the key itself is handed out once, by `create_key`, and never kept.
"""

import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

import psycopg2.errors
import sqlalchemy as sa
from aiopg.sa import Engine, SAConnection
from aiopg.sa.result import RowProxy
from sqlalchemy.dialects import postgresql as pg

from common.accounts import DEVELOPMENT_ACCOUNT_ID, KeyIdentity, Scope, generate_api_key, hash_api_key
from common.addresses import domain_of
from common.errors import Conflict, NotFound, ServiceUnavailable
from conversation_service.database import CONNECTION_ERRORS
from conversation_service.schema import account_addresses, accounts, api_keys

ResultT = TypeVar("ResultT")

# A key's last use is recorded at most this often: a busy key is not a write per request.
LAST_USED_RESOLUTION = timedelta(minutes=1)
_USE_UNRECORDED = api_keys.c.last_used_at.is_(None) | (api_keys.c.last_used_at <= sa.func.now() - LAST_USED_RESOLUTION)


@dataclass(frozen=True)
class Account:
    id: uuid.UUID
    name: str
    created_at: datetime


@dataclass(frozen=True)
class OwnedAddress:
    address: str
    created_at: datetime


@dataclass(frozen=True)
class ApiKey:
    """A key as operators see it: everything but the key."""

    prefix: str
    account_id: uuid.UUID
    scopes: tuple[Scope, ...]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


class AccountStore:
    """`development_fallback`: in the development profile, the development account owns every address
    no other account owns."""

    def __init__(self, engine: Engine, *, development_fallback: bool) -> None:
        self._engine = engine
        self._development_fallback = development_fallback

    # What the gateway asks.

    async def verify_key(self, key_hash: str) -> KeyIdentity | None:
        """Who holds the key with this hash; None for a key that is unknown, revoked or expired."""
        usable = (
            sa.select(
                api_keys.c.prefix,
                api_keys.c.account_id,
                api_keys.c.scopes,
                api_keys.c.expires_at,
                _USE_UNRECORDED.label("use_unrecorded"),
            )
            .where(api_keys.c.key_hash == key_hash, api_keys.c.revoked_at.is_(None))
            .where(api_keys.c.expires_at.is_(None) | (api_keys.c.expires_at > sa.func.now()))
        )

        async def verify(connection: SAConnection) -> KeyIdentity | None:
            row = await (await connection.execute(usable)).first()
            if row is None:
                return None
            if row.use_unrecorded:
                # Conditional again, so that of two requests racing past the check one writes.
                await connection.execute(
                    api_keys.update()
                    .where(api_keys.c.prefix == row.prefix, _USE_UNRECORDED)
                    .values(last_used_at=sa.func.now())
                )
            return KeyIdentity(
                account_id=row.account_id, key_prefix=row.prefix, scopes=tuple(row.scopes), expires_at=row.expires_at
            )

        return await self._run(verify)

    async def address_owner(self, address: str) -> uuid.UUID | None:
        """The account owning the normalized address itself, else its `@domain`; else, with the
        development fallback, the development account; else None."""
        domain = domain_of(address)
        candidates = [address] if domain is None else [address, domain]
        query = (
            sa.select(account_addresses.c.account_id)
            .where(account_addresses.c.address.in_(candidates))
            # The exact address wins over its domain.
            .order_by((account_addresses.c.address == address).desc())
            .limit(1)
        )
        owner = await self._run(lambda connection: connection.scalar(query))
        if owner is None and self._development_fallback:
            return DEVELOPMENT_ACCOUNT_ID
        return owner

    # What operators do (bin/admin).

    async def create_account(self, name: str) -> Account:
        statement = accounts.insert().values(name=name).returning(*accounts.c)
        try:
            row = await self._run(lambda connection: _first(connection, statement))
        except psycopg2.errors.UniqueViolation as error:
            raise Conflict(f"an account named {name!r} exists already") from error
        assert row is not None, "INSERT ... RETURNING returns the row"
        return _account(row)

    async def list_accounts(self) -> list[Account]:
        query = sa.select(accounts).order_by(accounts.c.created_at, accounts.c.name)
        return [_account(row) for row in await self._run(lambda connection: _all(connection, query))]

    async def find_account(self, id_or_name: str) -> Account:
        """An account by its id or, failing that, its name."""
        by_name = accounts.c.name == id_or_name
        query = sa.select(accounts).where(by_name)
        try:
            by_id = accounts.c.id == uuid.UUID(id_or_name)
        except ValueError:
            pass
        else:
            query = sa.select(accounts).where(by_id | by_name).order_by(by_id.desc()).limit(1)
        row = await self._run(lambda connection: _first(connection, query))
        if row is None:
            raise NotFound(f"no account with the id or name {id_or_name!r}")
        return _account(row)

    async def add_address(self, account: Account, address: str) -> None:
        """Give the normalized `address` to `account`; Conflict, naming the owner, if one has it."""
        insert = pg.insert(account_addresses).values(address=address, account_id=account.id).on_conflict_do_nothing()
        owner = (
            sa.select(accounts)
            .select_from(accounts.join(account_addresses, account_addresses.c.account_id == accounts.c.id))
            .where(account_addresses.c.address == address)
        )

        async def add(connection: SAConnection) -> None:
            if (await connection.execute(insert)).rowcount == 1:
                return
            holder = await _first(connection, owner)
            # None only if the holder gave the address up in between, which no command does yet.
            name = f"the account {holder.name} ({holder.id})" if holder is not None else "another account"
            raise Conflict(f"{address} is already owned by {name}")

        await self._run(add)

    async def list_addresses(self, account: Account) -> list[OwnedAddress]:
        query = (
            sa.select(account_addresses.c.address, account_addresses.c.created_at)
            .where(account_addresses.c.account_id == account.id)
            .order_by(account_addresses.c.address)
        )
        rows = await self._run(lambda connection: _all(connection, query))
        return [OwnedAddress(address=row.address, created_at=row.created_at) for row in rows]

    async def create_key(
        self, account: Account, scopes: Iterable[Scope], *, expires_in: timedelta | None = None
    ) -> tuple[str, ApiKey]:
        """A new key and what is stored of it. The key is returned here once and never again."""
        key, prefix = generate_api_key()
        statement = (
            api_keys.insert()
            .values(
                prefix=prefix,
                key_hash=hash_api_key(key),
                account_id=account.id,
                scopes=sorted({Scope(scope).value for scope in scopes}),
                expires_at=None if expires_in is None else sa.func.now() + expires_in,
            )
            .returning(*api_keys.c)
        )
        row = await self._run(lambda connection: _first(connection, statement))
        assert row is not None, "INSERT ... RETURNING returns the row"
        return key, _api_key(row)

    async def list_keys(self, account: Account) -> list[ApiKey]:
        query = sa.select(api_keys).where(api_keys.c.account_id == account.id).order_by(api_keys.c.created_at)
        return [_api_key(row) for row in await self._run(lambda connection: _all(connection, query))]

    async def revoke_key(self, prefix: str) -> ApiKey:
        """Revoke the key named by `prefix` from now on; revoking it again keeps the first time."""
        statement = (
            api_keys.update()
            .where(api_keys.c.prefix == prefix)
            .values(revoked_at=sa.func.coalesce(api_keys.c.revoked_at, sa.func.now()))
            .returning(*api_keys.c)
        )
        row = await self._run(lambda connection: _first(connection, statement))
        if row is None:
            raise NotFound(f"no key with the prefix {prefix!r}")
        return _api_key(row)

    async def _run(self, work: Callable[[SAConnection], Awaitable[ResultT]]) -> ResultT:
        """`work` on a pooled connection, each statement its own transaction: none of these needs more,
        and a key is verified on every request, where a BEGIN and a COMMIT would double the round trips."""
        try:
            async with self._engine.acquire() as connection:
                return await work(connection)
        except CONNECTION_ERRORS as error:
            raise ServiceUnavailable("the database is unavailable; retry later") from error


async def _first(connection: SAConnection, statement: sa.sql.Executable) -> RowProxy | None:
    return await (await connection.execute(statement)).first()


async def _all(connection: SAConnection, statement: sa.sql.Executable) -> list[RowProxy]:
    return await (await connection.execute(statement)).fetchall()


def _account(row: RowProxy) -> Account:
    return Account(id=row.id, name=row.name, created_at=row.created_at)


def _api_key(row: RowProxy) -> ApiKey:
    return ApiKey(
        prefix=row.prefix,
        account_id=row.account_id,
        scopes=tuple(Scope(scope) for scope in row.scopes),
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        last_used_at=row.last_used_at,
    )
