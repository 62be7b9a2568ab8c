"""The channel services' unit of work: send through the provider, publish what happened."""

import pytest

from common.broker import BrokerUnavailable
from common.channel import SendHandler
from common.contracts import (
    EMAIL_PROVIDER,
    SMS_PROVIDER,
    Channel,
    Contract,
    MessageStatus,
    MessageStatusChanged,
    SendMessage,
)
from common.provider import SendOutcome
from tests.factories import send_message


class FakeProvider:
    def __init__(self, outcome: SendOutcome) -> None:
        self.outcome = outcome
        self.sent: list[SendMessage] = []

    async def send(self, command: SendMessage) -> SendOutcome:
        self.sent.append(command)
        return self.outcome


class FakePublisher:
    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.published: list[Contract] = []

    async def publish(self, contract: Contract) -> None:
        if self.error is not None:
            raise self.error
        self.published.append(contract)


async def test_a_message_the_provider_took_is_published_as_sent_with_its_provider_id() -> None:
    provider = FakeProvider(SendOutcome.sent("SM123", attempts=2))
    publisher = FakePublisher()
    command = send_message()

    await SendHandler(provider, publisher, SMS_PROVIDER)(command)

    assert provider.sent == [command]
    [event] = publisher.published
    assert isinstance(event, MessageStatusChanged)
    assert (event.message_id, event.status, event.provider, event.provider_message_id, event.attempts) == (
        command.message_id,
        MessageStatus.SENT,
        SMS_PROVIDER,
        "SM123",
        2,
    )
    assert event.error is None
    assert (event.command, event.correlation_id) == (command, command.correlation_id)
    assert event.routing_key == "status.sms"


async def test_a_message_the_provider_refused_is_published_as_failed_with_the_reason() -> None:
    reason = "provider answered HTTP 400: The from email does not contain a valid address."
    publisher = FakePublisher()
    command = send_message(Channel.EMAIL)

    await SendHandler(FakeProvider(SendOutcome.failed(reason, attempts=1)), publisher, EMAIL_PROVIDER)(command)

    [event] = publisher.published
    assert isinstance(event, MessageStatusChanged)
    assert (event.status, event.provider, event.error, event.attempts) == (
        MessageStatus.FAILED,
        EMAIL_PROVIDER,
        reason,
        1,
    )
    assert event.provider_message_id is None
    assert event.routing_key == "status.email"


async def test_a_status_the_broker_did_not_take_fails_the_handler_so_the_command_comes_back() -> None:
    publisher = FakePublisher(BrokerUnavailable("broker did not confirm status.sms"))
    handler = SendHandler(FakeProvider(SendOutcome.sent("SM123", attempts=1)), publisher, SMS_PROVIDER)

    with pytest.raises(BrokerUnavailable):
        await handler(send_message())
