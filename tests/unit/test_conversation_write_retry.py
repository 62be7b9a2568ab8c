"""The repository against a fake engine whose database is away: writes wait it out, reads give up,
and a shutdown still ends them."""

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

import psycopg2
import pytest

from common.accounts import DEVELOPMENT_ACCOUNT_ID
from common.broker import _follow
from common.errors import ServiceUnavailable
from conversation_service.handlers import WriteOutcome
from conversation_service.housekeeping import run_every
from conversation_service.repository import MessageRepository
from tests.factories import eventually, send_message


class AnsweringCursor:
    """Every statement on it answers nothing."""

    description = None

    async def __aenter__(self) -> "AnsweringCursor":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    async def execute(self, sql: str, params: dict[str, Any]) -> None:
        return None


class AnsweringConnection:
    """A connection to a database that has everything already: every write is a replay."""

    def begin(self) -> "AnsweringConnection":
        return self

    async def __aenter__(self) -> "AnsweringConnection":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    @property
    def connection(self) -> "AnsweringConnection":
        """The driver's connection, which prepared statements run on."""
        return self

    def cursor(self, **options: Any) -> AnsweringCursor:
        return AnsweringCursor()


class OutageEngine:
    """Refuses `failures` connections (all of them by default) with `error`, then connects."""

    def __init__(self, error: Exception | None = None, failures: float = float("inf")) -> None:
        self.error = error or psycopg2.OperationalError("could not connect to server: Connection refused")
        self.failures = failures
        self.attempts = 0

    def acquire(self) -> "OutageEngine":
        return self

    async def __aenter__(self) -> AnsweringConnection:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise self.error
        return AnsweringConnection()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        return None


def repository_on(engine: OutageEngine) -> MessageRepository:
    # The pause between tries is at most 10 ms here; the old deadline gave up after 15 s of them.
    return MessageRepository(engine, retry_max_interval=0.01, read_retry_seconds=0.05)  # type: ignore[arg-type]


async def test_a_write_keeps_retrying_for_as_long_as_the_database_stays_away() -> None:
    engine = OutageEngine()
    write = asyncio.create_task(repository_on(engine).store_outbound(send_message()))

    await eventually(lambda: _at_least(engine, 100), "100 tries of the write")

    assert not write.done()
    write.cancel()
    # Shutdown cancels the writes in hand: a retry must end at once, not hang or swallow it.
    done, _ = await asyncio.wait({write}, timeout=1.0)
    assert done == {write}
    assert write.cancelled()


async def cancel_and_drop_it() -> None:
    """Cancel the running task and swallow the cancel, as Python 3.11's asyncio.wait_for (which aiopg
    connects and runs every statement with) does when the cancel lands as its inner future finishes
    (CPython gh-86296)."""
    task = asyncio.current_task()
    assert task is not None
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.sleep(0)


class CancelDroppingEngine(OutageEngine):
    """Its first refusal comes with the caller's cancel dropped."""

    async def __aenter__(self) -> AnsweringConnection:
        if self.attempts == 0:
            await cancel_and_drop_it()
        return await super().__aenter__()


async def purge_failing_with_the_cancel_dropped() -> int:
    await cancel_and_drop_it()
    raise psycopg2.OperationalError("could not connect to server: Connection refused")


async def purge_done_with_the_cancel_dropped() -> int:
    await cancel_and_drop_it()
    return 0


async def test_a_cancel_dropped_inside_the_driver_still_ends_the_write() -> None:
    engine = CancelDroppingEngine()
    write = asyncio.create_task(repository_on(engine).store_outbound(send_message()))

    done, _ = await asyncio.wait({write}, timeout=1.0)

    assert done == {write}
    assert write.cancelled()
    assert engine.attempts == 1


@pytest.mark.parametrize(
    "purge", [purge_failing_with_the_cancel_dropped, purge_done_with_the_cancel_dropped], ids=["failed", "done"]
)
async def test_a_key_purge_cancelled_as_its_round_ends_stops_instead_of_sleeping_an_hour(
    purge: Callable[[], Awaitable[int]],
) -> None:
    # A shutdown awaits the chore: had it slept, the process would never have exited.
    purging = asyncio.create_task(run_every("purge keys", purge, interval_seconds=3600))

    done, _ = await asyncio.wait({purging}, timeout=1.0)

    assert done == {purging}
    assert purging.cancelled()


class PausableConsumer:
    def __init__(self) -> None:
        self.pauses = 0

    async def pause(self) -> None:
        self.pauses += 1

    async def resume(self) -> None:
        pass


async def test_a_consumer_following_the_database_stops_once_a_check_dropped_its_cancel() -> None:
    consumer = PausableConsumer()

    async def database_gone_with_the_cancel_dropped() -> bool:
        await cancel_and_drop_it()
        raise psycopg2.OperationalError("could not connect to server: Connection refused")

    following = asyncio.create_task(_follow(consumer, database_gone_with_the_cancel_dropped, every_seconds=0.01))  # type: ignore[arg-type]

    done, _ = await asyncio.wait({following}, timeout=1.0)

    assert done == {following}
    assert following.cancelled()
    assert consumer.pauses == 1


async def test_a_write_completes_once_the_database_is_back() -> None:
    engine = OutageEngine(failures=30)

    outcome = await asyncio.wait_for(repository_on(engine).store_outbound(send_message()), timeout=5.0)

    assert outcome is WriteOutcome.REPLAYED
    assert engine.attempts == 31


async def test_an_error_other_than_a_lost_connection_propagates_at_once() -> None:
    engine = OutageEngine(psycopg2.errors.UniqueViolation("duplicate key value"))

    with pytest.raises(psycopg2.errors.UniqueViolation):
        await repository_on(engine).store_outbound(send_message())

    assert engine.attempts == 1


async def test_a_read_gives_up_with_service_unavailable() -> None:
    engine = OutageEngine()

    with pytest.raises(ServiceUnavailable):
        await repository_on(engine).list_conversations(DEVELOPMENT_ACCOUNT_ID, limit=10)

    assert engine.attempts > 1


async def test_an_outage_is_logged_at_ever_longer_intervals(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="conversation_service.database")
    engine = OutageEngine(failures=100)

    await asyncio.wait_for(repository_on(engine).store_outbound(send_message()), timeout=5.0)

    logged = [record.__dict__["attempt"] for record in caplog.records]
    assert logged == [1, 2, 4, 8, 16, 32, 64]


async def _at_least(engine: OutageEngine, attempts: int) -> bool:
    return engine.attempts >= attempts
