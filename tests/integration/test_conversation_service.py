"""The whole conversation service on the real RabbitMQ and PostgreSQL: events in over the bus, JSON out."""

import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import aio_pika
import psycopg2
import pytest
from aio_pika.abc import AbstractQueue
from aiohttp import web
from aiohttp.test_utils import TestClient

from common.broker import BROKER, Broker, Topology
from common.contracts import Channel, MessageStatus
from conversation_service.app import create_app
from conversation_service.settings import ConversationSettings
from tests.factories import (
    START,
    delivery_reported,
    eventually,
    gateway_headers,
    message_received,
    send_message,
    status_changed,
)
from tests.proxy import PauseMode, ProxyFactory

pytestmark = pytest.mark.integration


def count_messages(database_url: str, message_id: uuid.UUID) -> int:
    with psycopg2.connect(database_url) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM messages WHERE id = %s", (str(message_id),))
        (count,) = cursor.fetchone()
    connection.close()
    return count


@pytest.fixture
async def client(
    aiohttp_client: Callable[[web.Application], Awaitable[TestClient]],
    database_url: str,
    amqp_url: str,
    broker_namespace: str,
) -> TestClient:
    settings = ConversationSettings(
        database_url=database_url,
        amqp_url=amqp_url,
        broker_namespace=broker_namespace,
        default_page_size=2,
        shutdown_grace_seconds=2.0,
    )
    return await aiohttp_client(create_app(settings), headers=gateway_headers())


async def test_the_service_is_ready_once_broker_and_database_are_up(client: TestClient) -> None:
    response = await client.get("/readyz")

    assert response.status == 200
    assert await response.json() == {"status": "ready", "checks": {"database": True, "broker": True}}


async def test_a_published_event_is_stored_once_however_often_it_is_delivered(
    client: TestClient, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="conversation_service.handlers")
    publisher = client.app[BROKER].publisher
    event = message_received(provider_message_id="message-1")

    await publisher.publish(event)
    await eventually(lambda: _stored(database_url, event.message_id), "the message is stored")

    await publisher.publish(event)
    await eventually(
        lambda: _logged(caplog, "message event changed nothing", event.message_id), "the replay is handled"
    )
    assert count_messages(database_url, event.message_id) == 1
    conversations = await (await client.get("/conversations")).json()
    assert [c["message_count"] for c in conversations["conversations"]] == [1]


async def test_a_malformed_message_is_dead_lettered_and_the_next_one_still_stored(
    client: TestClient, database_url: str, broker_namespace: str
) -> None:
    broker = client.app[BROKER]
    exchange = await broker.publish_channel.get_exchange(broker.topology.exchange)
    good = message_received(provider_message_id="message-after-the-bad-one")

    await exchange.publish(
        aio_pika.Message(b"{not json", delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key="inbound.sms"
    )
    await broker.publisher.publish(good)

    await eventually(lambda: _stored(database_url, good.message_id), "the good message is stored")
    bodies = await dead_letters_once(
        broker, broker_namespace, lambda bodies: b"{not json" in bodies, "the malformed message"
    )
    assert bodies == [b"{not json"]


async def test_the_read_api_serves_what_the_bus_delivered(client: TestClient, database_url: str) -> None:
    publisher = client.app[BROKER].publisher
    command = send_message(
        Channel.MMS, body="a picture", attachments=("https://example.com/a.png",), at=START + timedelta(minutes=5)
    )
    replies = [message_received(provider_message_id=f"message-{i}") for i in range(2)]
    for event in [*replies, command]:
        await publisher.publish(event)
    await eventually(lambda: _stored(database_url, command.message_id), "the send is stored")
    for reply in replies:
        await eventually(lambda reply=reply: _stored(database_url, reply.message_id), "the replies are stored")

    listing = await client.get("/conversations")
    first_page = await client.get("/conversations/1/messages")
    first = await first_page.json()
    second = await (await client.get("/conversations/1/messages", params={"cursor": first["next_cursor"]})).json()
    one = await client.get(f"/messages/{command.message_id}")

    (conversation,) = (await listing.json())["conversations"]
    assert conversation["id"] == 1
    assert conversation["participants"] == ["+12016661234", "+18045551234"]
    assert conversation["channels"] == ["mms", "sms"]
    assert conversation["message_count"] == 3
    assert conversation["last_message"]["id"] == str(command.message_id)
    assert conversation["last_message_at"] == "2024-11-01T14:05:00Z"
    assert first["conversation_id"] == 1
    assert [m["body"] for m in first["messages"] + second["messages"]] == [
        "text message",
        "text message",
        "a picture",
    ]
    assert second["next_cursor"] is None
    message = await one.json()
    assert one.status == 200
    assert {key: message[key] for key in ("direction", "type", "from", "to", "status", "attachments")} == {
        "direction": "outbound",
        "type": "mms",
        "from": "+12016661234",
        "to": "+18045551234",
        "status": "queued",
        "attachments": ["https://example.com/a.png"],
    }
    assert message["timestamp"] == "2024-11-01T14:05:00Z"
    assert message["created_at"].endswith("Z")


async def test_a_receipt_that_overtakes_its_send_shows_once_the_send_is_stored(
    client: TestClient, database_url: str
) -> None:
    publisher = client.app[BROKER].publisher
    command = send_message()
    sent = status_changed(command, MessageStatus.SENT, attempts=2, provider_message_id="SM9")
    failed = delivery_reported(command, MessageStatus.FAILED, provider_message_id="SM9", error="error 30003")

    await publisher.publish(failed)
    await eventually(lambda: _waiting(database_url, command.message_id), "the receipt waits for its send")
    assert count_messages(database_url, command.message_id) == 0
    for event in (command, sent):
        await publisher.publish(event)
    await eventually(
        lambda: _history_is(database_url, command.message_id, {"queued", "sent", "failed"}), "the whole history"
    )

    message = await (await client.get(f"/messages/{command.message_id}")).json()
    assert {key: message[key] for key in ("status", "attempts", "provider", "provider_message_id", "last_error")} == {
        "status": "failed",
        "attempts": 2,
        "provider": "sms-provider",
        "provider_message_id": "SM9",
        "last_error": "error 30003",
    }
    assert [(entry["attempts"], entry["error"]) for entry in message["history"]] == [
        (None, None),
        (2, None),
        (None, "error 30003"),
    ]
    (listed,) = (await (await client.get("/conversations/1/messages")).json())["messages"]
    assert "history" not in listed
    assert listed["status"] == "failed"


async def test_unknown_conversation_is_a_404(client: TestClient) -> None:
    response = await client.get("/conversations/1/messages")

    assert response.status == 404
    assert (await response.json())["error"] == "not_found"


@pytest.mark.parametrize("conversation_id", ["abc", "0", "99999999999999999999"])
async def test_a_conversation_id_that_is_not_a_positive_bigint_is_a_422(
    client: TestClient, conversation_id: str
) -> None:
    response = await client.get(f"/conversations/{conversation_id}/messages")

    assert response.status == 422
    body: dict[str, Any] = await response.json()
    assert [detail["field"] for detail in body["details"]] == ["conversation_id"]


async def _history_is(database_url: str, message_id: uuid.UUID, statuses: set[str]) -> bool:
    with psycopg2.connect(database_url) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT status FROM message_status_history WHERE message_id = %s", (str(message_id),))
        recorded = {status for (status,) in cursor.fetchall()}
    connection.close()
    return recorded == statuses


async def _waiting(database_url: str, message_id: uuid.UUID) -> bool:
    with psycopg2.connect(database_url) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pending_receipts WHERE message_id = %s", (str(message_id),))
        (waiting,) = cursor.fetchone()
    connection.close()
    return waiting == 1


async def _stored(database_url: str, message_id: uuid.UUID) -> bool:
    return count_messages(database_url, message_id) == 1


async def _logged(caplog: pytest.LogCaptureFixture, event: str, message_id: uuid.UUID) -> bool:
    return any(
        record.getMessage() == event and record.__dict__.get("message_id") == str(message_id)
        for record in caplog.records
    )


async def test_events_wait_out_a_database_outage_unacked_and_are_stored_once_it_is_back(
    aiohttp_client: Callable[[web.Application], Awaitable[TestClient]],
    proxy_to: ProxyFactory,
    database_url: str,
    amqp_url: str,
    broker_namespace: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="conversation_service.database")
    proxy, proxied_database_url = await proxy_to(database_url)
    settings = ConversationSettings(
        database_url=proxied_database_url,
        amqp_url=amqp_url,
        broker_namespace=broker_namespace,
        # Two deliveries and a message is dead-lettered: giving up on the database even twice would show.
        delivery_limit=2,
        database_retry_max_interval_seconds=0.05,
        shutdown_grace_seconds=1.0,
    )
    client = await aiohttp_client(create_app(settings))
    publisher = client.app[BROKER].publisher
    events = [message_received(provider_message_id=f"during-outage-{i}") for i in range(3)]

    proxy.pause(PauseMode.REFUSE)
    for event in events:
        await publisher.publish(event)
    await eventually(lambda: _retried(caplog, 32), "the writes to keep retrying well past a few tries")
    assert (await client.get("/readyz")).status == 503
    proxy.resume()

    for event in events:
        await eventually(lambda event=event: _stored(database_url, event.message_id), "every event is stored")
    assert (await client.get("/readyz")).status == 200
    dead_letters = await _dead_letter_queue(client.app[BROKER], broker_namespace)
    assert await dead_letters.get(no_ack=True, fail=False) is None


async def _retried(caplog: pytest.LogCaptureFixture, attempts: int) -> bool:
    return any(record.__dict__.get("attempt", 0) >= attempts for record in caplog.records)


async def test_reads_answer_for_the_account_the_gateway_names(client: TestClient, database_url: str) -> None:
    command = send_message()
    await client.app[BROKER].publisher.publish(command)
    await eventually(lambda: _stored(database_url, command.message_id), "the send is stored")
    stranger = gateway_headers(account_id=uuid.uuid4())

    listing = await client.get("/conversations", headers=stranger)
    conversation = await client.get("/conversations/1/messages", headers=stranger)
    message = await client.get(f"/messages/{command.message_id}", headers=stranger)

    assert (listing.status, await listing.json()) == (200, {"conversations": [], "next_cursor": None})
    assert (conversation.status, message.status) == (404, 404)
    assert (await client.get(f"/messages/{command.message_id}")).status == 200


async def test_a_poison_event_in_a_batch_is_dead_lettered_alone_and_its_neighbours_are_stored(
    aiohttp_client: Callable[[web.Application], Awaitable[TestClient]],
    database_url: str,
    amqp_url: str,
    broker_namespace: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="conversation_service.write_batches")
    settings = ConversationSettings(
        database_url=database_url,
        amqp_url=amqp_url,
        broker_namespace=broker_namespace,
        # Long enough a wait that all of them share the first batch; two deliveries and it is dead-lettered.
        write_batch_size=16,
        write_batch_wait_seconds=1.0,
        delivery_limit=2,
        shutdown_grace_seconds=2.0,
    )
    client = await aiohttp_client(create_app(settings))
    broker = client.app[BROKER]
    # PostgreSQL text cannot hold a NUL: the driver refuses the whole statement it is part of.
    poison = message_received(provider_message_id="poison", body="nul \x00 inside")
    neighbours = [message_received(provider_message_id=f"neighbour-{i}") for i in range(7)]
    for event in [*neighbours[:3], poison, *neighbours[3:]]:
        await broker.publisher.publish(event)

    for event in neighbours:
        await eventually(lambda event=event: _stored(database_url, event.message_id), "every neighbour is stored")
    bodies = await dead_letters_once(broker, broker_namespace, bool, "the poison event")
    assert [str(poison.message_id).encode() in body for body in bodies] == [True]
    assert any(record.__dict__.get("batch_size") == 8 for record in caplog.records)
    assert count_messages(database_url, poison.message_id) == 0
    assert await (await _dead_letter_queue(broker, broker_namespace)).get(no_ack=True, fail=False) is None


async def _dead_letter_queue(broker: Broker, broker_namespace: str) -> AbstractQueue:
    return await broker.consume_channel.get_queue(Topology(broker_namespace).conversation_events.dead_letter_name)


async def dead_letters_once(
    broker: Broker, broker_namespace: str, enough: Callable[[list[bytes]], bool], what: str
) -> list[bytes]:
    """The bodies taken off the conversation queue's dead letters until `enough` of them are."""
    queue = await _dead_letter_queue(broker, broker_namespace)
    bodies: list[bytes] = []

    async def dead_lettered() -> bool:
        message = await queue.get(no_ack=True, fail=False)
        if message is not None:
            bodies.append(message.body)
        return enough(bodies)

    await eventually(dead_lettered, f"{what} reaches the dead-letter queue")
    return bodies
