"""RabbitMQ topology, publishing with confirms, and the consumer adapter every worker uses.

The topology is declared here once and idempotently by every service at start-up, so whichever
process starts first, a publish is always routed to the queues that need it.
"""

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)
from aiohttp import web
from pydantic import ValidationError

from common import context as request_context
from common.contracts import Contract
from common.health import METRICS, READINESS_CHECKS
from common.metrics import Metrics
from common.settings import ServiceSettings

log = logging.getLogger(__name__)

PUBLISH_TIMEOUT_SECONDS = 5.0
# How soon a lost broker connection is tried again (aio-pika's default is 5 s): the gateway answers 503
# until it is back, so every second of this is a second of refused requests after the broker returns.
RECONNECT_INTERVAL_SECONDS = 1.0

ContractT = TypeVar("ContractT", bound=Contract)


@dataclass(frozen=True)
class QueueSpec:
    name: str
    bindings: tuple[str, ...]

    @property
    def dead_letter_name(self) -> str:
        return f"{self.name}.dead-letter"


class Topology:
    """Every exchange and queue name, prefixed by the deployment's namespace."""

    def __init__(self, namespace: str = "") -> None:
        prefix = f"{namespace}." if namespace else ""
        self.exchange = f"{prefix}messaging"
        self.dead_letter_exchange = f"{prefix}messaging.dead-letter"
        self.sms_outbound = QueueSpec(f"{prefix}sms_service.outbound", ("outbound.sms", "outbound.mms"))
        self.email_outbound = QueueSpec(f"{prefix}email_service.outbound", ("outbound.email",))
        self.conversation_events = QueueSpec(
            f"{prefix}conversation_service.events", ("outbound.*", "inbound.*", "status.*", "receipt.*")
        )

    @property
    def queues(self) -> tuple[QueueSpec, ...]:
        return (self.sms_outbound, self.email_outbound, self.conversation_events)


async def declare_topology(channel: AbstractChannel, topology: Topology, delivery_limit: int) -> AbstractExchange:
    exchange = await channel.declare_exchange(topology.exchange, aio_pika.ExchangeType.TOPIC, durable=True)
    dead_letters = await channel.declare_exchange(
        topology.dead_letter_exchange, aio_pika.ExchangeType.DIRECT, durable=True
    )
    for spec in topology.queues:
        # Quorum queues count deliveries, so a message that keeps failing is dead-lettered after
        # `delivery_limit` attempts instead of looping forever.
        queue = await channel.declare_queue(
            spec.name,
            durable=True,
            arguments={
                "x-queue-type": "quorum",
                "x-delivery-limit": delivery_limit,
                "x-dead-letter-exchange": topology.dead_letter_exchange,
                "x-dead-letter-routing-key": spec.name,
            },
        )
        for routing_key in spec.bindings:
            await queue.bind(exchange, routing_key)
        dead_letter_queue = await channel.declare_queue(spec.dead_letter_name, durable=True)
        await dead_letter_queue.bind(dead_letters, spec.name)
    return exchange


class ContractPublisher(Protocol):
    """What a handler needs to publish; `Publisher` in production, a list-backed fake in tests."""

    async def publish(self, contract: Contract) -> None: ...


class BrokerUnavailable(Exception):
    """The broker did not confirm a publish: the message is not safely queued."""


class Publisher:
    """Counts what it published once the broker confirmed it; without `metrics`, on a registry nobody reads."""

    def __init__(self, exchange: AbstractExchange, metrics: Metrics | None = None) -> None:
        self._exchange = exchange
        self._metrics = metrics or Metrics()

    async def publish(self, contract: Contract) -> None:
        message = aio_pika.Message(
            body=contract.model_dump_json().encode(),
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=str(contract.event_id),
            correlation_id=str(contract.correlation_id),
            type=contract.kind,
            timestamp=contract.occurred_at,
        )
        try:
            # The channel has publisher confirms on and raises on a returned (unroutable) message,
            # so returning from here means the broker has the message on disk in every bound queue.
            # The outer bound covers what `timeout` does not: a robust channel caught mid-reconnect
            # waits for the connection before it sends, however long the broker stays away.
            async with asyncio.timeout(PUBLISH_TIMEOUT_SECONDS):
                await self._exchange.publish(
                    message, routing_key=contract.routing_key, mandatory=True, timeout=PUBLISH_TIMEOUT_SECONDS
                )
        except (
            aiormq.exceptions.AMQPError,
            aiormq.exceptions.ChannelInvalidStateError,
            ConnectionError,
            TimeoutError,
            RuntimeError,
        ) as error:
            raise BrokerUnavailable(f"broker did not confirm {contract.routing_key}: {error!r}") from error
        self._metrics.count_published(contract)


@dataclass
class Broker:
    """A channel for publishing and one for consuming: a channel error or flow control on one side
    (a refused publish, a bad ack) then cannot close or stall the other."""

    connection: AbstractRobustConnection
    publish_channel: AbstractChannel
    consume_channel: AbstractChannel
    topology: Topology
    publisher: Publisher

    def is_ready(self) -> bool:
        return not (self.connection.is_closed or self.publish_channel.is_closed or self.consume_channel.is_closed)


BROKER = web.AppKey("broker", Broker)


def broker_ctx(settings: ServiceSettings) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        connection = await aio_pika.connect_robust(settings.amqp_url, reconnect_interval=RECONNECT_INTERVAL_SECONDS)
        connection.reconnect_callbacks.add(lambda *_: app[METRICS].broker_reconnects.inc())
        try:
            publish_channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            consume_channel = await connection.channel()
            await consume_channel.set_qos(prefetch_count=settings.consumer_prefetch)
            topology = Topology(settings.broker_namespace)
            exchange = await declare_topology(publish_channel, topology, settings.delivery_limit)
            app[BROKER] = Broker(
                connection, publish_channel, consume_channel, topology, Publisher(exchange, app[METRICS])
            )
            app[READINESS_CHECKS]["broker"] = _as_check(app[BROKER].is_ready)
            yield
        finally:
            await connection.close()

    return ctx


def _as_check(predicate: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return predicate()

    return check


class Consumer(Generic[ContractT]):
    """Feeds one queue's messages to a handler that knows nothing of AMQP.

    A message that does not parse into the contract can never succeed: it is rejected to the
    dead-letter queue at once. A handler failure is nacked back to the queue after a pause, except
    on the last delivery the queue's `delivery_limit` allows, where it is rejected to the dead-letter
    queue with a log of why. Ack comes only after the handler returned, that is after its effect is
    durable.

    Every delivery runs in a task of its own (aio-pika starts one per message), so a handler waiting
    out a provider's backoff holds one of the channel's prefetch slots, not the whole queue.
    """

    def __init__(
        self,
        queue: AbstractQueue,
        parse: Callable[[bytes], ContractT],
        handler: Callable[[ContractT], Awaitable[Any]],
        *,
        delivery_limit: int,
        redelivery_delay: float = 1.0,
        metrics: Metrics | None = None,
    ) -> None:
        self._queue = queue
        self._metrics = metrics or Metrics()
        self._parse = parse
        self._handler = handler
        self._delivery_limit = delivery_limit
        self._redelivery_delay = redelivery_delay
        self._consumer_tag: str | None = None
        self._in_flight: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        self._consumer_tag = await self._queue.consume(self._on_message)

    async def stop(self, grace_seconds: float) -> None:
        """Stop taking messages and give the ones in hand `grace_seconds` to finish.

        What is still running then is cancelled unacked, so the broker hands it out again.
        """
        if self._consumer_tag is not None:
            try:
                await self._queue.cancel(self._consumer_tag)
            except (aiormq.exceptions.AMQPError, aiormq.exceptions.ChannelInvalidStateError, RuntimeError):
                log.warning("consumer cancel failed", extra={"queue": self._queue.name})
        if self._in_flight:
            _, unfinished = await asyncio.wait(self._in_flight, timeout=grace_seconds)
            for task in unfinished:
                task.cancel()
            await asyncio.gather(*unfinished, return_exceptions=True)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._in_flight.add(task)
        in_flight = self._metrics.consumer_in_flight.labels(queue=self._queue.name)
        in_flight.inc()
        if message.redelivered or _earlier_deliveries(message):
            self._metrics.consumer_redeliveries.labels(queue=self._queue.name).inc()
        try:
            outcome = await self._process(message)
            self._metrics.consumer_deliveries.labels(queue=self._queue.name, outcome=outcome).inc()
        finally:
            in_flight.dec()
            self._in_flight.discard(task)

    async def _process(self, message: AbstractIncomingMessage) -> str:
        """What became of the delivery: acked, requeued or dead_lettered."""
        context = {
            "queue": self._queue.name,
            "amqp_message_id": message.message_id,
            "correlation_id": message.correlation_id,
            "routing_key": message.routing_key,
        }
        try:
            contract = self._parse(message.body)
        except ValidationError as error:
            log.error(
                "dead-lettering a message that breaks the contract",
                extra={**context, "errors": error.errors(include_url=False, include_context=False)},
            )
            await message.reject(requeue=False)
            self._metrics.dead_letters.labels(queue=self._queue.name, reason="contract").inc()
            return "dead_lettered"
        # Each delivery runs in a task of its own: this is its context alone, for every log line of it.
        request_context.correlation_id.set(getattr(contract, "correlation_id", None))
        try:
            await self._handler(contract)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            earlier_deliveries = _earlier_deliveries(message)
            context |= {
                "delivery_count": earlier_deliveries,
                "delivery_limit": self._delivery_limit,
                "error": repr(error),
            }
            if earlier_deliveries >= self._delivery_limit:
                # The broker would dead-letter it after this nack anyway, but silently; rejecting it
                # here puts the handler's error next to every dead letter in the logs.
                log.exception("dead-lettering a message whose handler failed on its last delivery", extra=context)
                await message.reject(requeue=False)
                self._metrics.dead_letters.labels(queue=self._queue.name, reason="handler").inc()
                return "dead_lettered"
            log.exception("handler failed; message goes back to the queue", extra=context)
            await asyncio.sleep(self._redelivery_delay)
            await message.nack(requeue=True)
            return "requeued"
        await message.ack()
        return "acked"


def _earlier_deliveries(message: AbstractIncomingMessage) -> int:
    """How often the broker handed this message out before: a quorum queue's `x-delivery-count`,
    which passing the queue's delivery limit dead-letters the message."""
    count = (message.headers or {}).get("x-delivery-count", 0)
    return count if isinstance(count, int) else 0


def consumer_ctx(
    settings: ServiceSettings,
    queue_spec: Callable[[Topology], QueueSpec],
    parse: Callable[[bytes], ContractT],
    make_handler: Callable[[web.Application], Callable[[ContractT], Awaitable[Any]]],
) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup_ctx that consumes one queue for the app's lifetime; needs `broker_ctx` before it."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        broker = app[BROKER]
        queue = await broker.consume_channel.get_queue(queue_spec(broker.topology).name, ensure=True)
        consumer = Consumer(
            queue, parse, make_handler(app), delivery_limit=settings.delivery_limit, metrics=app[METRICS]
        )
        await consumer.start()
        yield
        await consumer.stop(settings.shutdown_grace_seconds)

    return ctx
