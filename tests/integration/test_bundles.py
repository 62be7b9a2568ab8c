"""Bundles on the real RabbitMQ: what waits for a confirm goes together and every publisher hears the
bundle's fate, a lone publish goes alone, and a consumer takes a bundle apart so that a contract
that fails, or breaks the contract, goes its own way without its neighbours; through the real
gateway and conversation_service, a burst of webhooks travels in bundles and is stored once each."""

import asyncio
import logging

import aio_pika
import psycopg2
import pytest
from aiohttp.test_utils import TestClient

from common.broker import Publisher, QueueFull, Topology
from common.bundles import BUNDLE_SIZE_HEADER, BUNDLE_TYPE, bodies_in, bundle_of
from common.contracts import MessageReceived, message_event_adapter
from common.metrics import Metrics
from tests.factories import eventually, message_received
from tests.integration.bus import DELIVERY_LIMIT, Bus, consumer_of, limited_queues, message_count
from tests.prometheus import scrape, value

pytestmark = pytest.mark.integration


def events(count: int) -> list[MessageReceived]:
    return [message_received(provider_message_id=f"bundled-{number}") for number in range(count)]


def bundling(bus: Bus, metrics: Metrics | None = None, limit: int = 64) -> Publisher:
    return Publisher(bus.exchange, metrics, bundle_limit=limit, in_flight=1)


async def test_what_waits_for_a_confirm_goes_as_one_bundle_and_a_lone_publish_alone(bus: Bus) -> None:
    metrics = Metrics()
    publisher = bundling(bus, metrics)
    first, *rest = events(10)

    # The first finds the slot free and goes at once; the nine after it wait for its confirm, together.
    await asyncio.gather(publisher.publish(first), *(publisher.publish(event) for event in rest))

    assert await message_count(bus.events) == 2
    alone = await bus.events.get(timeout=5)
    assert (alone.type, message_event_adapter.validate_json(alone.body)) == (first.kind, first)
    bundle = await bus.events.get(timeout=5)
    assert bundle.type == BUNDLE_TYPE
    assert (bundle.headers or {})[BUNDLE_SIZE_HEADER] == 9
    assert [message_event_adapter.validate_json(body) for body in bodies_in(bundle.body)] == rest
    # Each publisher is counted once the broker confirmed its contract.
    assert metrics.messages_accepted.labels(channel="sms", direction="inbound")._value.get() == 10
    await alone.ack()
    await bundle.ack()


async def test_a_bundle_holds_no_more_than_its_limit(bus: Bus) -> None:
    publisher = bundling(bus, limit=4)

    await asyncio.gather(*(publisher.publish(event) for event in events(10)))

    # One alone, then bundles of 4, 4 and 1 as the slot frees.
    sizes = []
    while (message := await bus.events.get(fail=False)) is not None:
        sizes.append(len(bodies_in(message.body)))
        await message.ack()
    assert sizes == [1, 4, 4, 1]


async def test_every_publisher_of_a_refused_bundle_is_told_the_queue_is_full(
    amqp_url: str, broker_namespace: str
) -> None:
    async with limited_queues(amqp_url, broker_namespace, max_length=1) as (channel, exchange):
        # A quorum queue refuses once it is over its limit: two fill one of a single message.
        for event in events(2):
            await Publisher(exchange).publish(event)
        publisher = Publisher(exchange, bundle_limit=64, in_flight=1)

        outcomes = await asyncio.gather(*(publisher.publish(event) for event in events(6)), return_exceptions=True)

        # The first goes alone, the five after it as one bundle, refused as a whole: each told so.
        assert all(isinstance(outcome, QueueFull) for outcome in outcomes), outcomes
        assert len({id(outcome) for outcome in outcomes}) == 6
        queue = await channel.get_queue(Topology(broker_namespace).conversation_events.name)
        assert await message_count(queue) == 2


async def test_a_consumer_handles_each_contract_of_a_bundle_once_and_acks_it(bus: Bus) -> None:
    handled: list[MessageReceived] = []

    async def stores(event: MessageReceived) -> None:
        handled.append(event)

    bundled = events(5)
    await bus.channel.default_exchange.publish(bundle_of(bundled), routing_key=bus.events.name)
    consumer = consumer_of(bus, stores, hand_back_to=bus.channel.default_exchange)
    await consumer.start()
    try:
        await eventually(lambda: _is(len(handled) == 5), "the five handled")
        await eventually(lambda: _queue_empty(bus), "the bundle acked")
    finally:
        await consumer.stop(grace_seconds=1)
    assert sorted(handled, key=lambda event: event.provider_message_id) == bundled
    assert await message_count(bus.dead_letters) == 0


async def test_a_bundled_contract_whose_handler_fails_goes_back_alone_and_its_neighbours_are_not_repeated(
    bus: Bus, caplog: pytest.LogCaptureFixture
) -> None:
    bundled = events(4)
    failing = bundled[2]
    handled: list[MessageReceived] = []

    async def fails_for_one(event: MessageReceived) -> None:
        handled.append(event)
        if event == failing:
            raise RuntimeError("the database said no")

    await bus.channel.default_exchange.publish(bundle_of(bundled), routing_key=bus.events.name)
    consumer = consumer_of(bus, fails_for_one, hand_back_to=bus.channel.default_exchange)
    await consumer.start()
    try:
        # Alone, it is redelivered and dead-lettered at the delivery limit like any message of its own.
        await eventually(lambda: _count(bus.dead_letters, 1), "the failing contract dead-lettered")
    finally:
        await consumer.stop(grace_seconds=1)

    assert [handled.count(event) for event in bundled] == [1, 1, 2 + DELIVERY_LIMIT, 1]
    assert await message_count(bus.events) == 0
    dead = await bus.dead_letters.get(timeout=5)
    assert message_event_adapter.validate_json(dead.body) == failing
    assert dead.message_id == str(failing.event_id)
    [why] = [record for record in caplog.records if "bundled" in record.getMessage()]
    assert (why.getMessage(), why.levelno) == (
        "handler failed on a bundled message; it goes back to the queue alone",
        logging.WARNING,
    )


async def test_a_bundled_body_that_breaks_the_contract_is_dead_lettered_alone(bus: Bus) -> None:
    bundled = events(3)
    poison = b'{"kind": "message_received", "not": "a contract"}'
    message = bundle_of(bundled)
    lines = bodies_in(message.body)
    message.body = b"\n".join([lines[0], poison, *lines[1:]])
    handled: list[MessageReceived] = []

    async def stores(event: MessageReceived) -> None:
        handled.append(event)

    await bus.channel.default_exchange.publish(message, routing_key=bus.events.name)
    metrics = Metrics()
    consumer = consumer_of(bus, stores, hand_back_to=bus.channel.default_exchange, metrics=metrics)
    await consumer.start()
    try:
        await eventually(lambda: _count(bus.dead_letters, 1), "the poison dead-lettered")
        await eventually(lambda: _queue_empty(bus), "the bundle acked")
    finally:
        await consumer.stop(grace_seconds=1)

    assert sorted(handled, key=lambda event: event.provider_message_id) == bundled
    dead = await bus.dead_letters.get(timeout=5)
    assert dead.body == poison
    assert metrics.dead_letters.labels(queue=bus.events.name, reason="contract")._value.get() == 1


async def test_a_burst_of_webhooks_through_the_gateway_travels_in_bundles_and_is_stored_once_each(
    gateway: TestClient, database_url: str
) -> None:
    burst = 40
    webhooks = [
        {
            "from": "+18045551234",
            "to": "+12016661234",
            "type": "sms",
            "messaging_provider_id": f"burst-{number}",
            "body": f"reply {number}",
            "timestamp": "2024-11-01T14:05:00Z",
        }
        for number in range(burst)
    ]

    answers = await asyncio.gather(*(gateway.post("/api/webhooks/sms", json=webhook) for webhook in webhooks))

    assert [answer.status for answer in answers] == [202] * burst
    samples = await scrape(gateway)
    publishes = value(samples, "messaging_publish_bundle_size_count")
    assert value(samples, "messaging_publish_bundle_size_sum") == burst
    assert publishes < burst, "no webhook waited for another's confirm: nothing was bundled"

    def stored() -> list[tuple[str, int]]:
        with psycopg2.connect(database_url) as connection, connection.cursor() as cursor:
            cursor.execute("SELECT provider_message_id, count(*) FROM messages GROUP BY 1 ORDER BY 1")
            rows = cursor.fetchall()
        connection.close()
        return rows

    await eventually(lambda: _is(len(stored()) == burst), "every webhook stored")
    assert stored() == sorted((webhook["messaging_provider_id"], 1) for webhook in webhooks)


async def _is(truth: bool) -> bool:
    return truth


async def _count(queue: aio_pika.abc.AbstractQueue, expected: int) -> bool:
    return await message_count(queue) == expected


async def _queue_empty(bus: Bus) -> bool:
    return await message_count(bus.events) == 0
