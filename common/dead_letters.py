"""Look into the dead-letter queues and send their messages back to be processed again.

    python -m common.dead_letters list   [--queue NAME] [--limit N]
    python -m common.dead_letters replay [--queue NAME] [--limit N] [--message-id ID]

ID is the message id the API shows (`GET /api/messages/{id}`) or the event id a log line names; a
bundle (common.bundles) that died whole is replayed whole by the id of any contract in it.

NAME is a service queue as the topology names it without the namespace (`sms_service.outbound`);
AMQP_URL and BROKER_NAMESPACE come from the environment (or `.env`), as for the services.

A replayed message goes back to the queue it was dead-lettered from, not to the topic exchange:
through the exchange it would also reach every other queue bound to its routing key, and, say, a
conversation store's dead `outbound.sms` would be sent to the provider again. It is published with
a confirm before its dead letter is acked, so a crash in between duplicates it (which consumers
tolerate: they are idempotent) and never loses it. A replay reads no further than the messages that
were waiting when it started, so one that fails again and comes back is not replayed in a loop.
"""

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiormq
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from common.broker import PUBLISH_TIMEOUT_SECONDS, QueueSpec, Topology, connect, copy_of
from common.bundles import bodies_in, is_bundle
from common.settings import ServiceSettings

BODY_PREVIEW_CHARS = 200


@dataclass(frozen=True)
class Death:
    """One entry of the broker's `x-death` header: where, why and how often a message died."""

    queue: str
    reason: str
    count: int
    routing_keys: tuple[str, ...]
    time: datetime | None


@dataclass(frozen=True)
class DeadLetter:
    routing_key: str
    kind: str | None
    # The AMQP message id: the contract's event id, which log lines name.
    event_id: str | None
    # The message the event is about, as the API shows it; None where the body does not say.
    message_id: str | None
    correlation_id: str | None
    first_death_reason: str | None
    deaths: tuple[Death, ...]
    delivery_count: int | None
    body_start: str
    # A bundle's (common.bundles) contracts, by their message and event ids: the broker dead-letters a
    # bundle whole (its consumer kept dying on it), and a replay finds it by any of them.
    bundled_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class DeadLetterQueue:
    queue: str
    dead_letter_queue: str
    count: int
    messages: tuple[DeadLetter, ...]


def queue_names() -> tuple[str, ...]:
    """The service queues as `--queue` takes them: their names without a namespace."""
    return tuple(spec.name for spec in Topology().queues)


def _selected(topology: Topology, queue: str | None) -> list[tuple[str, QueueSpec]]:
    named = zip(queue_names(), topology.queues, strict=True)
    return [(name, spec) for name, spec in named if queue in (None, name)]


def _deaths(headers: dict[str, Any]) -> tuple[Death, ...]:
    return tuple(
        Death(
            queue=str(death.get("queue", "")),
            reason=str(death.get("reason", "")),
            count=int(death.get("count", 0)),
            routing_keys=tuple(str(key) for key in death.get("routing-keys", ())),
            time=death.get("time"),
        )
        for death in headers.get("x-death", ())
    )


def _message_id_in(body: bytes) -> str | None:
    """The `message_id` of a JSON body, if it is one that has it (a poison message may not be)."""
    try:
        document = json.loads(body)
    except ValueError:
        return None
    value = document.get("message_id") if isinstance(document, dict) else None
    return value if isinstance(value, str) else None


def _bundled_ids(message: AbstractIncomingMessage) -> tuple[str, ...]:
    if not is_bundle(message):
        return ()
    ids = []
    for body in bodies_in(message.body):
        try:
            document = json.loads(body)
        except ValueError:
            continue
        if isinstance(document, dict):
            ids.extend(value for name in ("message_id", "event_id") if isinstance(value := document.get(name), str))
    return tuple(ids)


def _names(message: AbstractIncomingMessage, message_id: str) -> bool:
    """Whether `message_id` (a message id or an event id) is this dead letter's, or one of its bundle's."""
    return message_id in (message.message_id, _message_id_in(message.body), *_bundled_ids(message))


def describe(message: AbstractIncomingMessage) -> DeadLetter:
    headers = dict(message.headers or {})
    deaths = _deaths(headers)
    # Dead-lettering re-routes a message under its queue's name; the routing key it was published
    # with is kept in its oldest death (the broker lists the latest first).
    routing_key = ",".join(deaths[-1].routing_keys) if deaths and deaths[-1].routing_keys else message.routing_key
    delivery_count = headers.get("x-delivery-count")
    return DeadLetter(
        routing_key=routing_key or "",
        kind=message.type,
        event_id=message.message_id,
        message_id=_message_id_in(message.body),
        correlation_id=message.correlation_id,
        first_death_reason=headers.get("x-first-death-reason"),
        deaths=deaths,
        delivery_count=delivery_count if isinstance(delivery_count, int) else None,
        body_start=message.body[:BODY_PREVIEW_CHARS].decode("utf-8", "replace"),
        bundled_ids=_bundled_ids(message),
    )


async def waiting_queue(channel: AbstractChannel, name: str) -> tuple[AbstractQueue, int]:
    queue = await channel.get_queue(name)
    assert queue.declaration_result is not None
    return queue, queue.declaration_result.message_count or 0


async def take_unacked(queue: AbstractQueue, count: int) -> list[AbstractIncomingMessage]:
    """Up to `count` messages off `queue`, unacked, so they go back if we stop half-way."""
    taken = []
    for _ in range(count):
        message = await queue.get(fail=False)
        if message is None:
            break
        taken.append(message)
    return taken


async def list_dead_letters(
    settings: ServiceSettings, *, queue: str | None = None, limit: int | None = None
) -> list[DeadLetterQueue]:
    """What each dead-letter queue holds (at most `limit` messages of each); nothing is taken off."""
    topology = Topology(settings.broker_namespace)
    async with await connect(settings.amqp_urls, name="dead letters") as connection:
        channel = await connection.channel()
        report = []
        for name, spec in _selected(topology, queue):
            dead_letters, count = await waiting_queue(channel, spec.dead_letter_name)
            held = await take_unacked(dead_letters, count if limit is None else min(count, limit))
            report.append(DeadLetterQueue(name, spec.dead_letter_name, count, tuple(map(describe, held))))
            # Requeued, they take their old places again (the quorum queue counts a delivery for each).
            for message in held:
                await message.nack(requeue=True)
        return report


async def replay_dead_letters(
    settings: ServiceSettings,
    *,
    queue: str | None = None,
    limit: int | None = None,
    message_id: str | None = None,
) -> dict[str, int]:
    """Moves dead letters (at most `limit`, or only those about `message_id`, which may also be an event
    id) back to the queue each died in; how many per queue."""
    topology = Topology(settings.broker_namespace)
    replayed: dict[str, int] = {}
    left = limit
    async with await connect(settings.amqp_urls, name="dead letters") as connection:
        # Confirms and returns raising: a publish that comes back unrouted must fail before the ack.
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        for name, spec in _selected(topology, queue):
            dead_letters, count = await waiting_queue(channel, spec.dead_letter_name)
            passed_over = []
            replayed[name] = 0
            for _ in range(count):
                message = await dead_letters.get(fail=False) if left != 0 else None
                if message is None:
                    break
                if message_id is not None and not _names(message, message_id):
                    passed_over.append(message)
                    continue
                await channel.default_exchange.publish(
                    copy_of(message), routing_key=spec.name, mandatory=True, timeout=PUBLISH_TIMEOUT_SECONDS
                )
                await message.ack()
                replayed[name] += 1
                left = None if left is None else left - 1
            for message in passed_over:
                await message.nack(requeue=True)
    return replayed


def format_report(report: Sequence[DeadLetterQueue]) -> str:
    lines = []
    for queue in report:
        lines.append(f"{queue.queue}: {queue.count} dead letter(s) in {queue.dead_letter_queue}")
        for letter in queue.messages:
            lines.append(
                f"  - {letter.routing_key} {letter.kind or '(no kind)'} message_id={letter.message_id} "
                f"event_id={letter.event_id} "
                f"correlation_id={letter.correlation_id} first_death_reason={letter.first_death_reason} "
                f"delivery_count={letter.delivery_count}"
            )
            lines.extend(
                f"    x-death: {death.reason} in {death.queue} x{death.count}"
                f" (routing keys {', '.join(death.routing_keys)}; last {death.time})"
                for death in letter.deaths
            )
            if letter.bundled_ids:
                lines.append(f"    bundled (message and event ids): {' '.join(letter.bundled_ids)}")
            lines.append(f"    body: {letter.body_start}")
    return "\n".join(lines)


def positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {number}")
    return number


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m common.dead_letters", description="List the dead-letter queues, or replay their messages."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="per dead-letter queue: the count, and each message and why it died")
    replay = commands.add_parser("replay", help="move dead letters back to the queue they were dead-lettered from")
    for command in (listing, replay):
        command.add_argument("--queue", choices=queue_names(), help="only this service queue's dead letters")
        command.add_argument("--limit", type=positive, help="at most this many messages (per queue when listing)")
    replay.add_argument(
        "--message-id", help="only the messages about this message id (as the API shows it), or with this event id"
    )
    return parser.parse_args(argv)


async def run(arguments: argparse.Namespace, settings: ServiceSettings) -> str:
    if arguments.command == "list":
        return format_report(await list_dead_letters(settings, queue=arguments.queue, limit=arguments.limit))
    replayed = await replay_dead_letters(
        settings, queue=arguments.queue, limit=arguments.limit, message_id=arguments.message_id
    )
    return "\n".join(f"{queue}: replayed {count}" for queue, count in replayed.items())


def main(argv: Sequence[str] | None = None) -> None:
    arguments = parse_arguments(argv)
    settings = ServiceSettings()
    try:
        print(asyncio.run(run(arguments, settings)))
    except aiormq.exceptions.ChannelNotFoundEntity as error:
        sys.exit(
            f"dead letters: {error!r}\nThe services declare the queues when they start: start one, "
            f"or check BROKER_NAMESPACE (now {settings.broker_namespace!r})."
        )
    except (OSError, aiormq.exceptions.AMQPError) as error:
        sys.exit(f"dead letters: {arguments.command} failed: {error!r}")


if __name__ == "__main__":
    main()
