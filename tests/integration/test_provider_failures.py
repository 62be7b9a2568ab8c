"""The retry pipeline against mock providers that fail on purpose, on the real RabbitMQ: every send
through a flaky, rate-limited provider ends `sent` exactly once, and each magic address ends the way
it promises, with the provider's reason."""

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from random import Random

import pytest
from pytest_aiohttp import AiohttpServer

from common.broker import BROKER
from common.contracts import Channel, MessageStatus, MessageStatusChanged
from common.mock_provider import MOCK_STATE, MockBehaviour
from email_service import mock_provider as email_mock
from tests.factories import CaughtReceipt, ReceiptCatcher, eventually, send_message
from tests.integration.test_channel_services import (
    EMAIL,
    SMS,
    ChannelService,
    MockSetup,
    Running,
    start,
    watch_statuses,
)

pytestmark = pytest.mark.integration

SEED = 3
SENDS = 200
DEADLINE_SECONDS = 60.0
FLAKY = MockBehaviour(failure_rate=0.3, rate_limit_per_second=60, retry_after_seconds=0.1, delivery_delay_seconds=0)
# The test is about "sent exactly once", not about how long the unluckiest message waits, so neither
# bound may end its retries. An attempt fails about two times in three here (500s plus 429s), so 60
# attempts leave one message in 10^9 failed; short backoffs keep 60 of them well inside the deadline.
# With the default 10 s backoff cap, one message in 200 ran out of a 20 s deadline in CI.
# Few consumers in flight, so the rate limit sends some back without starving any.
PATIENT_RETRY = {
    "provider_max_attempts": 60,
    "provider_backoff_initial_seconds": 0.05,
    "provider_backoff_max_seconds": 0.5,
    "provider_deadline_seconds": DEADLINE_SECONDS - 10,
    "consumer_prefetch": 10,
}
GIVE_UP_AFTER = 3


INVALID_REASON = {
    Channel.SMS: f"The 'To' number {SMS.magic.invalid} is not a valid phone number.",
    Channel.EMAIL: "Does not contain a valid address.",
}
UNDELIVERED = {Channel.SMS: ("undelivered", "30003"), Channel.EMAIL: ("bounce", email_mock.BOUNCE_REASON)}


def read_twilio_receipt(caught: CaughtReceipt) -> tuple[str, str, tuple[str, str]]:
    """(our message id, the provider's id, (the outcome, why)) of a status callback."""
    return (
        caught.query["message_id"],
        caught.body["MessageSid"],
        (caught.body["MessageStatus"], caught.body["ErrorCode"]),
    )


def read_sendgrid_receipt(caught: CaughtReceipt) -> tuple[str, str, tuple[str, str]]:
    [event] = caught.body
    return event["message_id"], event["sg_message_id"], (event["event"], event["reason"])


READ_RECEIPT = {Channel.SMS: read_twilio_receipt, Channel.EMAIL: read_sendgrid_receipt}


async def publish_and_wait(running: Running, to_address: str) -> MessageStatusChanged:
    """Send one message to `to_address` through the channel service and return its status event."""
    watcher = await watch_statuses(running)
    command = send_message(running.service.channel, from_address=running.service.sender, to_address=to_address)
    reported = watcher.expect(command.message_id)
    await running.app[BROKER].publisher.publish(command)
    return await asyncio.wait_for(reported, DEADLINE_SECONDS)


@pytest.fixture(params=[SMS, EMAIL], ids=lambda service: service.channel.value)
def service(request: pytest.FixtureRequest) -> ChannelService:
    return request.param


@pytest.fixture
async def flaky(
    service: ChannelService, amqp_url: str, broker_namespace: str, aiohttp_server: AiohttpServer
) -> AsyncIterator[Running]:
    setup = MockSetup(behaviour=FLAKY, random_source=Random(SEED))
    async for running in start(service, amqp_url, broker_namespace, aiohttp_server, setup, **PATIENT_RETRY):
        yield running


@pytest.fixture
def catcher() -> ReceiptCatcher:
    return ReceiptCatcher()


@pytest.fixture
async def strict(
    service: ChannelService,
    amqp_url: str,
    broker_namespace: str,
    aiohttp_server: AiohttpServer,
    catcher: ReceiptCatcher,
) -> AsyncIterator[Running]:
    """A mock that fails only its magic addresses, its receipts caught, and a channel service that
    gives up after a few attempts."""
    receipts_url = str((await aiohttp_server(catcher.app())).make_url("/receipts"))
    setup = MockSetup(behaviour=MockBehaviour(delivery_delay_seconds=0), receipts_url=receipts_url)
    overrides = {"provider_max_attempts": GIVE_UP_AFTER}
    async for running in start(service, amqp_url, broker_namespace, aiohttp_server, setup, **overrides):
        yield running


async def test_every_send_through_a_flaky_rate_limited_provider_ends_sent_once(flaky: Running) -> None:
    watcher = await watch_statuses(flaky)
    commands = [
        send_message(flaky.service.channel, from_address=flaky.service.sender, to_address=flaky.service.recipient)
        for _ in range(SENDS)
    ]
    reported = [watcher.expect(command.message_id) for command in commands]

    # All at once, so the mock's rate limit is certain to answer some of them 429.
    await asyncio.gather(*(flaky.app[BROKER].publisher.publish(command) for command in commands))
    events = await asyncio.wait_for(asyncio.gather(*reported), DEADLINE_SECONDS)

    assert Counter(event.status for event in events) == {MessageStatus.SENT: SENDS}
    records = flaky.mock[MOCK_STATE].records
    assert Counter(record.idempotency_key for record in records) == {str(command.message_id): 1 for command in commands}
    assert {event.provider_message_id for event in events} == {record.id for record in records}
    retried = [event for event in events if event.attempts > 1]
    assert retried, "nothing was retried: the failures were not injected"
    assert flaky.answers[500] > 0 and flaky.answers[429] > 0, flaky.answers
    # Every answer but the accepting ones was one more attempt of some message.
    assert sum(event.attempts for event in events) == sum(flaky.answers.values())


async def test_an_invalid_address_fails_at_once_with_the_providers_reason(strict: Running) -> None:
    event = await publish_and_wait(strict, strict.service.magic.invalid)

    assert (event.status, event.attempts, event.provider_message_id) == (MessageStatus.FAILED, 1, None)
    assert event.error == f"provider answered HTTP 400: {INVALID_REASON[strict.service.channel]}"
    assert strict.mock[MOCK_STATE].records == []


async def test_an_always_failing_address_fails_after_the_last_attempt(strict: Running) -> None:
    event = await publish_and_wait(strict, strict.service.magic.failing)

    assert (event.status, event.attempts) == (MessageStatus.FAILED, GIVE_UP_AFTER)
    assert event.error == "provider answered HTTP 500: Internal Server Error"
    assert strict.mock[MOCK_STATE].records == []


async def test_an_unreachable_address_is_sent_then_reported_undelivered(
    strict: Running, catcher: ReceiptCatcher
) -> None:
    event = await publish_and_wait(strict, strict.service.magic.unreachable)

    assert (event.status, event.attempts) == (MessageStatus.SENT, 1)
    [record] = strict.mock[MOCK_STATE].records
    assert record.id == event.provider_message_id

    async def receipt_posted() -> bool:
        return bool(catcher.caught)

    await eventually(receipt_posted, "the delivery receipt")
    [caught] = catcher.caught
    assert READ_RECEIPT[strict.service.channel](caught) == (
        str(event.message_id),
        event.provider_message_id,
        UNDELIVERED[strict.service.channel],
    )
