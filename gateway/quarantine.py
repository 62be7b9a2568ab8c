"""Refused webhooks, kept instead of lost, and replayed once the secret that refused them is fixed.

    python -m gateway.quarantine list   [--limit N]
    python -m gateway.quarantine replay [--limit N]

A webhook whose signature does not verify is answered 403, and its request (method, URL, headers,
raw body, why, when) is published with a confirm to a durable quorum queue first; if the broker does
not confirm, the answer is 503, so the provider retries it: a misconfigured secret must not lose a
real provider's messages. `replay` verifies each entry again with the settings in force now (secrets,
PUBLIC_BASE_URL), judging its timestamps by when it was received, and publishes the ones that pass
through the very path a live webhook takes, then removes them; the rest stay. An entry is acked
only after its publish was confirmed, so a crash in between replays it again later, which the
message ids derived from the provider's ids make a no-op downstream.

The gateway's settings come from the environment (or `.env`), as for the gateway itself.
"""

import argparse
import asyncio
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import aiormq
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from aiohttp import web
from pydantic import ValidationError

from common.broker import BROKER, BrokerUnavailable, ContractPublisher, Topology
from common.contracts import Contract
from common.dead_letters import positive, take_unacked, waiting_queue
from common.errors import DomainError
from common.settings import load_settings
from gateway.settings import GatewaySettings
from gateway.signatures import SignatureRefused
from gateway.webhooks import WebhookRequest, Webhooks

BODY_PREVIEW_CHARS = 200
# Bounds on what forgers can make the broker keep: past them a refused webhook is answered 503 (the
# broker refuses the publish), so a real provider retries rather than loses it.
MAX_ENTRIES = 10_000
MAX_BYTES = 512 * 1024 * 1024
# Listing and replaying hand entries back (a nack), which a quorum queue counts as deliveries; under
# RabbitMQ 4's default limit of 20 an entry listed 20 times would be dropped. This is no limit in practice.
DELIVERY_LIMIT = 2**31 - 1
# Credentials a caller may have sent along; a webhook's signature is in its own headers.
_NOT_KEPT_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})


class QuarantinedWebhook(Contract):
    """A refused webhook as it arrived, and why; `occurred_at` is when it arrived."""

    kind: Literal["webhook_quarantined"] = "webhook_quarantined"
    request: WebhookRequest
    reason: str

    @property
    def routing_key(self) -> str:
        return "quarantine.webhook"

    @classmethod
    def of(cls, request: WebhookRequest, reason: str, correlation_id: uuid.UUID) -> "QuarantinedWebhook":
        kept_headers = tuple((name, value) for name, value in request.headers if name.lower() not in _NOT_KEPT_HEADERS)
        return cls(
            correlation_id=correlation_id,
            occurred_at=request.received_at,
            request=request.model_copy(update={"headers": kept_headers}),
            reason=reason,
        )

    def replayed_at(self, origin: str) -> WebhookRequest:
        """The request as if posted to `origin`: a replay checks its signature under today's PUBLIC_BASE_URL."""
        return self.request.model_copy(update={"origin": origin})


class BrokerQuarantine:
    """Keeps an entry with a publish the broker confirmed; raises `BrokerUnavailable` if it did not."""

    def __init__(self, publisher: ContractPublisher) -> None:
        self._publisher = publisher

    async def keep(self, entry: QuarantinedWebhook) -> None:
        await self._publisher.publish(entry)


QUARANTINE = web.AppKey("quarantine", BrokerQuarantine)


async def declare_quarantine(channel: AbstractChannel, topology: Topology) -> None:
    exchange = await channel.get_exchange(topology.exchange)
    queue = await channel.declare_queue(
        topology.quarantine.name,
        durable=True,
        arguments={
            "x-queue-type": "quorum",
            "x-delivery-limit": DELIVERY_LIMIT,
            "x-max-length": MAX_ENTRIES,
            "x-max-length-bytes": MAX_BYTES,
            "x-overflow": "reject-publish",
        },
    )
    for routing_key in topology.quarantine.bindings:
        await queue.bind(exchange, routing_key)


def quarantine_ctx(publisher: ContractPublisher | None) -> Callable[[web.Application], AsyncIterator[None]]:
    """The broker's quarantine queue (declared here, after `broker_ctx`), or a test's fake publisher."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        if publisher is None:
            broker = app[BROKER]
            await declare_quarantine(broker.publish_channel, broker.topology)
            app[QUARANTINE] = BrokerQuarantine(broker.publisher)
        else:
            app[QUARANTINE] = BrokerQuarantine(publisher)
        yield

    return ctx


@dataclass(frozen=True)
class Entry:
    id: str
    received_at: str
    reason: str
    method: str
    url: str
    body_start: str


@dataclass(frozen=True)
class ReplayOutcome:
    id: str
    # None: published and removed; otherwise why it stays.
    still_refused: str | None


def _printable(text: str) -> str:
    # What a forger wrote must not drive the operator's terminal.
    return text.encode("unicode_escape").decode("ascii")


def describe(entry: QuarantinedWebhook) -> Entry:
    return Entry(
        id=str(entry.event_id),
        received_at=entry.occurred_at.isoformat(),
        reason=_printable(entry.reason),
        method=_printable(entry.request.method),
        url=_printable(entry.request.url),
        body_start=_printable(entry.request.body[:BODY_PREVIEW_CHARS].decode("utf-8", "replace")),
    )


def _entry(message: AbstractIncomingMessage) -> QuarantinedWebhook | None:
    try:
        return QuarantinedWebhook.model_validate_json(message.body)
    except ValidationError:
        return None


async def list_quarantine(channel: AbstractChannel, topology: Topology, limit: int | None = None) -> list[Entry]:
    queue, count = await waiting_queue(channel, topology.quarantine.name)
    held = await take_unacked(queue, count if limit is None else min(count, limit))
    try:
        return [describe(entry) for message in held if (entry := _entry(message)) is not None]
    finally:
        for message in held:
            await message.nack(requeue=True)


async def replay_quarantine(
    channel: AbstractChannel, topology: Topology, webhooks: Webhooks, limit: int | None = None
) -> list[ReplayOutcome]:
    """Each entry (at most `limit`), verified and handled again as a live webhook; those that pass are
    acked after their publish, the others go back. A replay reads no further than the entries that
    were waiting when it started."""
    queue, count = await waiting_queue(channel, topology.quarantine.name)
    held = await take_unacked(queue, count if limit is None else min(count, limit))
    outcomes = []
    try:
        for message in held:
            entry = _entry(message)
            if entry is None:
                outcomes.append(ReplayOutcome(str(message.message_id), "not a quarantined webhook"))
                continue
            try:
                await webhooks.handle(
                    entry.replayed_at(webhooks.origin_for(entry.request.origin)), entry.correlation_id
                )
            except SignatureRefused as refusal:
                outcomes.append(ReplayOutcome(str(entry.event_id), refusal.reason))
                continue
            except DomainError as error:
                # Signed, but its body is not one the gateway takes: kept, so nothing signed is lost unseen.
                outcomes.append(ReplayOutcome(str(entry.event_id), f"signature verifies; {error.message}"))
                continue
            await message.ack()
            outcomes.append(ReplayOutcome(str(entry.event_id), None))
    finally:
        for message in held:
            if message.processed is False:
                await message.nack(requeue=True)
    return outcomes


def format_entries(entries: Sequence[Entry]) -> str:
    lines = [f"{len(entries)} quarantined webhook(s)"]
    for entry in entries:
        lines.append(f"- {entry.id} received {entry.received_at}: {entry.reason}")
        lines.append(f"    {entry.method} {entry.url}")
        lines.append(f"    body: {entry.body_start}")
    return "\n".join(lines)


def format_outcomes(outcomes: Sequence[ReplayOutcome]) -> str:
    replayed = sum(outcome.still_refused is None for outcome in outcomes)
    lines = [f"replayed {replayed}, left {len(outcomes) - replayed} in quarantine"]
    lines.extend(
        f"- {outcome.id}: " + ("published" if outcome.still_refused is None else f"stays: {outcome.still_refused}")
        for outcome in outcomes
    )
    return "\n".join(lines)


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.quarantine", description="List the refused webhooks, or replay them."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="each refused webhook: why, when, its URL and the start of its body")
    replay = commands.add_parser("replay", help="verify each again with the current secrets; publish those that pass")
    for command in (listing, replay):
        command.add_argument("--limit", type=positive, help="at most this many entries")
    return parser.parse_args(argv)


async def run(arguments: argparse.Namespace, settings: GatewaySettings) -> str:
    """Runs the gateway's own wiring without serving HTTP, so a replay publishes exactly as a live
    webhook would (the same intake, publisher and checks)."""
    # Imported here: the app imports this module for its quarantine.
    from gateway.app import create_app
    from gateway.views import WEBHOOKS

    runner = web.AppRunner(create_app(settings))
    await runner.setup()
    try:
        broker = runner.app[BROKER]
        # The gateway consumes nothing, so its consuming channel is free for taking entries off.
        channel = broker.consume_channel
        if arguments.command == "list":
            return format_entries(await list_quarantine(channel, broker.topology, arguments.limit))
        outcomes = await replay_quarantine(channel, broker.topology, runner.app[WEBHOOKS], arguments.limit)
        return format_outcomes(outcomes)
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> None:
    arguments = parse_arguments(argv)
    settings = load_settings(GatewaySettings)
    try:
        print(asyncio.run(run(arguments, settings)))
    except (OSError, aiormq.exceptions.AMQPError, BrokerUnavailable) as error:
        sys.exit(f"quarantine: {arguments.command} failed: {error!r}")


if __name__ == "__main__":
    main()
