"""RabbitMQ topology, publishing with confirms, and the consumer adapter every worker uses.

The topology is declared here once and idempotently by every service at start-up, so whichever
process starts first, a publish is always routed to the queues that need it.
"""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
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
from aio_pika.robust_connection import RobustConnection
from aiohttp import web
from aiormq.abc import AbstractConnection
from pydantic import ValidationError
from yarl import URL

from common import context as request_context
from common.acks import Acks, Delivery
from common.bundles import bodies_in, bundle_of, is_bundle, message_of, unparsed_message
from common.cancellation import honour_dropped_cancel
from common.contracts import Contract
from common.health import METRICS, READINESS_CHECKS
from common.metrics import Metrics
from common.settings import ServiceSettings

log = logging.getLogger(__name__)

PUBLISH_TIMEOUT_SECONDS = 5.0
# How soon a lost broker connection is tried again (aio-pika's default is 5 s): the gateway answers 503
# until it is back, so every second of this is a second of refused requests after the broker returns.
RECONNECT_INTERVAL_SECONDS = 1.0
# What a refused publish tells the client to wait: a full queue drains at the consumers' pace, while a
# lost connection is usually back within a reconnect or two.
QUEUE_FULL_RETRY_AFTER_SECONDS = 5.0
BROKER_RETRY_AFTER_SECONDS = 1.0
# A check of what the consumer needs (the database) that has not answered by then counts as failed.
AVAILABILITY_CHECK_TIMEOUT_SECONDS = 2.0
# A quorum queue's count of earlier deliveries: left on a copy put back on a queue, the queue's
# consumer might take the copy's first delivery for its last.
STALE_ON_COPY = frozenset({"x-delivery-count"})

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
        # Refused webhooks, kept for replay; the gateway declares it (gateway.quarantine), no service consumes it.
        self.quarantine = QueueSpec(f"{prefix}gateway.quarantine", ("quarantine.webhook",))

    @property
    def queues(self) -> tuple[QueueSpec, ...]:
        return (self.sms_outbound, self.email_outbound, self.conversation_events)


@dataclass(frozen=True)
class QueueArguments:
    """What a service queue is declared with. The broker refuses to declare an existing queue with other
    arguments, so changing any of these takes `python -m common.queue_migration` (see README, Limits)."""

    delivery_limit: int
    max_length: int

    def of(self, spec: QueueSpec, topology: "Topology") -> dict[str, Any]:
        return {
            "x-queue-type": "quorum",
            # Quorum queues count deliveries, so a message that keeps failing is dead-lettered after
            # `delivery_limit` attempts instead of looping forever.
            "x-delivery-limit": self.delivery_limit,
            # A full queue refuses the publish (a nack, so the gateway answers a quick 503) instead of
            # dropping its oldest message, and quorum queues dead-letter at-least-once only with it.
            "x-max-length": self.max_length,
            "x-overflow": "reject-publish",
            "x-dead-letter-strategy": "at-least-once",
            "x-dead-letter-exchange": topology.dead_letter_exchange,
            "x-dead-letter-routing-key": spec.name,
        }


class TopologyMismatch(Exception):
    """A queue exists with other arguments than this version declares: it must be migrated first."""


MIGRATE_COMMAND = "make migrate-queues (python -m common.queue_migration)"


# Replicated like the queues they serve: a classic queue lives on one node, and with that node down
# no client could declare it, so none could reconnect to the others.
DEAD_LETTER_QUEUE_ARGUMENTS: dict[str, Any] = {"x-queue-type": "quorum"}


async def declare_topology(channel: AbstractChannel, topology: Topology, arguments: QueueArguments) -> AbstractExchange:
    exchange = await channel.declare_exchange(topology.exchange, aio_pika.ExchangeType.TOPIC, durable=True)
    dead_letters = await channel.declare_exchange(
        topology.dead_letter_exchange, aio_pika.ExchangeType.DIRECT, durable=True
    )
    for spec in topology.queues:
        queue = await _declare(channel, spec.name, arguments.of(spec, topology))
        for routing_key in spec.bindings:
            await queue.bind(exchange, routing_key)
        dead_letter_queue = await _declare(channel, spec.dead_letter_name, DEAD_LETTER_QUEUE_ARGUMENTS)
        await dead_letter_queue.bind(dead_letters, spec.name)
    return exchange


async def _declare(channel: AbstractChannel, name: str, arguments: dict[str, Any]) -> AbstractQueue:
    try:
        return await channel.declare_queue(name, durable=True, arguments=arguments)
    except aiormq.exceptions.ChannelPreconditionFailed as error:
        raise TopologyMismatch(
            f"queue {name} exists with other arguments than this version declares ({error}); stop the "
            f"services and run {MIGRATE_COMMAND}, which moves its messages to a queue with the new ones"
        ) from error


def copy_of(message: AbstractIncomingMessage) -> aio_pika.Message:
    """A delivered message as a new one, to put back on a queue without its delivery count."""
    return aio_pika.Message(
        body=message.body,
        headers={name: value for name, value in (message.headers or {}).items() if name not in STALE_ON_COPY},
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=message.message_id,
        correlation_id=message.correlation_id,
        type=message.type,
        timestamp=message.timestamp,
    )


class ContractPublisher(Protocol):
    """What a handler needs to publish; `Publisher` in production, a list-backed fake in tests."""

    async def publish(self, contract: Contract) -> None: ...


class BrokerUnavailable(Exception):
    """The broker did not confirm a publish: the message is not safely queued."""

    retry_after_seconds = BROKER_RETRY_AFTER_SECONDS


class QueueFull(BrokerUnavailable):
    """A queue the message is routed to is at its length limit and refused it."""

    retry_after_seconds = QUEUE_FULL_RETRY_AFTER_SECONDS


def _fresh(error: BrokerUnavailable) -> BrokerUnavailable:
    copy = type(error)(*error.args)
    copy.__cause__ = error.__cause__
    return copy


class Publisher:
    """Publishes contracts with a confirm each, and counts them once the broker confirmed them; without
    `metrics`, on a registry nobody reads.

    With a `bundle_limit` above 1, at most `in_flight` publishes wait for their confirms at once, and the
    contracts published meanwhile wait for a free one, then go together, up to `bundle_limit` of one
    routing key in a message (common.bundles). A contract published while a slot is free goes at once,
    alone, so light load sees no bundles and no wait; under load a bundle's confirm answers every
    contract in it, and the broker and the consumers handle one message for many.
    """

    def __init__(
        self, exchange: AbstractExchange, metrics: Metrics | None = None, *, bundle_limit: int = 1, in_flight: int = 1
    ) -> None:
        self._exchange = exchange
        self._metrics = metrics or Metrics()
        self._renewing = asyncio.Lock()
        self._bundle_limit = bundle_limit
        self._in_flight = in_flight
        self._sending: set[asyncio.Task[None]] = set()
        # Contracts waiting for a free slot, by routing key, the oldest key first.
        self._waiting: dict[str, list[tuple[Contract, asyncio.Future[None]]]] = {}

    async def publish(self, contract: Contract) -> None:
        if self._bundle_limit == 1:
            await self._confirm(message_of(contract), contract.routing_key, contract.routing_key)
            self._metrics.count_published(contract)
            return
        confirmed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(contract.routing_key, []).append((contract, confirmed))
        self._send_while_free()
        try:
            # A bundle may wait for a slot behind publishes that wait out their own timeout.
            async with asyncio.timeout(PUBLISH_TIMEOUT_SECONDS):
                await confirmed
        except TimeoutError as error:
            raise BrokerUnavailable(f"broker did not confirm {contract.routing_key} in time") from error

    async def drain(self) -> None:
        """Wait for the publishes under way (before the connection closes)."""
        await asyncio.gather(*self._sending, return_exceptions=True)

    def _send_while_free(self) -> None:
        while self._waiting and len(self._sending) < self._in_flight:
            routing_key = next(iter(self._waiting))
            waiting = self._waiting.pop(routing_key)
            # A caller that stopped waiting (its timeout) has had its answer: it is not sent late.
            bundle = [held for held in waiting[: self._bundle_limit] if not held[1].done()]
            if rest := waiting[self._bundle_limit :]:
                self._waiting[routing_key] = rest
            if bundle:
                task = asyncio.create_task(self._send(routing_key, bundle))
                self._sending.add(task)
                task.add_done_callback(self._sent)

    def _sent(self, task: "asyncio.Task[None]") -> None:
        self._sending.discard(task)
        self._send_while_free()

    async def _send(self, routing_key: str, bundle: list[tuple[Contract, "asyncio.Future[None]"]]) -> None:
        contracts = [contract for contract, _ in bundle]
        if len(contracts) == 1:
            message, what = message_of(contracts[0]), routing_key
        else:
            message, what = bundle_of(contracts), f"a bundle of {len(contracts)} {routing_key}"
        self._metrics.publish_bundle_size.observe(len(contracts))
        try:
            await self._confirm(message, routing_key, what)
        except BaseException as error:
            # Any class: aiormq re-raises whatever closed the connection, a bare Exception included.
            unconfirmed = error if isinstance(error, BrokerUnavailable) else BrokerUnavailable(repr(error))
            for _, confirmed in bundle:
                if not confirmed.done():
                    # One exception each: raised in several tasks, one would gather all their tracebacks.
                    confirmed.set_exception(_fresh(unconfirmed))
            if not isinstance(error, Exception):
                raise
            return
        for contract, confirmed in bundle:
            self._metrics.count_published(contract)
            if not confirmed.done():
                confirmed.set_result(None)

    async def _confirm(self, message: aio_pika.Message, routing_key: str, what: str) -> None:
        try:
            # The channel has publisher confirms on and raises on a returned (unroutable) message,
            # so returning from here means the broker has the message on disk in every bound queue.
            # The outer bound covers what `timeout` does not: a robust channel caught mid-reconnect
            # waits for the connection before it sends, however long the broker stays away.
            async with asyncio.timeout(PUBLISH_TIMEOUT_SECONDS):
                await self._exchange.publish(
                    message, routing_key=routing_key, mandatory=True, timeout=PUBLISH_TIMEOUT_SECONDS
                )
        except aiormq.exceptions.DeliveryError as error:
            # A nack (not a return: an unroutable message is a PublishError) is a queue at its limit,
            # the one reason a quorum queue refuses a message it was routed.
            if isinstance(error.frame, aiormq.spec.Basic.Nack):
                await self._renew_channel()
                raise QueueFull(f"a queue is full; {what} refused") from error
            raise BrokerUnavailable(f"broker did not confirm {what}: {error!r}") from error
        except (
            aiormq.exceptions.AMQPError,
            aiormq.exceptions.ChannelInvalidStateError,
            ConnectionError,
            TimeoutError,
            RuntimeError,
        ) as error:
            raise BrokerUnavailable(f"broker did not confirm {what}: {error!r}") from error

    async def _renew_channel(self) -> None:
        """Publish on a fresh channel from now on.

        A quorum queue at its limit tells each publishing channel, which then refuses every publish to
        it until the queue says it has room again. A queue whose leader moved to another node (a node
        lost) may never say so: in the cluster fault test one channel had every publish nacked for good
        while the queue was nearly empty. A fresh channel asks the queue anew; still full, it is refused
        again. Publishes in flight on the old channel fail as unconfirmed, a 503 like any other.
        """
        if self._renewing.locked():
            return
        async with self._renewing:
            channel = self._exchange.channel
            try:
                await channel.close()
                await channel.reopen()
            except Exception as error:
                # The connection is going or gone: its robust reconnect opens a fresh channel anyway.
                # Any class: aiormq re-raises whatever closed the connection, a bare Exception included
                # (seen when a cluster node was killed), and that must not turn the publish into a 500.
                log.warning("could not renew the publishing channel", extra={"error": repr(error)})


class FailoverConnection(RobustConnection):
    """A robust connection to any of several nodes of a cluster: each reconnect tries the next URL.

    aio-pika reconnects to one URL only. It clears `transport` before every connection attempt, and
    reads `url` once in it, so that moment is where the next node's URL is put in place.
    """

    def __init__(self, urls: Sequence[str], first: int = 0, **kwargs: Any) -> None:
        self._urls = tuple(URL(url) for url in urls)
        self._first = first
        self._attempt = -1
        self._transport: AbstractConnection | None = None
        super().__init__(self._urls[first], **kwargs)
        self._initialized = True

    @property  # type: ignore[override]
    def transport(self) -> Any:
        return self._transport

    @transport.setter
    def transport(self, value: Any) -> None:
        if value is None and getattr(self, "_initialized", False):
            self._attempt += 1
            self.url = self._urls[(self._first + self._attempt) % len(self._urls)]
        self._transport = value


async def connect(urls: Sequence[str], *, name: str) -> AbstractRobustConnection:
    """A robust connection to the first of `urls` that answers, failing over to the others later on.

    A start-up with no node answering fails at once, as with one URL: the service exits and its
    supervisor starts it again, rather than it hanging half-started.
    """
    last_error: BaseException | None = None
    for first in range(len(urls)):
        connection = FailoverConnection(
            urls,
            first,
            reconnect_interval=RECONNECT_INTERVAL_SECONDS,
            client_properties={"connection_name": name},
        )
        try:
            await connection.connect()
        except (ConnectionError, OSError, aiormq.exceptions.AMQPError) as error:
            last_error = error
            await connection.close()
            continue
        return connection
    assert last_error is not None, "no broker URL given"
    raise last_error


@dataclass
class Broker:
    """A connection for publishing and one for consuming: when the broker blocks publishers (a memory or
    disk alarm blocks every connection that publishes), the consumers' acks still get through and the
    queues drain. On each, a channel error (a refused publish, a bad ack) cannot close the other side."""

    publish_connection: AbstractRobustConnection
    consume_connection: AbstractRobustConnection
    publish_channel: AbstractChannel
    consume_channel: AbstractChannel
    topology: Topology
    # Each contract a message of its own: for queues that no Consumer reads (the gateway's quarantine).
    publisher: Publisher
    # For contracts to the services' queues, whose consumers take bundles apart.
    bundling_publisher: Publisher

    def is_ready(self) -> bool:
        return not any(
            resource.is_closed
            for resource in (
                self.publish_connection,
                self.consume_connection,
                self.publish_channel,
                self.consume_channel,
            )
        )


BROKER = web.AppKey("broker", Broker)


def broker_ctx(settings: ServiceSettings) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        publish_connection = await connect(settings.amqp_urls, name="publish")
        try:
            consume_connection = await connect(settings.amqp_urls, name="consume")
            for connection in (publish_connection, consume_connection):
                connection.reconnect_callbacks.add(lambda *_: app[METRICS].broker_reconnects.inc())
            try:
                publish_channel = await publish_connection.channel(publisher_confirms=True, on_return_raises=True)
                consume_channel = await consume_connection.channel()
                await consume_channel.set_qos(prefetch_count=settings.consumer_prefetch)
                topology = Topology(settings.broker_namespace)
                arguments = QueueArguments(settings.delivery_limit, settings.queue_max_length)
                exchange = await declare_topology(publish_channel, topology, arguments)
                app[BROKER] = Broker(
                    publish_connection,
                    consume_connection,
                    publish_channel,
                    consume_channel,
                    topology,
                    Publisher(exchange, app[METRICS]),
                    Publisher(
                        exchange,
                        app[METRICS],
                        bundle_limit=settings.publish_bundle_limit,
                        in_flight=settings.publishes_in_flight,
                    ),
                )
                app[READINESS_CHECKS]["broker"] = _as_check(app[BROKER].is_ready)
                yield
                await app[BROKER].bundling_publisher.drain()
            finally:
                await consume_connection.close()
        finally:
            await publish_connection.close()

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
    out a provider's backoff holds one of the channel's prefetch slots, not the whole queue. A bundle
    (common.bundles) is taken apart, its contracts handled side by side, and `handling_limit` bounds
    the contracts handled at once, a bundle's counted one by one. The acks
    of deliveries that finish together go out together (see common.acks), so the consumer must be
    the only one on its queue's channel.

    `pause()` stops the deliveries while something every handler needs is away (the database): the
    ones in hand go on, their handlers retrying, for `hold_seconds`; those still unfinished then are
    handed back as fresh copies (published with a confirm, then acked), so that neither the broker's
    consumer_timeout nor a nack counts a delivery against them; `resume()` takes deliveries again.
    """

    def __init__(
        self,
        queue: AbstractQueue,
        parse: Callable[[bytes], ContractT],
        handler: Callable[[ContractT], Awaitable[Any]],
        *,
        delivery_limit: int,
        redelivery_delay: float = 1.0,
        hold_seconds: float | None = None,
        hand_back_to: AbstractExchange | None = None,
        metrics: Metrics | None = None,
        handling_limit: int | None = None,
    ) -> None:
        self._queue = queue
        self._metrics = metrics or Metrics()
        self._parse = parse
        self._handler = handler
        self._delivery_limit = delivery_limit
        self._redelivery_delay = redelivery_delay
        self._hold_seconds = hold_seconds
        self._hand_back_to = hand_back_to
        self._consumer_tag: str | None = None
        self._in_flight: set[asyncio.Task[Any]] = set()
        # The deliveries whose handler is running, and since when: the ones a pause can hand back.
        self._handling: dict[asyncio.Task[Any], tuple[AbstractIncomingMessage, Delivery, float]] = {}
        self._hand_back_timer: asyncio.Task[None] | None = None
        self._acks = Acks()
        # The contracts handled at once, a bundle's counted one by one, as the prefetch counts messages.
        self._handling_slots = asyncio.Semaphore(handling_limit) if handling_limit else None

    @property
    def paused(self) -> bool:
        return self._consumer_tag is None

    async def start(self) -> None:
        self._consumer_tag = await self._queue.consume(self._on_message)

    async def pause(self) -> None:
        if self.paused:
            return
        await self._cancel_consuming()
        log.warning("consumer paused; the deliveries in hand go on for now", extra={"queue": self._queue.name})
        if self._hold_seconds is not None and self._hand_back_to is not None:
            self._hand_back_timer = asyncio.create_task(
                self._hand_back_when_due(self._hold_seconds, self._hand_back_to)
            )

    async def resume(self) -> None:
        if not self.paused:
            return
        await self.start()
        if self._hand_back_timer is not None:
            self._hand_back_timer.cancel()
            self._hand_back_timer = None
        log.info("consumer resumed", extra={"queue": self._queue.name})

    async def stop(self, grace_seconds: float) -> None:
        """Stop taking messages and give the ones in hand `grace_seconds` to finish.

        What is still running then is cancelled unacked, so the broker hands it out again.
        """
        if self._hand_back_timer is not None:
            self._hand_back_timer.cancel()
            await asyncio.gather(self._hand_back_timer, return_exceptions=True)
        await self._cancel_consuming()
        if self._in_flight:
            _, unfinished = await asyncio.wait(self._in_flight, timeout=grace_seconds)
            for task in unfinished:
                task.cancel()
            await asyncio.gather(*unfinished, return_exceptions=True)

    async def _cancel_consuming(self) -> None:
        tag, self._consumer_tag = self._consumer_tag, None
        if tag is None:
            return
        try:
            await self._queue.cancel(tag)
        except (aiormq.exceptions.AMQPError, aiormq.exceptions.ChannelInvalidStateError, RuntimeError):
            log.warning("consumer cancel failed", extra={"queue": self._queue.name})

    async def _hand_back_when_due(self, hold_seconds: float, exchange: AbstractExchange) -> None:
        """While paused, hand back each delivery once it was held `hold_seconds` since it arrived: the
        broker's consumer_timeout counts from then too, and a pause may come long after."""
        loop = asyncio.get_running_loop()
        while self._handling:
            now = loop.time()
            due = {
                task: (message, delivery)
                for task, (message, delivery, since) in self._handling.items()
                if now - since >= hold_seconds
            }
            if not due:
                await asyncio.sleep(min(since for _, _, since in self._handling.values()) + hold_seconds - now)
                continue
            # A resume or a stop cancels the wait, not a hand-back under way: each delivery whose
            # handler it cancelled must be handed back.
            await asyncio.shield(self._hand_back_all(due, exchange))

    async def _hand_back_all(
        self, due: dict[asyncio.Task[Any], tuple[AbstractIncomingMessage, Delivery]], exchange: AbstractExchange
    ) -> None:
        for task in due:
            task.cancel()
        await asyncio.gather(*due, return_exceptions=True)
        returned = [held for task, held in due.items() if task.cancelled()]
        for message, delivery in returned:
            await self._hand_back(message, delivery, exchange)
        if returned:
            log.warning(
                "handed back the deliveries held through a pause",
                extra={"queue": self._queue.name, "count": len(returned)},
            )

    async def _hand_back(
        self, message: AbstractIncomingMessage, delivery: Delivery, exchange: AbstractExchange
    ) -> None:
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT_SECONDS):
                await exchange.publish(
                    copy_of(message), routing_key=self._queue.name, mandatory=True, timeout=PUBLISH_TIMEOUT_SECONDS
                )
        except (aiormq.exceptions.AMQPError, aiormq.exceptions.ChannelInvalidStateError, TimeoutError) as error:
            # Not lost either way: back on the queue, at the cost of one delivery of its limit.
            log.warning(
                "could not hand a held delivery back as a copy; it goes back counted",
                extra={"queue": self._queue.name, "amqp_message_id": message.message_id, "error": repr(error)},
            )
            await self._settle(delivery, message.nack(requeue=True))
            return
        await self._acks.ack(delivery)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        assert task is not None
        delivery = self._acks.received(message)
        self._in_flight.add(task)
        in_flight = self._metrics.consumer_in_flight.labels(queue=self._queue.name)
        in_flight.inc()
        if message.redelivered or _earlier_deliveries(message):
            self._metrics.consumer_redeliveries.labels(queue=self._queue.name).inc()
        try:
            outcome = await self._process(message, delivery)
            self._metrics.consumer_deliveries.labels(queue=self._queue.name, outcome=outcome).inc()
        finally:
            in_flight.dec()
            self._in_flight.discard(task)

    async def _process(self, message: AbstractIncomingMessage, delivery: Delivery) -> str:
        """What became of the delivery: acked, requeued or dead_lettered."""
        context = {
            "queue": self._queue.name,
            "amqp_message_id": message.message_id,
            "correlation_id": message.correlation_id,
            "routing_key": message.routing_key,
        }
        if is_bundle(message):
            return await self._process_bundle(message, delivery, context)
        try:
            contract = self._parse(message.body)
        except ValidationError as error:
            log.error(
                "dead-lettering a message that breaks the contract",
                extra={**context, "errors": error.errors(include_url=False, include_context=False)},
            )
            await self._settle(delivery, message.reject(requeue=False))
            self._metrics.dead_letters.labels(queue=self._queue.name, reason="contract").inc()
            return "dead_lettered"
        # Each delivery runs in a task of its own: this is its context alone, for every log line of it.
        request_context.correlation_id.set(getattr(contract, "correlation_id", None))
        task = asyncio.current_task()
        assert task is not None
        try:
            self._handling[task] = (message, delivery, asyncio.get_running_loop().time())
            try:
                async with self._handling_slots or contextlib.nullcontext():
                    await self._handler(contract)
            finally:
                del self._handling[task]
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
                await self._settle(delivery, message.reject(requeue=False))
                self._metrics.dead_letters.labels(queue=self._queue.name, reason="handler").inc()
                return "dead_lettered"
            log.exception("handler failed; message goes back to the queue", extra=context)
            await asyncio.sleep(self._redelivery_delay)
            await self._settle(delivery, message.nack(requeue=True))
            return "requeued"
        await self._acks.ack(delivery)
        return "acked"

    async def _process_bundle(
        self, message: AbstractIncomingMessage, delivery: Delivery, context: dict[str, Any]
    ) -> str:
        """Each contract of a bundle handled as if it had come alone, side by side; one that breaks the
        contract goes to the dead-letter queue alone, one whose handler failed back to the queue alone
        (a fresh message, its deliveries counted from none), both with a confirm, and then the bundle
        is acked. Should either publish fail (or there be no exchange to publish them to), the whole
        bundle goes back instead: its contracts that were handled are handled again, which changes
        nothing."""
        task = asyncio.current_task()
        assert task is not None
        self._handling[task] = (message, delivery, asyncio.get_running_loop().time())
        try:
            outcomes = await asyncio.gather(*(self._handle_bundled(body, context) for body in bodies_in(message.body)))
        finally:
            del self._handling[task]
        dead_letter_queue = QueueSpec(self._queue.name, ()).dead_letter_name
        try:
            for returned, dead in (outcome for outcome in outcomes if outcome is not None):
                if self._hand_back_to is None:
                    raise RuntimeError("no exchange to put a bundle's messages back apart")
                async with asyncio.timeout(PUBLISH_TIMEOUT_SECONDS):
                    await self._hand_back_to.publish(
                        returned,
                        routing_key=dead_letter_queue if dead else self._queue.name,
                        mandatory=True,
                        timeout=PUBLISH_TIMEOUT_SECONDS,
                    )
                if dead:
                    self._metrics.dead_letters.labels(queue=self._queue.name, reason="contract").inc()
        except (
            aiormq.exceptions.AMQPError,
            aiormq.exceptions.ChannelInvalidStateError,
            TimeoutError,
            RuntimeError,
        ) as error:
            log.warning(
                "could not put a bundle's failed messages back apart; the bundle goes back whole",
                extra={**context, "error": repr(error)},
            )
            await asyncio.sleep(self._redelivery_delay)
            await self._settle(delivery, message.nack(requeue=True))
            return "requeued"
        await self._acks.ack(delivery)
        return "acked"

    async def _handle_bundled(self, body: bytes, context: dict[str, Any]) -> tuple[aio_pika.Message, bool] | None:
        """Nothing if the contract was handled; else the message to publish apart, and whether it is dead."""
        try:
            contract = self._parse(body)
        except ValidationError as error:
            log.error(
                "dead-lettering a bundled message that breaks the contract",
                extra={**context, "errors": error.errors(include_url=False, include_context=False)},
            )
            return unparsed_message(body), True
        # gather runs each in a task of its own, so this context is the contract's alone.
        request_context.correlation_id.set(getattr(contract, "correlation_id", None))
        try:
            async with self._handling_slots or contextlib.nullcontext():
                await self._handler(contract)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            log.warning(
                "handler failed on a bundled message; it goes back to the queue alone",
                extra={**context, "amqp_message_id": str(contract.event_id), "error": repr(error)},
            )
            return message_of(contract), False
        return None

    async def _settle(self, delivery: Delivery, sent: Awaitable[None]) -> None:
        """Send a nack or a reject; only once it is sent may a multiple ack reach past the delivery."""
        try:
            await sent
        except Exception:
            # Its channel is gone, and the delivery with it back on the queue.
            self._acks.settled(delivery)
            raise
        self._acks.settled(delivery)


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
    *,
    pause_unless: Callable[[web.Application], Callable[[], Awaitable[bool]]] | None = None,
) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup_ctx that consumes one queue for the app's lifetime; needs `broker_ctx` before it.

    With `pause_unless`, the consumer pauses while that check (of what every handler needs, such as the
    database) fails, and resumes by itself once it passes again.
    """

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        broker = app[BROKER]
        queue = await broker.consume_channel.get_queue(queue_spec(broker.topology).name, ensure=True)
        consumer = Consumer(
            queue,
            parse,
            make_handler(app),
            delivery_limit=settings.delivery_limit,
            hold_seconds=settings.consumer_hold_seconds,
            hand_back_to=broker.publish_channel.default_exchange,
            metrics=app[METRICS],
            handling_limit=settings.consumer_prefetch,
        )
        await consumer.start()
        follower = (
            None
            if pause_unless is None
            else asyncio.create_task(_follow(consumer, pause_unless(app), settings.consumer_pause_check_seconds))
        )
        yield
        if follower is not None:
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)
        await consumer.stop(settings.shutdown_grace_seconds)

    return ctx


async def _follow(consumer: Consumer[Any], available: Callable[[], Awaitable[bool]], every_seconds: float) -> None:
    """Pause `consumer` while `available` fails (an error or no answer in time counts as failing)."""
    while True:
        # The check goes to the database through aiopg, which may have dropped a cancel of this task.
        honour_dropped_cancel()
        await asyncio.sleep(every_seconds)
        try:
            async with asyncio.timeout(AVAILABILITY_CHECK_TIMEOUT_SECONDS):
                up = await available()
        except Exception:
            up = False
        try:
            await (consumer.resume() if up else consumer.pause())
        except (aiormq.exceptions.AMQPError, aiormq.exceptions.ChannelInvalidStateError, RuntimeError) as error:
            # The broker is away too; the robust connection brings the channel back, and the next round retries.
            log.warning("could not pause or resume the consumer", extra={"error": repr(error)})
