"""The dead-letter tool on the real RabbitMQ: what it lists, and a replay that gets a parked message
processed once its handler is fixed, without looping a message that can never succeed."""

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue

from common.broker import Consumer, Publisher, QueueArguments, Topology, declare_topology
from common.bundles import bundle_of
from common.contracts import MessageReceived, message_event_adapter
from common.dead_letters import DeadLetter, DeadLetterQueue, format_report, list_dead_letters, replay_dead_letters
from common.settings import ServiceSettings
from tests.factories import eventually, message_received

pytestmark = pytest.mark.integration

DELIVERY_LIMIT = 2
EVENTS = "conversation_service.events"
POISON = b'{"kind": "message_received", "message_id": "not a uuid"}'
POISON_ID = "poison-1"


class FlakyStore:
    """A handler that fails, as with its database down, until it is fixed."""

    def __init__(self) -> None:
        self.fixed = False
        self.stored: list[MessageReceived] = []

    async def __call__(self, event: MessageReceived) -> None:
        if not self.fixed:
            raise RuntimeError("database unavailable")
        self.stored.append(event)


@dataclass
class Parked:
    """A conversation-events consumer with its store down, a message it failed on until the delivery
    limit, and a poison message: both dead-lettered."""

    settings: ServiceSettings
    topology: Topology
    channel: AbstractChannel
    exchange: AbstractExchange
    store: FlakyStore
    failed: MessageReceived


async def dead_letter_count(channel: AbstractChannel, name: str) -> int:
    result = await (await channel.get_queue(name, ensure=False)).declare()
    return result.message_count or 0


async def until_dead_letters(parked: Parked, count: int) -> None:
    async def parked_count() -> bool:
        return await dead_letter_count(parked.channel, parked.topology.conversation_events.dead_letter_name) == count

    await eventually(parked_count, f"{count} dead letter(s)")


async def until_stored(parked: Parked, events: list[MessageReceived]) -> None:
    async def stored() -> bool:
        return parked.store.stored == events

    await eventually(stored, f"{len(events)} event(s) stored")


async def publish_poison(exchange: AbstractExchange) -> None:
    await exchange.publish(
        aio_pika.Message(POISON, message_id=POISON_ID, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
        routing_key="inbound.sms",
    )


@pytest.fixture
async def parked(amqp_url: str, broker_namespace: str) -> AsyncIterator[Parked]:
    settings = ServiceSettings(amqp_url=amqp_url, broker_namespace=broker_namespace)
    topology = Topology(broker_namespace)
    async with await aio_pika.connect_robust(amqp_url) as connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await declare_topology(channel, topology, QueueArguments(DELIVERY_LIMIT, max_length=1000))
        events: AbstractQueue = await channel.get_queue(topology.conversation_events.name)
        store = FlakyStore()
        consumer = Consumer(
            events, message_event_adapter.validate_json, store, delivery_limit=DELIVERY_LIMIT, redelivery_delay=0.01
        )
        await consumer.start()
        failed = message_received()
        parked = Parked(settings, topology, channel, exchange, store, failed)
        await Publisher(exchange).publish(failed)
        await until_dead_letters(parked, 1)
        await publish_poison(exchange)
        await until_dead_letters(parked, 2)
        try:
            yield parked
        finally:
            await consumer.stop(grace_seconds=1)


def of(report: list[DeadLetterQueue], queue: str) -> DeadLetterQueue:
    [found] = [entry for entry in report if entry.queue == queue]
    return found


def by_event_id(queue: DeadLetterQueue) -> dict[str | None, DeadLetter]:
    return {letter.event_id: letter for letter in queue.messages}


async def test_list_shows_each_dead_letter_with_why_it_died_and_takes_nothing_off(parked: Parked) -> None:
    report = await list_dead_letters(parked.settings)

    assert [(entry.queue, entry.count) for entry in report] == [
        ("sms_service.outbound", 0),
        ("email_service.outbound", 0),
        (EVENTS, 2),
    ]
    letters = by_event_id(of(report, EVENTS))
    failed = letters[str(parked.failed.event_id)]
    assert failed.message_id == str(parked.failed.message_id)
    assert (failed.routing_key, failed.kind, failed.correlation_id, failed.first_death_reason) == (
        "inbound.sms",
        "message_received",
        str(parked.failed.correlation_id),
        "rejected",
    )
    [death] = failed.deaths
    assert (death.queue, death.reason, death.count) == (parked.topology.conversation_events.name, "rejected", 1)
    assert failed.body_start.startswith('{"kind":"message_received"')
    poison = letters[POISON_ID]
    assert (poison.routing_key, poison.kind, poison.message_id, poison.first_death_reason, poison.body_start) == (
        "inbound.sms",
        None,
        "not a uuid",
        "rejected",
        POISON.decode(),
    )
    # Requeued by the listing, both come back: a quorum queue counts a requeued message again a moment later.
    await until_dead_letters(parked, 2)


async def test_list_can_show_one_queue_and_only_the_first_messages(parked: Parked) -> None:
    [events] = await list_dead_letters(parked.settings, queue=EVENTS, limit=1)

    assert (events.queue, events.count, len(events.messages)) == (EVENTS, 2, 1)
    assert events.messages[0].event_id == str(parked.failed.event_id)


@pytest.mark.parametrize("id_kind", ["message_id", "event_id"])
async def test_replay_after_the_fix_gets_the_message_processed_and_empties_the_queue(
    parked: Parked, id_kind: str
) -> None:
    parked.store.fixed = True

    replayed = await replay_dead_letters(parked.settings, message_id=str(getattr(parked.failed, id_kind)))

    assert replayed == {"sms_service.outbound": 0, "email_service.outbound": 0, EVENTS: 1}
    await until_stored(parked, [parked.failed])
    [events] = await list_dead_letters(parked.settings, queue=EVENTS)
    assert [letter.event_id for letter in events.messages] == [POISON_ID]


async def test_a_message_that_still_breaks_its_contract_goes_back_once_not_round_and_round(parked: Parked) -> None:
    parked.store.fixed = True

    replayed = await replay_dead_letters(parked.settings, queue=EVENTS)

    assert replayed == {EVENTS: 2}
    await until_stored(parked, [parked.failed])
    await until_dead_letters(parked, 1)
    [events] = await list_dead_letters(parked.settings, queue=EVENTS)
    [poison] = events.messages
    # Dead-lettered twice from the same queue for the same reason: the broker counts it in one entry.
    assert (poison.event_id, poison.routing_key) == (POISON_ID, "inbound.sms")
    assert [(death.reason, death.count) for death in poison.deaths] == [("rejected", 2)]


async def test_replay_stops_at_its_limit(parked: Parked) -> None:
    parked.store.fixed = True

    replayed = await replay_dead_letters(parked.settings, queue=EVENTS, limit=1)

    assert replayed == {EVENTS: 1}
    await until_stored(parked, [parked.failed])
    [events] = await list_dead_letters(parked.settings, queue=EVENTS)
    assert [letter.event_id for letter in events.messages] == [POISON_ID]


async def test_a_replay_that_cannot_be_routed_leaves_the_dead_letter_where_it_was(parked: Parked) -> None:
    await parked.channel.queue_delete(parked.topology.conversation_events.name)

    with pytest.raises(aio_pika.exceptions.DeliveryError):
        await replay_dead_letters(parked.settings, queue=EVENTS)

    await until_dead_letters(parked, 2)


async def run_cli(parked: Parked, *arguments: str) -> str:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "common.dead_letters",
        *arguments,
        env={
            **os.environ,
            "AMQP_URL": parked.settings.amqp_url,
            "BROKER_NAMESPACE": parked.settings.broker_namespace,
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr.decode()
    return stdout.decode()


async def test_the_command_line_lists_then_replays(parked: Parked) -> None:
    listed = await run_cli(parked, "list", "--queue", EVENTS)

    assert listed.splitlines()[0] == (
        f"{EVENTS}: 2 dead letter(s) in {parked.topology.conversation_events.dead_letter_name}"
    )
    assert f"message_id={parked.failed.message_id} event_id={parked.failed.event_id}" in listed
    assert f"message_id=not a uuid event_id={POISON_ID}" in listed
    assert listed.count("first_death_reason=rejected") == 2

    parked.store.fixed = True
    replayed = await run_cli(parked, "replay", "--message-id", str(parked.failed.event_id))

    assert replayed.splitlines() == [
        "sms_service.outbound: replayed 0",
        "email_service.outbound: replayed 0",
        f"{EVENTS}: replayed 1",
    ]
    await until_stored(parked, [parked.failed])


async def test_a_bundle_dead_lettered_whole_is_listed_with_its_ids_and_replayed_by_any_of_them(
    parked: Parked,
) -> None:
    # The parked consumer cannot put a bundle's failures back apart (it has no exchange to), so the
    # whole bundle goes back until the broker dead-letters it, as it would a bundle its consumer kept
    # dying on.
    bundled = [message_received(provider_message_id=f"bundled-{number}") for number in range(2)]
    await parked.exchange.publish(bundle_of(bundled), routing_key="inbound.sms")
    await until_dead_letters(parked, 3)

    [events] = await list_dead_letters(parked.settings, queue=EVENTS)
    [bundle] = [letter for letter in events.messages if letter.kind == "bundle"]
    assert bundle.bundled_ids == tuple(
        identifier for event in bundled for identifier in (str(event.message_id), str(event.event_id))
    )
    assert f"    bundled (message and event ids): {' '.join(bundle.bundled_ids)}" in format_report([events])

    parked.store.fixed = True
    replayed = await replay_dead_letters(parked.settings, message_id=str(bundled[1].message_id))

    assert replayed == {"sms_service.outbound": 0, "email_service.outbound": 0, EVENTS: 1}
    await eventually(lambda: _sorted_stored(parked, bundled), "both bundled events stored")
    await until_dead_letters(parked, 2)


async def _sorted_stored(parked: Parked, events: list[MessageReceived]) -> bool:
    return sorted(parked.store.stored, key=lambda event: event.provider_message_id) == events
