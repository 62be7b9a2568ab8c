"""sms_service and email_service on the real RabbitMQ, each sending through its mock provider."""

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from random import Random
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from aiohttp import web
from pydantic import ValidationError
from pytest_aiohttp import AiohttpServer

from common.broker import BROKER, QueueSpec, Topology
from common.contracts import (
    EMAIL_PROVIDER,
    SMS_PROVIDER,
    Channel,
    MessageStatus,
    MessageStatusChanged,
)
from common.mock_provider import MOCK_STATE, MagicRecipients, MockBehaviour
from email_service import mock_provider as email_mock
from email_service.app import create_app as create_email_app
from email_service.settings import EmailSettings
from sms_service import mock_provider as sms_mock
from sms_service.app import create_app as create_sms_app
from sms_service.settings import SmsSettings
from tests.factories import OUR_EMAIL, OUR_PHONE, THEIR_EMAIL, THEIR_PHONE, send_message
from tests.integration.bus import contracts_in

pytestmark = pytest.mark.integration

DEADLINE_SECONDS = 15.0
FAST_RETRY = {"provider_backoff_initial_seconds": 0.01, "provider_backoff_max_seconds": 0.05}


@dataclass(frozen=True)
class MockSetup:
    """How a test wants the mock provider: its behaviour, its randomness, where its receipts go (None:
    nowhere; Twilio is told per message by the channel service, SendGrid once by the mock's setting)."""

    behaviour: MockBehaviour = field(default_factory=MockBehaviour)
    random_source: Random | None = None
    receipts_url: str | None = None


@dataclass(frozen=True)
class ChannelService:
    channel: Channel
    sender: str
    recipient: str
    provider_name: str
    magic: MagicRecipients
    create_mock: Callable[[MockSetup], web.Application]
    # The channel service for (amqp_url, namespace, provider_url, receipts_url, settings overrides).
    create_app: Callable[[str, str, str, str | None, dict[str, Any]], web.Application]
    queue: Callable[[Topology], QueueSpec]


SMS = ChannelService(
    Channel.SMS,
    OUR_PHONE,
    THEIR_PHONE,
    SMS_PROVIDER,
    sms_mock.MAGIC_NUMBERS,
    lambda setup: sms_mock.create_app(setup.behaviour, random_source=setup.random_source),
    lambda amqp_url, namespace, provider_url, receipts_url, overrides: create_sms_app(
        SmsSettings(
            amqp_url=amqp_url,
            broker_namespace=namespace,
            sms_provider_url=provider_url,
            sms_status_callback_url=receipts_url,
            **{**FAST_RETRY, **overrides},
        )
    ),
    lambda topology: topology.sms_outbound,
)
EMAIL = ChannelService(
    Channel.EMAIL,
    OUR_EMAIL,
    THEIR_EMAIL,
    EMAIL_PROVIDER,
    email_mock.MAGIC_ADDRESSES,
    lambda setup: email_mock.create_app(
        setup.behaviour, event_webhook_url=setup.receipts_url, random_source=setup.random_source
    ),
    lambda amqp_url, namespace, provider_url, receipts_url, overrides: create_email_app(
        EmailSettings(
            amqp_url=amqp_url,
            broker_namespace=namespace,
            email_provider_url=provider_url,
            **{**FAST_RETRY, **overrides},
        )
    ),
    lambda topology: topology.email_outbound,
)


@dataclass
class Running:
    service: ChannelService
    app: web.Application
    mock: web.Application
    channel: AbstractChannel
    topology: Topology
    # The statuses the mock answered sends with, counted as they went out.
    answers: Counter[int]


class StatusWatcher:
    """Resolves one future per awaited message id when its `MessageStatusChanged` reaches the
    conversation service's queue (where the conversation service, not running here, would read it)."""

    def __init__(self) -> None:
        self._waiting: dict[uuid.UUID, asyncio.Future[MessageStatusChanged]] = {}

    def expect(self, message_id: uuid.UUID) -> asyncio.Future[MessageStatusChanged]:
        return self._waiting.setdefault(message_id, asyncio.get_running_loop().create_future())

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        async with message.process():
            try:
                events = contracts_in(message)
            except ValidationError:
                return
            for event in events:
                future = self._waiting.get(event.message_id)
                if isinstance(event, MessageStatusChanged) and future is not None and not future.done():
                    future.set_result(event)


async def start(
    service: ChannelService,
    amqp_url: str,
    namespace: str,
    aiohttp_server: AiohttpServer,
    setup: MockSetup = MockSetup(),
    **overrides: Any,
) -> AsyncIterator[Running]:
    """The mock as `setup` says and the channel service in front of it, `overrides` in its settings."""
    mock = service.create_mock(setup)
    answers: Counter[int] = Counter()

    async def count_answer(request: web.Request, response: web.StreamResponse) -> None:
        if request.method == "POST":
            answers[response.status] += 1

    mock.on_response_prepare.append(count_answer)
    provider_url = str((await aiohttp_server(mock)).make_url(""))
    app = service.create_app(amqp_url, namespace, provider_url, setup.receipts_url, overrides)
    await aiohttp_server(app)
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        yield Running(service, app, mock, channel, Topology(namespace), answers)


@pytest.fixture(params=[SMS, EMAIL], ids=lambda service: service.channel.value)
async def running(
    request: pytest.FixtureRequest, amqp_url: str, broker_namespace: str, aiohttp_server: AiohttpServer
) -> AsyncIterator[Running]:
    async for running in start(request.param, amqp_url, broker_namespace, aiohttp_server):
        yield running


@pytest.fixture
async def running_sms(amqp_url: str, broker_namespace: str, aiohttp_server: AiohttpServer) -> AsyncIterator[Running]:
    async for running in start(SMS, amqp_url, broker_namespace, aiohttp_server):
        yield running


async def watch_statuses(running: Running) -> StatusWatcher:
    watcher = StatusWatcher()
    queue = await running.channel.get_queue(running.topology.conversation_events.name)
    await queue.consume(watcher.on_message)
    return watcher


async def test_a_published_send_reaches_the_provider_once_and_is_reported_sent(running: Running) -> None:
    watcher = await watch_statuses(running)
    command = send_message(
        running.service.channel, from_address=running.service.sender, to_address=running.service.recipient
    )
    reported = watcher.expect(command.message_id)

    await running.app[BROKER].publisher.publish(command)
    event = await asyncio.wait_for(reported, DEADLINE_SECONDS)

    assert (event.status, event.provider, event.attempts, event.error) == (
        MessageStatus.SENT,
        running.service.provider_name,
        1,
        None,
    )
    assert (event.command, event.correlation_id) == (command, command.correlation_id)
    [record] = running.mock[MOCK_STATE].records
    assert record.id == event.provider_message_id
    assert (record.send.to, record.idempotency_key) == (running.service.recipient, str(command.message_id))


async def test_a_body_that_breaks_the_contract_is_dead_lettered_and_the_next_one_is_sent(
    running_sms: Running,
) -> None:
    running = running_sms
    watcher = await watch_statuses(running)
    dead_letters: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def on_dead_letter(message: AbstractIncomingMessage) -> None:
        async with message.process():
            if not dead_letters.done():
                dead_letters.set_result(message.body)

    dead_letter_queue = await running.channel.get_queue(running.topology.sms_outbound.dead_letter_name)
    await dead_letter_queue.consume(on_dead_letter)
    exchange = await running.channel.get_exchange(running.topology.exchange)
    poison = b'{"kind": "send_message", "message_id": "not a uuid"}'

    await exchange.publish(aio_pika.Message(poison, delivery_mode=aio_pika.DeliveryMode.PERSISTENT), "outbound.sms")
    assert await asyncio.wait_for(dead_letters, DEADLINE_SECONDS) == poison

    command = send_message(running.service.channel)
    reported = watcher.expect(command.message_id)
    await running.app[BROKER].publisher.publish(command)
    assert (await asyncio.wait_for(reported, DEADLINE_SECONDS)).status is MessageStatus.SENT
    assert len(running.mock[MOCK_STATE].records) == 1
