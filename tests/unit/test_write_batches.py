"""The write batches with a fake transaction: who shares a batch, when it is written, that nobody's
write returns before its batch committed, and that a poison event fails alone."""

import asyncio
from collections.abc import Sequence

import pytest

from common.contracts import MessageEvent
from common.metrics import Metrics
from conversation_service.handlers import WriteOutcome
from conversation_service.write_batches import WriteBatches, running
from tests.factories import eventually, message_received


class FakeTransactions:
    """Records each batch; fails any batch holding a poison event; commits when `commit` is set."""

    def __init__(self, poison: Sequence[MessageEvent] = ()) -> None:
        self.batches: list[list[MessageEvent]] = []
        self.poison = {event.message_id for event in poison}
        self.commit = asyncio.Event()
        self.commit.set()

    async def writing(self) -> bool:
        return bool(self.batches)

    async def write(self, events: Sequence[MessageEvent]) -> list[WriteOutcome]:
        self.batches.append(list(events))
        await self.commit.wait()
        if any(event.message_id in self.poison for event in events):
            raise ValueError("A string literal cannot contain NUL (0x00) characters.")
        return [WriteOutcome.CHANGED] * len(events)


def events(count: int) -> list[MessageEvent]:
    return [message_received(provider_message_id=f"m-{i}") for i in range(count)]


async def test_events_that_arrive_together_share_one_transaction_in_batches_of_at_most_the_size() -> None:
    transactions = FakeTransactions()
    batch = events(5)

    async with running(WriteBatches(transactions.write, size=2, wait_seconds=0.05), 1.0) as batches:
        outcomes = await asyncio.wait_for(asyncio.gather(*(batches.store(event) for event in batch)), 1.0)

    assert outcomes == [WriteOutcome.CHANGED] * 5
    assert transactions.batches == [batch[:2], batch[2:4], batch[4:]]


async def test_a_lone_event_is_written_once_its_wait_is_over() -> None:
    transactions = FakeTransactions()
    (event,) = events(1)

    async with running(WriteBatches(transactions.write, size=64, wait_seconds=0.05), 1.0) as batches:
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await asyncio.wait_for(batches.store(event), 1.0) is WriteOutcome.CHANGED

    assert loop.time() - started >= 0.05
    assert transactions.batches == [[event]]


async def test_no_write_returns_before_its_batch_committed() -> None:
    transactions = FakeTransactions()
    transactions.commit.clear()

    async with running(WriteBatches(transactions.write, size=3, wait_seconds=10.0), 1.0) as batches:
        writes = [asyncio.create_task(batches.store(event)) for event in events(3)]
        await eventually(transactions.writing, "the batch to be written")
        await asyncio.sleep(0.05)
        assert not any(write.done() for write in writes)

        transactions.commit.set()

        assert await asyncio.wait_for(asyncio.gather(*writes), 1.0) == [WriteOutcome.CHANGED] * 3


async def test_a_poison_event_fails_alone_and_its_neighbours_are_written() -> None:
    batch = events(8)
    poison = batch[5]
    transactions = FakeTransactions(poison=[poison])

    async with running(WriteBatches(transactions.write, size=8, wait_seconds=10.0), 1.0) as batches:
        outcomes = await asyncio.wait_for(
            asyncio.gather(*(batches.store(event) for event in batch), return_exceptions=True), 1.0
        )

    assert [isinstance(outcome, ValueError) for outcome in outcomes] == [i == 5 for i in range(8)]
    assert all(outcome is WriteOutcome.CHANGED for i, outcome in enumerate(outcomes) if i != 5)
    # Halved down to the poison alone: a half that commits is not split further.
    assert transactions.batches == [batch, batch[:4], batch[4:], batch[4:6], [batch[4]], [poison], batch[6:]]


async def test_a_writer_cancelled_before_its_batch_is_taken_is_not_written() -> None:
    transactions = FakeTransactions()
    gone, staying = events(2)

    async with running(WriteBatches(transactions.write, size=2, wait_seconds=0.05), 1.0) as batches:
        cancelled = asyncio.create_task(batches.store(gone))
        await asyncio.sleep(0)
        cancelled.cancel()
        assert await asyncio.wait_for(batches.store(staying), 1.0) is WriteOutcome.CHANGED

    assert transactions.batches == [[staying]]


async def test_closing_writes_what_is_held_at_once() -> None:
    transactions = FakeTransactions()
    batch = events(3)

    async with running(WriteBatches(transactions.write, size=64, wait_seconds=60.0), 1.0) as batches:
        writes = [asyncio.create_task(batches.store(event)) for event in batch]
        await asyncio.sleep(0)

    assert await asyncio.wait_for(asyncio.gather(*writes), 1.0) == [WriteOutcome.CHANGED] * 3
    assert transactions.batches == [batch]


async def test_a_write_stuck_past_the_grace_is_cancelled_and_its_writers_with_it() -> None:
    transactions = FakeTransactions()
    transactions.commit.clear()

    async with running(WriteBatches(transactions.write, size=1, wait_seconds=0.0), 0.05) as batches:
        write = asyncio.create_task(batches.store(events(1)[0]))
        await eventually(transactions.writing, "the batch to be written")

    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(write, 1.0)


async def test_each_batch_is_counted_with_its_size() -> None:
    metrics = Metrics()
    transactions = FakeTransactions()

    async with running(WriteBatches(transactions.write, size=2, wait_seconds=0.05, metrics=metrics), 1.0) as batches:
        await asyncio.wait_for(asyncio.gather(*(batches.store(event) for event in events(3))), 1.0)

    assert metrics.registry.get_sample_value("messaging_write_batch_size_count") == 2
    assert metrics.registry.get_sample_value("messaging_write_batch_size_sum") == 3
