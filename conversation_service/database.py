"""The database plumbing every store of conversation_service shares: a pool's transactions retried
through a lost connection, reads that give up in time, and statements compiled and prepared once.

aiopg's quirks stay here: its connects and statements can drop a cancel on Python 3.11 (see
common.cancellation), it compiles a Core statement on every execution unless given SQL text, and
psycopg2 sends every statement as text, to be planned again, unless it is prepared.
"""

import asyncio
import logging
import re
import secrets
import weakref
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeAlias, TypeVar

import psycopg2
import sqlalchemy as sa
from aiopg.sa import Engine, SAConnection, create_engine
from aiopg.sa.result import RowProxy
from psycopg2.extras import NamedTupleCursor
from sqlalchemy.dialects import postgresql as pg
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    stop_after_delay,
    stop_never,
    wait_random_exponential,
)
from tenacity.stop import StopBaseT

from common.cancellation import cancel_dropped
from common.errors import ServiceUnavailable
from common.metrics import Metrics

log = logging.getLogger(__name__)

ResultT = TypeVar("ResultT")
# A prepared statement's row: a named tuple of its columns, of a class psycopg2 makes per set of names.
Row: TypeAlias = Any

# A dropped connection, a restarting server, a deadlock or a serialization failure: worth another try.
CONNECTION_ERRORS = (psycopg2.OperationalError, psycopg2.InterfaceError)


def event_loop() -> asyncio.AbstractEventLoop:
    """asyncio's own loop, not uvloop: aiopg and uvloop together do not survive connections reset
    under them. aiopg forgets to unregister the writer of a socket libpq closed, and uvloop then
    keeps a dead poll handle under the socket's number: the next connection given that number
    failed to register (`RuntimeError: ... UVPoll closed=True`, a write failed that should have
    been retried), another waited out aiopg's 60-second timeout holding the pool's lock, so that no
    read or write went through for a minute after the database came back, and once libuv aborted
    the process. On asyncio's loop the same resets cost nothing but the retries (the fault test of
    `tests/faults/test_database_resets.py`); the loop costs conversation_service about 0.01-0.02 ms
    more per page, within the noise of the pages' throughput (make bench, two pairs)."""
    return asyncio.new_event_loop()


def connect(database_url: str, *, pool_size: int) -> Any:
    """The pool of connections every store of the process shares, as an async context manager.

    Its sessions plan each prepared statement once, for any parameters: the keyset reads, whose best
    plan is the same for every account, conversation and cursor, and the writes, whose parameters are
    a batch's arrays. PostgreSQL's own choice planned the messages page afresh on every execution."""
    return create_engine(database_url, maxsize=pool_size, options="-c plan_cache_mode=force_generic_plan")


class Database:
    """A write retries a lost database connection for as long as the database stays away, pausing at
    most `retry_max_interval` between attempts: its messages stay unacked meanwhile, and the rest wait
    on the queue. A read, which a client is waiting on, gives up after `read_retry_seconds`."""

    def __init__(
        self,
        engine: Engine,
        *,
        retry_max_interval: float,
        read_retry_seconds: float = 1.0,
        metrics: Metrics | None = None,
    ) -> None:
        self._engine = engine
        self._retries = (metrics or Metrics()).database_retries
        self._retry_max_interval = retry_max_interval
        self._read_retry_seconds = read_retry_seconds

    async def is_available(self) -> bool:
        async with self._engine.acquire() as connection:
            return await connection.scalar(sa.select(sa.literal(1))) == 1

    async def write(self, work: Callable[[SAConnection], Awaitable[ResultT]]) -> ResultT:
        """Run `work` in one transaction, again from the start for as long as the database is unreachable.

        Safe because every write is idempotent. Giving up would only put the message back on the
        queue, where each delivery counts toward the queue's delivery limit: a long outage would
        dead-letter events that are perfectly good. Any other error propagates at once.
        """
        return await self._retried(stop_never, "write", self._transaction, work)

    async def _transaction(self, work: Callable[[SAConnection], Awaitable[ResultT]]) -> ResultT:
        async with self._engine.acquire() as connection, connection.begin():
            return await work(connection)

    async def read(self, work: Callable[[SAConnection], Awaitable[ResultT]]) -> ResultT:
        """A pooled connection the database dropped (it restarted) is retried at once on a fresh
        one; a database that stays away is a 503 for the client to retry."""
        try:
            return await self._retried(stop_after_delay(self._read_retry_seconds), "read", self._connected, work)
        except CONNECTION_ERRORS as error:
            raise ServiceUnavailable("the database is unavailable; retry later") from error

    async def _connected(self, work: Callable[[SAConnection], Awaitable[ResultT]]) -> ResultT:
        async with self._engine.acquire() as connection:
            return await work(connection)

    async def _retried(
        self,
        stop: StopBaseT,
        operation: str,
        attempt: Callable[[Callable[[SAConnection], Awaitable[ResultT]]], Awaitable[ResultT]],
        work: Callable[[SAConnection], Awaitable[ResultT]],
    ) -> ResultT:
        """`attempt(work)`, and again, through tenacity, while it loses its connection.

        The first attempt runs outside tenacity, whose machinery cost a page's read a third of its
        CPU in the database path; one that fails is tried again at once, then with pauses."""
        try:
            return await attempt(work)
        except CONNECTION_ERRORS as error:
            _raise_if_cancel_dropped(error)
            count_retry = self._retries.labels(operation=operation).inc
            count_retry()
            _log_retry(1, error)
        return await _retrying(stop, self._retry_max_interval, count_retry)(attempt, work)


def _retrying(stop: StopBaseT, max_interval: float, count_retry: Callable[[], None]) -> AsyncRetrying:
    """Full jitter, so that the writes in hand do not all knock at once when the database returns.

    Its pauses are asyncio sleeps: cancelling the caller (a consumer stopping) ends it at once. Its
    attempts come after the first one, outside it.
    """

    def before_sleep(state: RetryCallState) -> None:
        count_retry()
        _log_retry(state.attempt_number + 1, state.outcome.exception() if state.outcome is not None else None)

    return AsyncRetrying(
        retry=_lost_connection_and_not_cancelled,
        wait=wait_random_exponential(multiplier=0.05, max=max_interval),
        stop=stop,
        before_sleep=before_sleep,
        reraise=True,
    )


def _lost_connection_and_not_cancelled(state: RetryCallState) -> bool:
    error = state.outcome.exception() if state.outcome is not None else None
    if not isinstance(error, CONNECTION_ERRORS):
        return False
    _raise_if_cancel_dropped(error)
    return True


def _raise_if_cancel_dropped(error: BaseException) -> None:
    # Retried, a write would outlive its consumer's shutdown for as long as the database stayed away.
    if cancel_dropped():
        raise asyncio.CancelledError from error


def _log_retry(attempt: int, error: BaseException | None) -> None:
    # Every write in hand retries through an outage: logging each attempt would flood the log, so
    # only the 1st, 2nd, 4th, 8th... are.
    if attempt & (attempt - 1):
        return
    log.warning("database unreachable; retrying", extra={"attempt": attempt, "error": repr(error)})


@dataclass(frozen=True)
class Prepared:
    """A statement compiled once, at import, and planned once per connection: its first use on a
    connection sends `PREPARE`, every use `EXECUTE` (its `sql`).

    aiopg compiles a Core statement on every execution, and PostgreSQL plans every statement psycopg2
    sends it as text: for a page's read each cost about as much as running it, and a small batch of
    writes spent a millisecond planning. The parameters are plain psycopg2 ones: the constants
    SQLAlchemy bound while building the statement, plus the caller's values, in types psycopg2
    adapts itself (UUIDs as text, JSON wrapped, lists as ARRAYs). Each needs a type, the statement's
    parameter type, into which PostgreSQL coerces the value psycopg2 wrote.

    A prepared statement outlives a rolled-back transaction, and aiopg closes a connection whose
    statement it abandons (a cancel, a timeout): one that answered holds it.
    """

    sql: str
    constants: Mapping[str, Any]
    prepare: str
    # aiopg's connections, each for as long as it lives: the pool's new ones prepare the statement afresh.
    prepared_on: "weakref.WeakSet[Any]" = field(default_factory=weakref.WeakSet, compare=False, repr=False)

    @classmethod
    def of(cls, statement: sa.sql.ClauseElement) -> "Prepared":
        dialect = pg.dialect()
        compiled = statement.compile(dialect=dialect)
        binds = {name: bind for bind, name in compiled.bind_names.items()}
        untyped = sorted(name for name, bind in binds.items() if isinstance(bind.type, sa.types.NullType))
        if untyped:
            raise TypeError(f"a prepared statement's parameters need types: {', '.join(untyped)}")
        order: list[str] = []

        def number(match: re.Match[str]) -> str:
            # `%%` stays: the PREPARE goes through psycopg2's formatting too, which makes it one `%`.
            if match.group(1) is None:
                return match.group(0)
            if match.group(1) not in order:
                order.append(match.group(1))
            return f"${order.index(match.group(1)) + 1}"

        body = re.sub(r"%\((\w+)\)s|%%", number, str(compiled))
        # Its own name, even beside a copy of the same SQL (another module's) on the same connection.
        name = f"prepared_{secrets.token_hex(8)}"
        types = ", ".join(binds[parameter].type.compile(dialect=dialect) for parameter in order)
        arguments = ", ".join(f"%({parameter})s" for parameter in order)
        return cls(
            sql=f"EXECUTE {name}({arguments})" if order else f"EXECUTE {name}",
            constants=_constants(compiled),
            prepare=f"PREPARE {name}({types}) AS {body}" if order else f"PREPARE {name} AS {body}",
        )

    async def scalar(self, connection: SAConnection, params: Mapping[str, Any]) -> Any:
        """The first column of the first row; None without rows."""
        async with connection.connection.cursor() as cursor:
            await self._execute_on(cursor, connection, params)
            row = await cursor.fetchone() if cursor.description is not None else None
            return row[0] if row is not None else None

    async def execute(self, connection: SAConnection, params: Mapping[str, Any]) -> list[Row]:
        """The rows as named tuples, on a cursor of the connection itself: without aiopg.sa's result
        and row wrappers, a messages page cost conversation_service 0.345-0.361 ms of CPU instead of
        0.365-0.380 (wrk at it alone, 16 connections, three pairs)."""
        async with connection.connection.cursor(cursor_factory=NamedTupleCursor) as cursor:
            await self._execute_on(cursor, connection, params)
            return await cursor.fetchall() if cursor.description is not None else []

    async def _execute_on(self, cursor: Any, connection: SAConnection, params: Mapping[str, Any]) -> None:
        values = {**self.constants, **params}
        if connection.connection not in self.prepared_on:
            await cursor.execute(self.prepare, values)
            self.prepared_on.add(connection.connection)
        await cursor.execute(self.sql, values)


def _constants(compiled: sa.sql.compiler.Compiled) -> Mapping[str, Any]:
    """The values SQLAlchemy bound while building the statement."""
    constants = {name: bind.effective_value for bind, name in compiled.bind_names.items() if not bind.required}
    return MappingProxyType(constants)


async def fetch_all(connection: SAConnection, query: sa.sql.Select) -> list[RowProxy]:
    result = await connection.execute(query)
    return await result.fetchall()
