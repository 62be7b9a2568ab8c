"""The broker as the plumbing tests use it: a channel with confirms on the test's own topology, a
publisher, and the conversation events queue and its dead letters to look into."""

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)

from common.broker import Consumer, Publisher, QueueArguments, Topology, declare_topology
from common.bundles import bodies_in, is_bundle
from common.contracts import MessageEvent, MessageReceived, message_event_adapter

DELIVERY_LIMIT = 2


@dataclass
class Bus:
    connection: AbstractRobustConnection
    channel: AbstractChannel
    topology: Topology
    exchange: AbstractExchange
    publisher: Publisher
    events: AbstractQueue
    dead_letters: AbstractQueue


async def open_bus(amqp_url: str, broker_namespace: str) -> AsyncIterator[Bus]:
    connection = await aio_pika.connect_robust(amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        topology = Topology(broker_namespace)
        exchange = await declare_topology(channel, topology, QueueArguments(DELIVERY_LIMIT, max_length=1000))
        yield Bus(
            connection,
            channel,
            topology,
            exchange,
            Publisher(exchange),
            await channel.get_queue(topology.conversation_events.name),
            await channel.get_queue(topology.conversation_events.dead_letter_name),
        )


@contextlib.asynccontextmanager
async def limited_queues(
    amqp_url: str, broker_namespace: str, max_length: int
) -> AsyncIterator[tuple[AbstractChannel, AbstractExchange]]:
    """The test's topology with queues of `max_length` messages, and a channel with confirms on."""
    async with await aio_pika.connect(amqp_url) as connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        arguments = QueueArguments(DELIVERY_LIMIT, max_length=max_length)
        yield channel, await declare_topology(channel, Topology(broker_namespace), arguments)


async def message_count(queue: AbstractQueue) -> int:
    # A fresh queue.declare each time: a queue object's declaration_result is the count at its first declare.
    result = await queue.declare()
    return result.message_count or 0


def contracts_in(message: AbstractIncomingMessage) -> list[MessageEvent]:
    """The contracts a message carries, as a consumer reads them: itself, or each of a bundle's."""
    bodies = bodies_in(message.body) if is_bundle(message) else [message.body]
    return [message_event_adapter.validate_json(body) for body in bodies]


def consumer_of(
    bus: Bus, handler: Callable[[MessageReceived], Awaitable[None]], **options: Any
) -> Consumer[MessageReceived]:
    """A consumer of the events queue that retries at once; `options` go to the Consumer."""
    return Consumer(
        bus.events,
        message_event_adapter.validate_json,
        handler,  # type: ignore[arg-type]
        delivery_limit=DELIVERY_LIMIT,
        **{"redelivery_delay": 0.01, **options},
    )
