"""The broker plumbing on the real RabbitMQ: ack after the handler, dead letters instead of loops, a
stop that lets in-flight work finish, a pause that hands held deliveries back uncounted, a full queue
refused at once, queues of an earlier version migrated without losing a message, and a connection
that fails over to the next node."""

import asyncio
import logging
import re
import time

import aio_pika
import aiormq
import pytest
from aio_pika.abc import AbstractQueue

from common.broker import (
    MIGRATE_COMMAND,
    PUBLISH_TIMEOUT_SECONDS,
    Consumer,
    Publisher,
    QueueArguments,
    QueueFull,
    Topology,
    TopologyMismatch,
    connect,
    declare_topology,
)
from common.contracts import MessageReceived, message_event_adapter
from common.queue_migration import MigrationRefused, migrate
from common.settings import ServiceSettings
from tests.factories import eventually, message_received
from tests.integration.bus import DELIVERY_LIMIT, Bus, consumer_of, limited_queues, message_count
from tests.proxy import ProxyFactory

pytestmark = pytest.mark.integration


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


async def acks_sent_on(bus: Bus) -> list[tuple[int, bool]]:
    """Every ack frame the consumer's channel sends from now on, as (delivery tag, multiple)."""
    channel = await bus.channel.get_underlay_channel()
    sent: list[tuple[int, bool]] = []
    send = channel.basic_ack

    async def recording(delivery_tag: int, multiple: bool = False, wait: bool = True) -> None:
        sent.append((delivery_tag, multiple))
        await send(delivery_tag, multiple=multiple, wait=wait)

    channel.basic_ack = recording  # type: ignore[method-assign]
    return sent


async def test_deliveries_that_finish_together_are_acked_with_one_frame(bus: Bus) -> None:
    arrived: list[MessageReceived] = []
    all_arrived = asyncio.Event()

    async def one_batch(event: MessageReceived) -> None:
        arrived.append(event)
        if len(arrived) == 5:
            all_arrived.set()
        await all_arrived.wait()

    sent = await acks_sent_on(bus)
    consumer = consumer_of(bus, one_batch)
    for _ in range(5):
        await bus.publisher.publish(message_received())
    await consumer.start()
    try:
        await eventually(lambda: _equal(len(sent), 1), "the batch's ack sent")
    finally:
        await consumer.stop(grace_seconds=1)

    assert sent == [(5, True)]
    await bus.channel.close()
    events = await (await bus.connection.channel()).get_queue(bus.events.name)
    assert await message_count(events) == 0


async def test_a_delivery_still_in_hand_is_not_acked_with_the_ones_after_it(bus: Bus) -> None:
    first = message_received()
    rest_done = 0

    async def first_stuck(event: MessageReceived) -> None:
        nonlocal rest_done
        if event == first:
            await asyncio.sleep(60)
        rest_done += 1

    sent = await acks_sent_on(bus)
    consumer = consumer_of(bus, first_stuck)
    await bus.publisher.publish(first)
    for _ in range(4):
        await bus.publisher.publish(message_received())
    await consumer.start()
    await eventually(lambda: _equal(len({tag for tag, _ in sent}), 4), "the four after the first acked")
    await consumer.stop(grace_seconds=0.1)
    await bus.channel.close()

    assert rest_done == 4
    assert all(not multiple for _, multiple in sent), sent
    events = await (await bus.connection.channel()).get_queue(bus.events.name)
    # The broker puts the delivery in hand back once it has the channel's close, not before it answers.
    await eventually(lambda: _counted(events, 1), "the first delivery back on its queue")
    left = await events.get(timeout=5)
    assert message_event_adapter.validate_json(left.body) == first


async def test_a_delivery_requeued_between_acked_ones_comes_again(bus: Bus) -> None:
    middle = message_received()
    events = [message_received(), middle, message_received()]
    handled: list[MessageReceived] = []

    async def middle_fails_once(event: MessageReceived) -> None:
        handled.append(event)
        if event == middle and handled.count(middle) == 1:
            raise RuntimeError("the database said no")

    consumer = consumer_of(bus, middle_fails_once)
    for event in events:
        await bus.publisher.publish(event)
    await consumer.start()
    try:
        await eventually(lambda: _equal(handled.count(middle), 2), "the requeued delivery handled again")
    finally:
        await consumer.stop(grace_seconds=1)

    assert sorted(event.event_id for event in handled) == sorted(event.event_id for event in [*events, middle])
    assert await message_count(bus.events) == 0
    assert await message_count(bus.dead_letters) == 0


async def _equal(actual: int, expected: int) -> bool:
    return actual == expected


async def _counted(queue: AbstractQueue, expected: int) -> bool:
    return await message_count(queue) == expected


async def test_a_paused_consumer_hands_back_what_it_holds_uncounted_and_takes_it_again_on_resume(bus: Bus) -> None:
    deliveries: list[MessageReceived] = []
    stuck = asyncio.Event()

    async def waits_for_the_database(event: MessageReceived) -> None:
        deliveries.append(event)
        if not stuck.is_set():
            stuck.set()
            await asyncio.sleep(60)

    consumer = Consumer(
        bus.events,
        message_event_adapter.validate_json,
        waits_for_the_database,
        delivery_limit=DELIVERY_LIMIT,
        hold_seconds=0.3,
        hand_back_to=bus.channel.default_exchange,
    )
    await consumer.start()
    try:
        event = message_received()
        await bus.publisher.publish(event)
        await asyncio.wait_for(stuck.wait(), 10)

        await consumer.pause()

        async def handed_back() -> bool:
            return await message_count(bus.events) == 1

        # Ready on the queue again, so no consumer_timeout can catch it held; not taken while paused.
        await eventually(handed_back, "the held delivery back on the queue")
        assert len(deliveries) == 1
        copy = await bus.events.get(timeout=5)
        # A fresh message: its first delivery, not its second, so the pause used none of its limit.
        assert (copy.headers or {}).get("x-delivery-count", 0) == 0
        assert message_event_adapter.validate_json(copy.body) == event
        await copy.nack(requeue=True)

        await consumer.resume()

        async def stored() -> bool:
            return len(deliveries) == 2 and await message_count(bus.events) == 0

        await eventually(stored, "the event handled after the resume")
    finally:
        await consumer.stop(grace_seconds=1)
    assert deliveries == [event, event]
    assert await message_count(bus.dead_letters) == 0


async def test_a_publish_to_a_full_queue_is_refused_at_once_and_not_queued(
    amqp_url: str, broker_namespace: str
) -> None:
    topology = Topology(broker_namespace)
    async with limited_queues(amqp_url, broker_namespace, max_length=3) as (channel, exchange):
        publisher = Publisher(exchange)
        accepted: list[MessageReceived] = []
        # A quorum queue's limit is soft: it refuses once it is over it, so it may take one more.
        for _ in range(5):
            event = message_received()
            started = time.monotonic()
            try:
                await publisher.publish(event)
            except QueueFull:
                refused_after = time.monotonic() - started
                break
            accepted.append(event)
        else:
            raise AssertionError("a queue of 3 took 5 messages")

        events = await channel.get_queue(topology.conversation_events.name)
        queued = [await events.get(timeout=5) for _ in accepted]
        assert await message_count(events) == 0
    assert len(accepted) in (3, 4)
    assert refused_after < PUBLISH_TIMEOUT_SECONDS / 10, refused_after
    assert [message_event_adapter.validate_json(m.body) for m in queued] == accepted


async def test_a_queue_of_an_earlier_version_is_named_and_migrated_keeping_every_message(
    amqp_url: str, broker_namespace: str
) -> None:
    settings = ServiceSettings(
        amqp_url=amqp_url, broker_namespace=broker_namespace, delivery_limit=DELIVERY_LIMIT, queue_max_length=20
    )
    arguments = QueueArguments(settings.delivery_limit, settings.queue_max_length)
    topology = Topology(broker_namespace)
    spec = topology.conversation_events
    published = [message_received() for _ in range(10)]
    async with await aio_pika.connect(amqp_url) as connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        # As the version before queue length limits declared it, holding messages nobody consumed yet.
        exchange = await channel.declare_exchange(topology.exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        old = await channel.declare_queue(
            spec.name,
            durable=True,
            arguments={
                "x-queue-type": "quorum",
                "x-delivery-limit": DELIVERY_LIMIT,
                "x-dead-letter-exchange": topology.dead_letter_exchange,
                "x-dead-letter-routing-key": spec.name,
            },
        )
        for routing_key in spec.bindings:
            await old.bind(exchange, routing_key)
        for event in published:
            await Publisher(exchange).publish(event)
        # Its dead-letter queue was a classic one, holding a dead letter.
        dead_letters = await channel.declare_exchange(
            topology.dead_letter_exchange, aio_pika.ExchangeType.DIRECT, durable=True
        )
        old_dead_letters = await channel.declare_queue(spec.dead_letter_name, durable=True)
        await old_dead_letters.bind(dead_letters, spec.name)
        dead = message_received()
        await dead_letters.publish(aio_pika.Message(dead.model_dump_json().encode()), routing_key=spec.name)

        with pytest.raises(TopologyMismatch, match=re.escape(MIGRATE_COMMAND)):
            await declare_topology(await connection.channel(), topology, arguments)

    report = await migrate(settings)
    untouched = [topology.sms_outbound, topology.email_outbound]
    assert report == {
        spec.name: 10,
        spec.dead_letter_name: 1,
        **{name: None for other in untouched for name in (other.name, other.dead_letter_name)},
    }
    assert await migrate(settings) == dict.fromkeys(report)

    async with await aio_pika.connect(amqp_url) as connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        publisher = Publisher(await declare_topology(channel, topology, arguments))
        # Routed to the new queue, and its limit holds: 10 kept plus 10 new fill it (one more may fit).
        for _ in range(10):
            await publisher.publish(message_received())
        with pytest.raises(QueueFull):
            for _ in range(2):
                await publisher.publish(message_received())
        events = await channel.get_queue(spec.name)
        kept = [message_event_adapter.validate_json((await events.get(timeout=5)).body) for _ in range(10)]
        parked = await channel.get_queue(spec.dead_letter_name)
        assert message_event_adapter.validate_json((await parked.get(timeout=5)).body) == dead
        with pytest.raises(aiormq.exceptions.ChannelNotFoundEntity):
            await (await connection.channel()).declare_queue(f"{spec.name}.migrating", passive=True)
    assert kept == published


async def test_a_queue_still_consumed_is_not_migrated_and_keeps_what_it_holds(
    amqp_url: str, broker_namespace: str
) -> None:
    settings = ServiceSettings(amqp_url=amqp_url, broker_namespace=broker_namespace, queue_max_length=20)
    spec = Topology(broker_namespace).sms_outbound
    async with await aio_pika.connect(amqp_url) as connection:
        channel = await connection.channel(publisher_confirms=True)
        # Declared by an earlier version, and an old process still consuming it.
        old = await channel.declare_queue(spec.name, durable=True, arguments={"x-queue-type": "quorum"})
        await channel.default_exchange.publish(aio_pika.Message(b"held"), routing_key=spec.name)
        await channel.set_qos(prefetch_count=1)
        held: asyncio.Queue[aio_pika.abc.AbstractIncomingMessage] = asyncio.Queue()
        await old.consume(held.put)
        await asyncio.wait_for(held.get(), 5)

        with pytest.raises(MigrationRefused, match=re.escape(f"queue {spec.name} needs migrating but 1 consumer")):
            await migrate(settings)

        await channel.close()
        untouched = await (await connection.channel()).get_queue(spec.name)

        async def holds_its_message() -> bool:
            return await message_count(untouched) == 1

        await eventually(holds_its_message, "the old queue still holding its message")


async def test_a_lost_connection_is_made_again_to_the_next_node(amqp_url: str, proxy_to: ProxyFactory) -> None:
    first, first_url = await proxy_to(amqp_url)
    second, second_url = await proxy_to(amqp_url)
    connection = await connect([first_url, second_url], name="failover test")
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        assert (first.open_connections, second.open_connections) == (1, 0)

        first.pause()

        async def published_through_the_second() -> bool:
            try:
                await channel.default_exchange.publish(aio_pika.Message(b"ping"), routing_key="nowhere", timeout=1)
            except Exception:
                return False
            return second.open_connections == 1

        await eventually(published_through_the_second, "a publish confirmed through the second URL", timeout=15)
