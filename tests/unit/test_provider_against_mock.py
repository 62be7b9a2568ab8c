"""Each provider client against its own mock, over real HTTP: the two agree on the provider's API,
and a command sent twice (a redelivery) is one message at the provider."""

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from common.contracts import Channel, MessageContent, MessageStatus, SendMessage
from common.mock_provider import MOCK_STATE
from common.provider import ProviderClient
from email_service import mock_provider as email_mock
from email_service.provider import EmailProviderClient
from email_service.settings import EmailSettings
from sms_service import mock_provider as sms_mock
from sms_service.provider import SmsProviderClient
from sms_service.settings import SmsSettings


@dataclass(frozen=True)
class Pair:
    channel: Channel
    sender: str
    recipient: str
    create_mock: Callable[[], web.Application]
    make_client: Callable[[str], ProviderClient[Any]]


PAIRS = [
    Pair(
        Channel.MMS,
        "+12016661234",
        "+18045551234",
        sms_mock.create_app,
        lambda url: SmsProviderClient(SmsSettings(sms_provider_url=url)),
    ),
    Pair(
        Channel.EMAIL,
        "user@usehatchapp.com",
        "contact@gmail.com",
        email_mock.create_app,
        lambda url: EmailProviderClient(EmailSettings(email_provider_url=url)),
    ),
]


@pytest.mark.parametrize("pair", PAIRS, ids=lambda pair: pair.channel.value)
async def test_the_client_sends_what_its_mock_records_once(pair: Pair, aiohttp_server: AiohttpServer) -> None:
    mock_app = pair.create_mock()
    server = await aiohttp_server(mock_app)
    command = SendMessage(
        correlation_id=uuid.uuid4(),
        message_id=uuid.uuid4(),
        content=MessageContent(
            channel=pair.channel,
            from_address=pair.sender,
            to_address=pair.recipient,
            body="<b>hello</b>",
            attachments=("https://example.com/a.png",),
            timestamp=datetime(2024, 11, 1, 14, tzinfo=UTC),
        ),
    )

    async with pair.make_client(str(server.make_url(""))) as client:
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
