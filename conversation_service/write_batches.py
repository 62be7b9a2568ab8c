"""The events in hand, written a batch to a transaction: each writer waits for its batch's commit.

A commit per event is most of what a write costs (its round trips, its fsync), so the events that
arrive together share one: a batch is written once it holds `size` events, or `wait_seconds` after
its first arrived. One batch is written at a time; the next gathers meanwhile.

An event that fails (any error but a lost database connection, which the database retries itself)
must not fail the events it happened to share a batch with: the batch is split in halves and each is
written again, down to the single event, whose writer alone gets the error.
"""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

from common.contracts import MessageEvent
from common.metrics import Metrics
from conversation_service.handlers import WriteOutcome

log = logging.getLogger(__name__)

WriteBatch = Callable[[Sequence[MessageEvent]], Awaitable[Sequence[WriteOutcome]]]

# An event, its writer's future outcome, and when it arrived (on the loop's clock).
_Held = tuple[MessageEvent, "asyncio.Future[WriteOutcome]", float]


class WriteBatches:
    def __init__(
        self, write_batch: WriteBatch, *, size: int, wait_seconds: float, metrics: Metrics | None = None
    ) -> None:
        self._write_batch = write_batch
        self._size = size
        self._wait_seconds = wait_seconds
        self._batch_sizes = (metrics or Metrics()).write_batch_size
        self._held: list[_Held] = []
        self._arrived = asyncio.Event()
        self._closing = False

    async def store(self, event: MessageEvent) -> WriteOutcome:
        """The event's outcome once the transaction that wrote it committed."""
        if self._closing:
            raise RuntimeError("the write batches are closed")
        loop = asyncio.get_running_loop()
        outcome: asyncio.Future[WriteOutcome] = loop.create_future()
        self._held.append((event, outcome, loop.time()))
        if len(self._held) == 1 or len(self._held) >= self._size:
            self._arrived.set()
        return await outcome

    # The handler names a write by its event; here every event takes one way, into the next batch.
    store_outbound = store_inbound = store_status = store_receipt = store

    async def run(self) -> None:
        """Write batches until closed and emptied; cancelled, the writers still waiting get the cancel."""
        try:
            await self._write_until_closed()
        finally:
            for _, outcome, _ in self._held:
                outcome.cancel()

    async def _write_until_closed(self) -> None:
        loop = asyncio.get_running_loop()
        while self._held or not self._closing:
            if not self._held:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            due = self._held[0][2] + self._wait_seconds - loop.time()
            if len(self._held) < self._size and due > 0 and not self._closing:
                self._arrived.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(due):
                        await self._arrived.wait()
                continue
            batch, self._held = self._held[: self._size], self._held[self._size :]
            # A writer cancelled meanwhile (its delivery handed back, or the consumer stopping) no
            # longer waits: its event is not written, the broker hands it out again.
            waiting = [held for held in batch if not held[1].done()]
            if waiting:
                self._batch_sizes.observe(len(waiting))
                await self._write(waiting)

    async def _write(self, batch: list[_Held]) -> None:
        try:
            outcomes = await self._write_batch([event for event, _, _ in batch])
        except asyncio.CancelledError:
            for _, outcome, _ in batch:
                outcome.cancel()
            raise
        except Exception as error:
            if len(batch) == 1:
                _settle(batch[0][1], error)
                return
            log.warning(
                "a batch of writes failed; writing its halves apart",
                extra={"batch_size": len(batch), "error": repr(error)},
            )
            half = len(batch) // 2
            await self._write(batch[:half])
            await self._write(batch[half:])
            return
        for (_, outcome, _), result in zip(batch, outcomes, strict=True):
            _settle(outcome, result)

    async def close(self) -> None:
        """Write what is held, then let `run` end."""
        self._closing = True
        self._arrived.set()


def _settle(outcome: "asyncio.Future[WriteOutcome]", result: WriteOutcome | BaseException) -> None:
    if outcome.done():
        return
    if isinstance(result, BaseException):
        outcome.set_exception(result)
    else:
        outcome.set_result(result)


@contextlib.asynccontextmanager
async def running(batches: WriteBatches, grace_seconds: float) -> AsyncIterator[WriteBatches]:
    """`batches` written for the block's length; on leaving, what they hold gets `grace_seconds` to
    be written (a database outage could hold it for ever), then is given up unwritten: unacked, so the
    broker hands it out again."""
    writer = asyncio.create_task(batches.run())
    try:
        yield batches
    finally:
        await batches.close()
        _, unfinished = await asyncio.wait({writer}, timeout=grace_seconds)
        for task in unfinished:
            task.cancel()
        await asyncio.gather(writer, return_exceptions=True)
