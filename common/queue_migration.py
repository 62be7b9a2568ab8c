"""Give each service queue and dead-letter queue the arguments this version declares, keeping every
message it holds.

    python -m common.queue_migration        (make migrate-queues; bin/setup.sh runs it too)

RabbitMQ refuses to declare an existing queue with other arguments (PRECONDITION_FAILED), and a
queue's arguments never change in place: a queue made by an earlier version (without a length limit,
say, or with another DELIVERY_LIMIT) stops the services from starting. The same holds for the dead-letter
queues, quorum queues now (replicated, like the queues they serve). For each such queue, with its
consumers stopped, this

1. declares a holding queue `<queue>.migrating`, binds it as the queue is bound, then unbinds the
   queue, so that publishes go on being accepted (a message published in between lands in both:
   consumers are idempotent);
2. moves every message from the queue to the holding queue, each published with a confirm before it
   is acked, so a crash in between duplicates a message and never loses one;
3. deletes the emptied queue, declares it again with the new arguments, binds it, unbinds the holding
   queue, and moves the messages back the same way; then deletes the holding queue.

Run again after an interruption, it finishes the job: a holding queue left behind is emptied into the
new queue. Queues that already have the right arguments are left alone. AMQP_URL, BROKER_NAMESPACE,
DELIVERY_LIMIT and QUEUE_MAX_LENGTH come from the environment (or `.env`), as for the services.
"""

import asyncio
import sys
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractQueue

from common.broker import (
    DEAD_LETTER_QUEUE_ARGUMENTS,
    PUBLISH_TIMEOUT_SECONDS,
    QueueArguments,
    Topology,
    connect,
    copy_of,
)
from common.settings import ServiceSettings

HOLDING_SUFFIX = ".migrating"


class MigrationRefused(Exception):
    """A queue that needs migrating is still being consumed: its consumers would hold messages back."""


async def _declares_as(connection: AbstractConnection, name: str, arguments: dict[str, Any] | None) -> bool:
    """With `arguments`, whether `name` is declared with them (a missing queue is declared so); without,
    whether it exists. On a channel of its own: the broker closes the channel of a declare it refuses."""
    probe = await connection.channel()
    try:
        if arguments is None:
            await probe.declare_queue(name, passive=True)
        else:
            await probe.declare_queue(name, durable=True, arguments=arguments)
    except (aiormq.exceptions.ChannelPreconditionFailed, aiormq.exceptions.ChannelNotFoundEntity):
        return False
    finally:
        if not probe.is_closed:
            await probe.close()
    return True


async def _move_and_delete(source: AbstractQueue, target: str, channel: AbstractChannel) -> int:
    """Move every message of `source` to `target`, then delete `source` (unbound by now, with no consumer:
    nothing can arrive in between). Quorum queues support no if-empty delete, hence the count first."""
    moved = 0
    while True:
        while (message := await source.get(fail=False)) is not None:
            await channel.default_exchange.publish(
                copy_of(message), routing_key=target, mandatory=True, timeout=PUBLISH_TIMEOUT_SECONDS
            )
            await message.ack()
            moved += 1
        declared = await source.declare()
        if not declared.message_count:
            break
    await source.delete(if_unused=False, if_empty=False)
    return moved


# (exchange name, routing key)
Binding = tuple[str, str]


async def _rebind(bindings: list[Binding], to: AbstractQueue, away_from: AbstractQueue) -> None:
    for exchange, routing_key in bindings:
        await to.bind(exchange, routing_key)
    for exchange, routing_key in bindings:
        await away_from.unbind(exchange, routing_key)


async def _confirming_channel(connection: AbstractConnection) -> AbstractChannel:
    return await connection.channel(publisher_confirms=True, on_return_raises=True)


async def migrate_queue(
    connection: AbstractConnection, name: str, bindings: list[Binding], wanted: dict[str, Any]
) -> int | None:
    """Messages moved through the holding queue, or None when the queue needed nothing."""
    holding_name = f"{name}{HOLDING_SUFFIX}"
    if await _declares_as(connection, name, wanted):
        if not await _declares_as(connection, holding_name, None):
            return None
        # An earlier run stopped half-way: the queue is new already, its messages wait in the holding one.
    else:
        async with await _confirming_channel(connection) as channel:
            old = await channel.declare_queue(name, passive=True)
            consumers = old.declaration_result.consumer_count if old.declaration_result else 0
            if consumers:
                raise MigrationRefused(
                    f"queue {name} needs migrating but {consumers} consumer(s) still use it: stop the services, "
                    "then run this again"
                )
            holding = await channel.declare_queue(holding_name, durable=True, arguments={"x-queue-type": "quorum"})
            await _rebind(bindings, to=holding, away_from=old)
            await _move_and_delete(old, holding_name, channel)
    # A channel of its own: RabbitMQ 3.10's channel keeps the deleted queue's type under its name, and
    # crashes publishing to a queue of another type declared again under it (a classic dead-letter queue).
    async with await _confirming_channel(connection) as channel:
        queue = await channel.declare_queue(name, durable=True, arguments=wanted)
        holding = await channel.get_queue(holding_name)
        await _rebind(bindings, to=queue, away_from=holding)
        return await _move_and_delete(holding, name, channel)


async def migrate(settings: ServiceSettings) -> dict[str, int | None]:
    """For each service queue and dead-letter queue, the messages it was migrated with, or None when it
    needed nothing."""
    topology = Topology(settings.broker_namespace)
    arguments = QueueArguments(settings.delivery_limit, settings.queue_max_length)
    report: dict[str, int | None] = {}
    async with await connect(settings.amqp_urls, name="queue migration") as connection:
        async with await connection.channel() as channel:
            await channel.declare_exchange(topology.exchange, aio_pika.ExchangeType.TOPIC, durable=True)
            await channel.declare_exchange(topology.dead_letter_exchange, aio_pika.ExchangeType.DIRECT, durable=True)
        for spec in topology.queues:
            report[spec.name] = await migrate_queue(
                connection,
                spec.name,
                [(topology.exchange, routing_key) for routing_key in spec.bindings],
                arguments.of(spec, topology),
            )
            report[spec.dead_letter_name] = await migrate_queue(
                connection,
                spec.dead_letter_name,
                [(topology.dead_letter_exchange, spec.name)],
                DEAD_LETTER_QUEUE_ARGUMENTS,
            )
    return report


def format_report(report: dict[str, int | None]) -> str:
    return "\n".join(
        f"{queue}: already as declared" if moved is None else f"{queue}: migrated, {moved} message(s) kept"
        for queue, moved in report.items()
    )


def main() -> None:
    if sys.argv[1:]:
        sys.exit(__doc__)
    settings = ServiceSettings()
    try:
        print(format_report(asyncio.run(migrate(settings))))
    except MigrationRefused as error:
        sys.exit(f"queue migration: {error}")
    except (OSError, aiormq.exceptions.AMQPError) as error:
        sys.exit(f"queue migration failed, nothing is lost (run it again): {error!r}")


if __name__ == "__main__":
    main()
