"""PostgreSQL's connections reset again and again under conversation_service's event loop: every
write gets through once the database answers, none fails for anything but a lost connection, and
none waits long after the database is back.

The writes run on the loop conversation_service runs on (`database.event_loop()`), in a thread of
their own, while this test's loop drives the proxy that resets them. On uvloop this failed: writes
raised `RuntimeError: ... UVPoll closed=True`, and a minute passed after the last reset before the
pool handed out a connection again."""

import asyncio
import threading
import time
from collections import Counter

import pytest

from conversation_service.database import Database, connect, event_loop
from tests.proxy import PauseMode, ProxyFactory

pytestmark = [pytest.mark.slow, pytest.mark.integration]

WRITERS = 20
POOL_SIZE = 10
RESETS = 10
# Far below aiopg's 60-second timeout, which a stalled pool waited out.
BACK_WITHIN_SECONDS = 10.0


class Writers:
    """`WRITERS` loops of one-statement transactions through `Database.write`, on a loop of their own."""

    def __init__(self, database_url: str) -> None:
        self._database_url = database_url
        self.written = 0
        self.errors: Counter[str] = Counter()
        self.stop = threading.Event()

    def run(self) -> None:
        loop = event_loop()
        try:
            loop.run_until_complete(self._write_until_stopped())
        finally:
            loop.close()

    async def _write_until_stopped(self) -> None:
        async with connect(self._database_url, pool_size=POOL_SIZE) as engine:
            database = Database(engine, retry_max_interval=0.2)
            await asyncio.gather(*(self._writer(database) for _ in range(WRITERS)))

    async def _writer(self, database: Database) -> None:
        while not self.stop.is_set():
            try:
                await database.write(lambda connection: connection.scalar("SELECT 1"))
                self.written += 1
            # Every kind is counted: none should get out of Database.write.
            except Exception as error:
                self.errors[f"{type(error).__name__}: {error}"[:120]] += 1
                await asyncio.sleep(0.01)


async def _written_since(writers: Writers, count: int, within: float) -> float:
    started = time.monotonic()
    while writers.written < count + WRITERS:
        assert time.monotonic() - started < within, f"{writers.written - count} writes in {within}s after the resets"
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def test_connections_reset_again_and_again_cost_only_retries(database_url: str, proxy_to: ProxyFactory) -> None:
    proxy, proxied_url = await proxy_to(database_url)
    writers = Writers(proxied_url)
    thread = asyncio.create_task(asyncio.to_thread(writers.run))
    try:
        await _written_since(writers, 0, BACK_WITHIN_SECONDS)
        for _ in range(RESETS):
            await asyncio.sleep(0.5)
            # Every open connection reset, and new ones reset as they come, like a server restarting.
            proxy.pause(PauseMode.REFUSE)
            await asyncio.sleep(0.5)
            proxy.resume()
        back_after = await _written_since(writers, writers.written, BACK_WITHIN_SECONDS)
    finally:
        writers.stop.set()
        await asyncio.wait_for(thread, 90)

    assert dict(writers.errors) == {}
    assert back_after < BACK_WITHIN_SECONDS
