"""A channel service on the real RabbitMQ while one send waits out a long provider backoff: the
other messages go on, and a shutdown in the middle leaves the waiting message on the queue."""

import asyncio
import uuid
from collections.abc import AsyncIterator, Collection
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractQueue
from aiohttp import web

from common.broker import BROKER, Topology
from common.contracts import MessageStatus, MessageStatusChanged, SendMessage
from common.health import METRICS
from common.provider import SendOutcome
from sms_service.app import create_app
from sms_service.settings import SmsSettings
from tests.factories import eventually, send_message
from tests.integration.bus import contracts_in

pytestmark = pytest.mark.integration


class BackoffSender:
    """Sends at once, except the messages in `held`: those wait, as in a long provider backoff,
    until `release` is set."""

    def __init__(self, held: Collection[uuid.UUID] = ()) -> None:
        self._held = held
        self.release = asyncio.Event()
        self.in_backoff: set[uuid.UUID] = set()
        self.sent: list[uuid.UUID] = []

    async def send(self, command: SendMessage) -> SendOutcome:
        if command.message_id in self._held:
            self.in_backoff.add(command.message_id)
            try:
                await self.release.wait()
            finally:
                self.in_backoff.discard(command.message_id)
        self.sent.append(command.message_id)
        return SendOutcome.sent(f"SM-{command.message_id}", attempts=1)


async def start_sms_service(settings: SmsSettings, sender: BackoffSender) -> web.AppRunner:
    runner = web.AppRunner(create_app(settings, provider=sender))
    await runner.setup()
    return runner


@pytest.fixture
def settings(amqp_url: str, broker_namespace: str) -> SmsSettings:
    return SmsSettings(amqp_url=amqp_url, broker_namespace=broker_namespace, shutdown_grace_seconds=0.2)


@pytest.fixture
async def inspector(amqp_url: str) -> AsyncIterator[AbstractChannel]:
    """The test's own channel, to look into the queues behind the service's back."""
    async with await aio_pika.connect(amqp_url) as connection:
        yield await connection.channel()


async def ready_messages(channel: AbstractChannel, name: str) -> int:
    result = await (await channel.get_queue(name, ensure=False)).declare()
    return result.message_count or 0


async def until_ready(channel: AbstractChannel, name: str, count: int) -> None:
    """Wait for `count` messages ready on queue `name`: a closed connection's unacked deliveries
    return to a quorum queue a moment after the close."""

    async def ready() -> bool:
        return await ready_messages(channel, name) == count

    await eventually(ready, f"{count} message(s) ready on {name}")


async def until_statuses_confirmed(runner: web.AppRunner, count: int) -> None:
    """Wait for `count` sent statuses confirmed by the broker, which counts them as they come; the
    events queue would not say, holding some as bundles (see common.bundles)."""
    sent = runner.app[METRICS].messages_sent.labels(channel="sms")

    async def confirmed() -> bool:
        return sent._value.get() == count

    await eventually(confirmed, f"{count} statuses confirmed")


async def drain(queue: AbstractQueue) -> list[Any]:
    """Every message waiting on `queue`, parsed as a bus contract, taken off it."""
    contracts = []
    while (message := await queue.get(fail=False, timeout=5)) is not None:
        await message.ack()
        contracts.extend(contracts_in(message))
    return contracts


async def statuses_reported(channel: AbstractChannel, topology: Topology) -> list[MessageStatusChanged]:
    events = await drain(await channel.get_queue(topology.conversation_events.name, ensure=False))
    return [event for event in events if isinstance(event, MessageStatusChanged)]


async def test_messages_behind_one_in_backoff_are_sent_and_acked_meanwhile(
    settings: SmsSettings, inspector: AbstractChannel
) -> None:
    slow = send_message()
    sender = BackoffSender(held={slow.message_id})
    runner = await start_sms_service(settings, sender)
    topology = runner.app[BROKER].topology
    try:
        await runner.app[BROKER].publisher.publish(slow)

        async def in_backoff() -> bool:
            return sender.in_backoff == {slow.message_id}

        await eventually(in_backoff, "the first message in its backoff")
        others = [send_message() for _ in range(5)]
        for command in others:
            await runner.app[BROKER].publisher.publish(command)

        async def others_sent() -> bool:
            return len(sender.sent) == len(others)

        await eventually(others_sent, "the messages behind it sent")
        assert sender.sent == [command.message_id for command in others]
        assert sender.in_backoff == {slow.message_id}
        # A send is acked only after its status is confirmed, which can outlast the 0.2 s grace: with every
        # status confirmed, the held send is the only one the shutdown cancels.
        await until_statuses_confirmed(runner, len(others))
    finally:
        await runner.cleanup()

    # Closing the connection hands back whatever was not acked: only the message still in backoff.
    await until_ready(inspector, topology.sms_outbound.name, 1)
    outbound = await inspector.get_queue(topology.sms_outbound.name, ensure=False)
    assert [command.message_id for command in await drain(outbound)] == [slow.message_id]
    reported = await statuses_reported(inspector, topology)
    assert sorted(event.message_id for event in reported) == sorted(command.message_id for command in others)


async def test_a_consumer_works_on_up_to_its_prefetch_of_messages_at_once(
    settings: SmsSettings, inspector: AbstractChannel
) -> None:
    commands = [send_message() for _ in range(4)]
    sender = BackoffSender(held={command.message_id for command in commands})
    runner = await start_sms_service(settings.model_copy(update={"consumer_prefetch": 3}), sender)
    topology = runner.app[BROKER].topology
    try:
        for command in commands:
            await runner.app[BROKER].publisher.publish(command)

        async def prefetch_in_backoff() -> bool:
            return len(sender.in_backoff) == 3

        await eventually(prefetch_in_backoff, "three sends in backoff at once")
        assert await ready_messages(inspector, topology.sms_outbound.name) == 1

        sender.release.set()

        async def all_sent() -> bool:
            return len(sender.sent) == len(commands)

        await eventually(all_sent, "every message sent once the backoffs end")
        # Sent is not yet acked: a status still unconfirmed when the 0.2 s grace ends would have its send
        # cancelled and its command put back.
        await until_statuses_confirmed(runner, len(commands))
    finally:
        await runner.cleanup()

    assert sorted(sender.sent) == sorted(command.message_id for command in commands)
    assert await ready_messages(inspector, topology.sms_outbound.name) == 0


async def test_a_shutdown_during_a_backoff_leaves_the_message_for_the_next_consumer(
    settings: SmsSettings, inspector: AbstractChannel
) -> None:
    command = send_message()
    stopping = BackoffSender(held={command.message_id})
    runner = await start_sms_service(settings, stopping)
    topology = runner.app[BROKER].topology
    await runner.app[BROKER].publisher.publish(command)

    async def in_backoff() -> bool:
        return stopping.in_backoff == {command.message_id}

    await eventually(in_backoff, "the message in its backoff")
    # The grace is far shorter than the backoff, so the send is cancelled half-way.
    await runner.cleanup()

    assert stopping.sent == [] and stopping.in_backoff == set()
    await until_ready(inspector, topology.sms_outbound.name, 1)
    assert await statuses_reported(inspector, topology) == []

    next_sender = BackoffSender()
    runner = await start_sms_service(settings, next_sender)
    try:

        async def sent() -> bool:
            return next_sender.sent == [command.message_id]

        await eventually(sent, "the message sent by the next consumer")
        # With its status queued, the 0.2 s grace cannot cancel this send too; the command itself was
        # drained from the events queue above.
        await until_ready(inspector, topology.conversation_events.name, 1)
    finally:
        await runner.cleanup()

    assert next_sender.sent == [command.message_id]
    [reported] = await statuses_reported(inspector, topology)
    assert (reported.message_id, reported.status) == (command.message_id, MessageStatus.SENT)
    assert await ready_messages(inspector, topology.sms_outbound.name) == 0
