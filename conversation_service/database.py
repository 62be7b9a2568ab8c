"""The database plumbing every store of conversation_service shares: a pool's transactions retried
through a lost connection, reads that give up in time, and statements compiled once.

aiopg's quirks stay here: its connects and statements can drop a cancel on Python 3.11 (see
common.cancellation), and it compiles a Core statement on every execution unless given SQL text.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, TypeVar

import psycopg2
import sqlalchemy as sa
from aiopg.sa import Engine, SAConnection
from aiopg.sa.result import RowProxy
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

# A dropped connection, a restarting server, a deadlock or a serialization failure: worth another try.
CONNECTION_ERRORS = (psycopg2.OperationalError, psycopg2.InterfaceError)


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
        return await _retrying(stop_never, self._retry_max_interval, self._retries.labels(operation="write").inc)(
            self._transaction, work
        )

    async def _transaction(self, work: Callable[[SAConnection], Awaitable[ResultT]]) -> ResultT:
        async with self._engine.acquire() as connection, connection.begin():
            return await work(connection)

    async def read(self, work: Callable[[SAConnection], Awaitable[ResultT]]) -> ResultT:
        """A pooled connection the database dropped (it restarted) is retried at once on a fresh
        one; a database that stays away is a 503 for the client to retry."""
        try:
            return await _retrying(
                stop_after_delay(self._read_retry_seconds),
                self._retry_max_interval,
                self._retries.labels(operation="read").inc,
            )(self._connected, work)
        except CONNECTION_ERRORS as error:
            raise ServiceUnavailable("the database is unavailable; retry later") from error

    async def _connected(self, work: Callable[[SAConnection], Awaitable[ResultT]]) -> ResultT:
        async with self._engine.acquire() as connection:
            return await work(connection)


def _retrying(stop: StopBaseT, max_interval: float, count_retry: Callable[[], None]) -> AsyncRetrying:
    """Full jitter, so that the writes in hand do not all knock at once when the database returns.

    Its pauses are asyncio sleeps: cancelling the caller (a consumer stopping) ends it at once.
    """

    def before_sleep(state: RetryCallState) -> None:
        count_retry()
        _log_retry(state)

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
    # Retried, a write would outlive its consumer's shutdown for as long as the database stayed away.
    if cancel_dropped():
        raise asyncio.CancelledError from error
    return True


def _log_retry(state: RetryCallState) -> None:
    # Every write in hand retries through an outage: logging each attempt would flood the log, so
    # only the 1st, 2nd, 4th, 8th... are.
    if state.attempt_number & (state.attempt_number - 1):
        return
    error = state.outcome.exception() if state.outcome is not None else None
    log.warning(
        "database unreachable; retrying",
        extra={"attempt": state.attempt_number, "error": repr(error)},
    )


@dataclass(frozen=True)
class Compiled:
    """A statement compiled once, at import.

    aiopg compiles a Core statement on every execution; for the per-message writes and the reads of
    a page that costs more CPU than PostgreSQL spends running them. The SQL text takes plain psycopg2 parameters: the
    constants SQLAlchemy bound while building the statement, plus the caller's values, which are
    given in types psycopg2 adapts itself (UUIDs as text, JSON wrapped).
    """

    sql: str
    constants: Mapping[str, Any]

    @classmethod
    def of(cls, statement: sa.sql.ClauseElement) -> "Compiled":
        compiled = statement.compile(dialect=pg.dialect())
        constants = {name: bind.effective_value for bind, name in compiled.bind_names.items() if not bind.required}
        return cls(str(compiled), MappingProxyType(constants))

    async def scalar(self, connection: SAConnection, params: Mapping[str, Any]) -> Any:
        return await connection.scalar(self.sql, {**self.constants, **params})

    async def execute(self, connection: SAConnection, params: Mapping[str, Any]) -> list[RowProxy]:
        result = await connection.execute(self.sql, {**self.constants, **params})
        return await result.fetchall() if result.returns_rows else []


async def fetch_all(connection: SAConnection, query: sa.sql.Select) -> list[RowProxy]:
    result = await connection.execute(query)
    return await result.fetchall()
