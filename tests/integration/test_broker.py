"""The consumer adapter on the real RabbitMQ: ack after the handler, dead letters instead of loops,
and a stop that lets in-flight work finish."""

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractQueue, AbstractRobustConnection

from common.broker import Consumer, Publisher, Topology, declare_topology
from common.contracts import MessageReceived, message_event_adapter
from tests.factories import eventually, message_received

pytestmark = pytest.mark.integration

DELIVERY_LIMIT = 2


@dataclass
class Bus:
    connection: AbstractRobustConnection
    channel: AbstractChannel
    topology: Topology
    publisher: Publisher
    events: AbstractQueue
    dead_letters: AbstractQueue


@pytest.fixture
async def bus(amqp_url: str, broker_namespace: str) -> AsyncIterator[Bus]:
    connection = await aio_pika.connect_robust(amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        topology = Topology(broker_namespace)
        exchange = await declare_topology(channel, topology, DELIVERY_LIMIT)
        yield Bus(
            connection,
            channel,
            topology,
            Publisher(exchange),
            await channel.get_queue(topology.conversation_events.name),
            await channel.get_queue(topology.conversation_events.dead_letter_name),
        )


async def message_count(queue: AbstractQueue) -> int:
    # A fresh queue.declare each time: a queue object's declaration_result is the count at its first declare.
    result = await queue.declare()
    return result.message_count or 0


def consumer_of(bus: Bus, handler: Callable[[MessageReceived], Awaitable[None]]) -> Consumer[MessageReceived]:
    return Consumer(
        bus.events, message_event_adapter.validate_json, handler, delivery_limit=DELIVERY_LIMIT, redelivery_delay=0.01
    )


async def test_a_message_whose_handler_keeps_failing_is_dead_lettered_not_redelivered_forever(
    bus: Bus, caplog: pytest.LogCaptureFixture
) -> None:
    attempts: list[MessageReceived] = []

    async def always_fails(event: MessageReceived) -> None:
        attempts.append(event)
        raise RuntimeError("the database said no")

    consumer = consumer_of(bus, always_fails)
    await consumer.start()
    try:
        await bus.publisher.publish(message_received())

        async def dead_lettered() -> bool:
            return await message_count(bus.dead_letters) == 1

        await eventually(dead_lettered, "the failing message in the dead-letter queue")
    finally:
        await consumer.stop(grace_seconds=1)

    assert len(attempts) == DELIVERY_LIMIT + 1
    assert await message_count(bus.events) == 0
    dead = await bus.dead_letters.get(timeout=5)
    assert message_event_adapter.validate_json(dead.body) == attempts[0]
    # Rejected by the consumer on the last delivery, not dropped by the broker without a word.
    assert (dead.headers or {})["x-first-death-reason"] == "rejected"
    [why] = [record for record in caplog.records if record.getMessage().startswith("dead-lettering")]
    assert (why.getMessage(), why.levelno) == (
        "dead-lettering a message whose handler failed on its last delivery",
        logging.ERROR,
    )
    assert (why.delivery_count, why.delivery_limit) == (DELIVERY_LIMIT, DELIVERY_LIMIT)  # type: ignore[attr-defined]
    assert why.error == "RuntimeError('the database said no')"  # type: ignore[attr-defined]
    assert why.amqp_message_id == dead.message_id  # type: ignore[attr-defined]


async def test_a_handler_that_recovers_before_the_delivery_limit_is_acked_not_dead_lettered(
    bus: Bus, caplog: pytest.LogCaptureFixture
) -> None:
    attempts: list[MessageReceived] = []

    async def fails_until_the_last_delivery(event: MessageReceived) -> None:
        attempts.append(event)
        if len(attempts) <= DELIVERY_LIMIT:
            raise RuntimeError("the database said no")

    consumer = consumer_of(bus, fails_until_the_last_delivery)
    await consumer.start()
    try:
        await bus.publisher.publish(message_received())

        async def handled_on_the_last_delivery() -> bool:
            return len(attempts) == DELIVERY_LIMIT + 1 and await message_count(bus.events) == 0

        await eventually(handled_on_the_last_delivery, "the message handled on its last delivery")
    finally:
        await consumer.stop(grace_seconds=1)

    assert await message_count(bus.dead_letters) == 0
    retried = [record for record in caplog.records if record.getMessage().startswith("handler failed")]
    assert [record.delivery_count for record in retried] == list(range(DELIVERY_LIMIT))  # type: ignore[attr-defined]


async def test_a_message_is_acked_only_after_its_handler_finished(bus: Bus) -> None:
    handled: list[MessageReceived] = []

    async def stores(event: MessageReceived) -> None:
        handled.append(event)

    consumer = consumer_of(bus, stores)
    await consumer.start()
    try:
        event = message_received()
        await bus.publisher.publish(event)

        async def handled_once() -> bool:
            return handled == [event]

        await eventually(handled_once, "the event handled")
    finally:
        await consumer.stop(grace_seconds=1)

    assert await message_count(bus.events) == 0
    assert await message_count(bus.dead_letters) == 0


async def test_stop_lets_the_message_in_hand_finish_before_the_consumer_goes(bus: Bus) -> None:
    started = asyncio.Event()
    finished: list[MessageReceived] = []

    async def slow(event: MessageReceived) -> None:
        started.set()
        await asyncio.sleep(0.3)
        finished.append(event)

    consumer = consumer_of(bus, slow)
    await consumer.start()
    await bus.publisher.publish(message_received())
    await asyncio.wait_for(started.wait(), 10)

    await consumer.stop(grace_seconds=5)

    assert len(finished) == 1
    assert await message_count(bus.events) == 0


async def test_stop_returns_unfinished_work_to_the_queue_when_the_grace_runs_out(bus: Bus) -> None:
    started = asyncio.Event()

    async def stuck(event: MessageReceived) -> None:
        started.set()
        await asyncio.sleep(60)

    consumer = consumer_of(bus, stuck)
    await consumer.start()
    await bus.publisher.publish(message_received())
    await asyncio.wait_for(started.wait(), 10)

    await consumer.stop(grace_seconds=0.1)
    # Unacked deliveries go back to the queue when their channel closes.
    await bus.channel.close()
    events = await (await bus.connection.channel()).get_queue(bus.events.name)

    async def requeued() -> bool:
        return await message_count(events) == 1

    await eventually(requeued, "the unfinished message back on the queue")
