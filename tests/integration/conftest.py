"""The public API as a client meets it, without the channel services: the real gateway publishing to
RabbitMQ, and the real conversation_service storing in PostgreSQL and serving the reads it relays;
and, for the broker plumbing, the bus those run on."""

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from common.settings import ServiceSettings
from conversation_service.app import create_app as create_conversation_app
from conversation_service.settings import ConversationSettings
from gateway.app import create_app as create_gateway_app
from gateway.settings import GatewaySettings
from tests.integration.bus import Bus, open_bus


@pytest.fixture
async def gateway(
    aiohttp_server: Any, aiohttp_client: Any, database_url: str, amqp_url: str, broker_namespace: str
) -> TestClient:
    broker = ServiceSettings(amqp_url=amqp_url, broker_namespace=broker_namespace).model_dump(exclude_unset=True)
    conversation = await aiohttp_server(
        create_conversation_app(ConversationSettings(**broker, database_url=database_url))
    )
    server = await aiohttp_server(
        create_gateway_app(GatewaySettings(**broker, conversation_service_url=str(conversation.make_url(""))))
    )
    return await aiohttp_client(server)


@pytest.fixture
async def bus(amqp_url: str, broker_namespace: str) -> AsyncIterator[Bus]:
    async for opened in open_bus(amqp_url, broker_namespace):
        yield opened
