"""Signed webhooks on the real broker and database, with the gateway requiring signatures (the
production profile):

- what the mock providers post (delivery receipts, and inbound messages on request) verifies at the
  gateway and is stored, with nothing quarantined;
- a webhook refused for a misconfigured secret is kept in the quarantine, listed, and stored exactly
  once by a replay after the secret is fixed, while a forged one stays in the quarantine.
"""

import argparse
import base64
import json
import time
import uuid
from typing import Any

import aio_pika
import psycopg2
import pytest
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from common.broker import Publisher, Topology
from common.contracts import Channel
from common.mock_provider import MockBehaviour
from common.settings import Profile, ServiceSettings
from common.webhook_signing import xillio_header, xillio_signature
from conversation_service.app import create_app as create_conversation_app
from conversation_service.settings import ConversationSettings
from email_service.app import create_app as create_email_app
from email_service.mock_provider import create_app as create_email_mock
from email_service.settings import EmailSettings
from gateway import quarantine
from gateway.app import create_app as create_gateway_app
from gateway.settings import GatewaySettings
from sms_service.app import create_app as create_sms_app
from sms_service.mock_provider import create_app as create_sms_mock
from sms_service.settings import SmsSettings
from tests.factories import eventually, free_ports, send_message

pytestmark = pytest.mark.integration

SMS_TOKEN = "sms-auth-token-of-the-integration-tests"
EMAIL_SECRET = "email-webhook-secret-of-the-integration-tests"
EVENTS_KEY = ec.generate_private_key(ec.SECP256R1())
EVENTS_PUBLIC_KEY = base64.b64encode(
    EVENTS_KEY.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
).decode()
FAST_RETRY = {"provider_backoff_initial_seconds": 0.01, "provider_backoff_max_seconds": 0.05}


def broker_settings(amqp_url: str, broker_namespace: str) -> dict[str, Any]:
    return ServiceSettings(amqp_url=amqp_url, broker_namespace=broker_namespace).model_dump(exclude_unset=True)


def gateway_settings(broker: dict[str, Any], conversation: TestServer, port: int, **overrides: Any) -> GatewaySettings:
    values: dict[str, Any] = {
        **broker,
        "gateway_port": port,
        "conversation_service_url": str(conversation.make_url("")),
        "public_base_url": f"http://127.0.0.1:{port}",
        "sms_webhook_auth_token": SMS_TOKEN,
        "email_webhook_secret": EMAIL_SECRET,
        "email_events_public_key": EVENTS_PUBLIC_KEY,
    }
    # Production's start-up checks (the test broker's guest password...) are not what is tested here.
    return GatewaySettings(**{**values, **overrides}).model_copy(update={"messaging_profile": Profile.PRODUCTION})


async def gateway_on_its_port(aiohttp_server: Any, settings: GatewaySettings) -> TestServer:
    return await aiohttp_server(create_gateway_app(settings), port=settings.gateway_port)


def stored(database_url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg2.connect(database_url) as connection, connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    connection.close()
    return rows


def status_of(database_url: str, message_id: uuid.UUID) -> str | None:
    rows = stored(database_url, "SELECT status FROM messages WHERE id = %s", str(message_id))
    return rows[0][0] if rows else None


def inbound_count(database_url: str, provider_message_id: str) -> int:
    rows = stored(database_url, "SELECT count(*) FROM messages WHERE provider_message_id = %s", provider_message_id)
    return int(rows[0][0])


async def quarantine_depth(amqp_url: str, namespace: str) -> int:
    async with await aio_pika.connect(amqp_url) as connection:
        channel = await connection.channel()
        queue = await channel.get_queue(Topology(namespace).quarantine.name)
        assert queue.declaration_result is not None
        return queue.declaration_result.message_count or 0


@pytest.fixture
async def conversation(aiohttp_server: Any, database_url: str, amqp_url: str, broker_namespace: str) -> TestServer:
    broker = broker_settings(amqp_url, broker_namespace)
    return await aiohttp_server(create_conversation_app(ConversationSettings(**broker, database_url=database_url)))


@pytest.fixture
def free_port() -> int:
    """Known before the gateway starts, since its PUBLIC_BASE_URL names it."""
    [port] = free_ports(1)
    return port


async def test_what_the_mocks_sign_verifies_at_a_gateway_that_requires_signatures(
    aiohttp_server: Any,
    aiohttp_client: Any,
    database_url: str,
    amqp_url: str,
    broker_namespace: str,
    conversation: TestServer,
    free_port: int,
) -> None:
    broker = broker_settings(amqp_url, broker_namespace)
    gateway = await gateway_on_its_port(aiohttp_server, gateway_settings(broker, conversation, free_port))
    quick_receipts = MockBehaviour(delivery_delay_seconds=0.05, receipt_backoff_seconds=0.05)
    sms_mock = await aiohttp_server(
        create_sms_mock(
            quick_receipts, auth_token=SMS_TOKEN, inbound_webhook_url=str(gateway.make_url("/api/webhooks/sms"))
        )
    )
    email_mock = await aiohttp_server(
        create_email_mock(
            quick_receipts,
            event_webhook_url=str(gateway.make_url("/api/webhooks/email/status")),
            events_private_key=EVENTS_KEY,
            webhook_secret=EMAIL_SECRET,
            inbound_webhook_url=str(gateway.make_url("/api/webhooks/email")),
        )
    )
    sms_callback = str(gateway.make_url("/api/webhooks/sms/status"))
    await aiohttp_server(
        create_sms_app(
            SmsSettings(
                **broker,
                **FAST_RETRY,
                sms_provider_url=str(sms_mock.make_url("")),
                sms_status_callback_url=sms_callback,
            )
        )
    )
    await aiohttp_server(
        create_email_app(EmailSettings(**broker, **FAST_RETRY, email_provider_url=str(email_mock.make_url(""))))
    )

    # Sends put on the bus as the gateway would, so that no API key is needed: the receipts are the point.
    sends = [send_message(Channel.SMS), send_message(Channel.EMAIL)]
    async with await aio_pika.connect(amqp_url) as connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        publisher = Publisher(await channel.get_exchange(Topology(broker_namespace).exchange))
        for send in sends:
            await publisher.publish(send)
    for send in sends:

        async def delivered(message_id: uuid.UUID = send.message_id) -> bool:
            return status_of(database_url, message_id) == "delivered"

        await eventually(delivered, f"{send.content.channel} send {send.message_id} delivered by its signed receipt")

    sms_client, email_client = await aiohttp_client(sms_mock), await aiohttp_client(email_mock)
    inbound = {
        "sms": await sms_client.post(
            "/simulate/inbound",
            json={"from": "+18045551234", "to": "+12016661234", "type": "sms", "body": "a signed hello"},
        ),
        "email": await email_client.post(
            "/simulate/inbound",
            json={"from": "contact@gmail.com", "to": "user@usehatchapp.com", "body": "<p>a signed hello</p>"},
        ),
    }
    for channel_name, response in inbound.items():
        assert response.status == 200, await response.text()
        answer = await response.json()
        assert answer["webhook_status"] == 202, (channel_name, answer)
        provider_id = answer["posted"]["messaging_provider_id" if channel_name == "sms" else "xillio_id"]

        async def stored_once(provider_message_id: str = provider_id) -> bool:
            return inbound_count(database_url, provider_message_id) == 1

        await eventually(stored_once, f"the simulated inbound {channel_name} stored")
    assert await quarantine_depth(amqp_url, broker_namespace) == 0


def xillio_post(document: dict[str, Any], secret: str) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(document).encode()
    timestamp = str(int(time.time()))
    signature = xillio_header(timestamp, [xillio_signature(secret, timestamp, body)])
    return body, {"Content-Type": "application/json", "X-Xillio-Signature": signature}


def inbound_email(xillio_id: str) -> dict[str, Any]:
    return {
        "from": "contact@gmail.com",
        "to": "user@usehatchapp.com",
        "xillio_id": xillio_id,
        "body": "<p>kept, not lost</p>",
        "attachments": [],
        "timestamp": "2024-11-01T14:00:00Z",
    }


async def test_a_refused_webhook_is_quarantined_and_a_replay_stores_it_once_the_secret_is_fixed(
    aiohttp_server: Any,
    aiohttp_client: Any,
    database_url: str,
    amqp_url: str,
    broker_namespace: str,
    conversation: TestServer,
    free_port: int,
) -> None:
    broker = broker_settings(amqp_url, broker_namespace)
    misconfigured = gateway_settings(broker, conversation, free_port, email_webhook_secret="not-what-xillio-signs-with")
    gateway = await aiohttp_client(await gateway_on_its_port(aiohttp_server, misconfigured))

    real_body, real_headers = xillio_post(inbound_email("xillio-real-1"), EMAIL_SECRET)
    forged_body, forged_headers = xillio_post(inbound_email("xillio-forged-1"), "a forger's guess")
    for body, headers in ((real_body, real_headers), (forged_body, forged_headers)):
        response = await gateway.post("/api/webhooks/email", data=body, headers=headers)
        assert response.status == 403, await response.text()
        assert (await response.json())["details"][0]["field"] == "X-Xillio-Signature"
    assert await quarantine_depth(amqp_url, broker_namespace) == 2

    listing = await quarantine.run(argparse.Namespace(command="list", limit=None), misconfigured)
    assert listing.startswith("2 quarantined webhook(s)")
    assert listing.count("no v1 signature matches") == 2
    assert f"POST http://127.0.0.1:{free_port}/api/webhooks/email" in listing
    assert "xillio-real-1" in listing and "xillio-forged-1" in listing
    assert await quarantine_depth(amqp_url, broker_namespace) == 2, "listing takes nothing off"

    fixed = gateway_settings(broker, conversation, free_port)
    first = await quarantine.run(argparse.Namespace(command="replay", limit=None), fixed)
    assert first.startswith("replayed 1, left 1 in quarantine"), first

    async def real_stored() -> bool:
        return inbound_count(database_url, "xillio-real-1") == 1

    await eventually(real_stored, "the replayed webhook stored")
    second = await quarantine.run(argparse.Namespace(command="replay", limit=None), fixed)
    assert second.startswith("replayed 0, left 1 in quarantine"), second
    assert inbound_count(database_url, "xillio-forged-1") == 0
    assert await quarantine_depth(amqp_url, broker_namespace) == 1
    remaining = await quarantine.run(argparse.Namespace(command="list", limit=None), fixed)
    assert "xillio-forged-1" in remaining and "xillio-real-1" not in remaining
