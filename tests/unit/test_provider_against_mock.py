"""Each provider client against its own mock, over real HTTP: the two agree on the provider's API,
a command sent twice (a redelivery) is one message at the provider, and its one delivery receipt
names our message id."""

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from common.accounts import DEVELOPMENT_ACCOUNT_ID
from common.contracts import Channel, MessageContent, MessageStatus, SendMessage
from common.mock_provider import MOCK_STATE, MockBehaviour
from common.provider import ProviderClient
from email_service import mock_provider as email_mock
from email_service.provider import EmailProviderClient
from email_service.settings import EmailSettings
from sms_service import mock_provider as sms_mock
from sms_service.provider import SmsProviderClient
from sms_service.settings import SmsSettings
from tests.factories import ReceiptCatcher, eventually

RECEIPTS_AT_ONCE = MockBehaviour(delivery_delay_seconds=0)


@dataclass(frozen=True)
class Pair:
    channel: Channel
    sender: str
    recipient: str
    # Both take where receipts go: Twilio's is a setting of the client, SendGrid's one of the account.
    create_mock: Callable[[str], web.Application]
    make_client: Callable[[str, str], ProviderClient[Any]]
    # Our message id as a receipt carries it.
    our_message_id: Callable[[Any, dict[str, str]], str]


PAIRS = [
    Pair(
        Channel.MMS,
        "+12016661234",
        "+18045551234",
        lambda receipts_url: sms_mock.create_app(RECEIPTS_AT_ONCE),
        lambda url, receipts_url: SmsProviderClient(
            SmsSettings(sms_provider_url=url, sms_status_callback_url=receipts_url)
        ),
        lambda body, query: query["message_id"],
    ),
    Pair(
        Channel.EMAIL,
        "user@usehatchapp.com",
        "contact@gmail.com",
        lambda receipts_url: email_mock.create_app(RECEIPTS_AT_ONCE, event_webhook_url=receipts_url),
        lambda url, receipts_url: EmailProviderClient(EmailSettings(email_provider_url=url)),
        lambda body, query: body[0]["message_id"],
    ),
]


@pytest.mark.parametrize("pair", PAIRS, ids=lambda pair: pair.channel.value)
async def test_the_client_sends_what_its_mock_records_once(pair: Pair, aiohttp_server: AiohttpServer) -> None:
    catcher = ReceiptCatcher()
    receipts_url = str((await aiohttp_server(catcher.app())).make_url("/receipts"))
    mock_app = pair.create_mock(receipts_url)
    server = await aiohttp_server(mock_app)
    command = SendMessage(
        correlation_id=uuid.uuid4(),
        message_id=uuid.uuid4(),
        account_id=DEVELOPMENT_ACCOUNT_ID,
        content=MessageContent(
            channel=pair.channel,
            from_address=pair.sender,
            to_address=pair.recipient,
            body="<b>hello</b>",
            attachments=("https://example.com/a.png",),
            timestamp=datetime(2024, 11, 1, 14, tzinfo=UTC),
        ),
    )

    async with pair.make_client(str(server.make_url("")), receipts_url) as client:
        first = await client.send(command)
        redelivered = await client.send(command)

    assert first.status is MessageStatus.SENT, first.error
    assert redelivered == first
    [record] = mock_app[MOCK_STATE].records
    assert (record.id, record.idempotency_key) == (first.provider_message_id, str(command.message_id))
    assert (record.send.to, record.send.sender, record.send.body, record.send.attachments) == (
        pair.recipient,
        pair.sender,
        "<b>hello</b>",
        ("https://example.com/a.png",),
    )

    async def receipt_posted() -> bool:
        return bool(catcher.caught)

    await eventually(receipt_posted, "the delivery receipt")
    assert [pair.our_message_id(caught.body, caught.query) for caught in catcher.caught] == [str(command.message_id)]
