"""Counters that move exactly as the messages do: post N, read N more on the gateway, the SMS service
and conversation_service, each scraped at its own /metrics on the real broker and database."""

import asyncio
from typing import Any

import aio_pika
import pytest
from aiohttp.test_utils import TestClient
from prometheus_client import generate_latest

from common.broker import BROKER, Consumer, Publisher, QueueArguments, Topology, declare_topology
from common.contracts import MessageEvent, message_event_adapter
from common.metrics import Metrics
from common.mock_provider import MockBehaviour
from common.settings import ServiceSettings
from conversation_service.app import create_app as create_conversation_app
from conversation_service.settings import ConversationSettings
from gateway.app import create_app as create_gateway_app
from gateway.settings import GatewaySettings
from sms_service.app import create_app as create_sms_app
from sms_service.mock_provider import TwilioMock
from sms_service.mock_provider import create_app as create_sms_mock
from sms_service.settings import SmsSettings
from tests.factories import SMS_REQUEST, eventually, message_received
from tests.prometheus import Samples, parse, scrape, value
from tests.proxy import ProxyFactory

pytestmark = pytest.mark.integration

SENDS = 7
WEBHOOKS = 4


@pytest.fixture
async def stack(
    aiohttp_server: Any, aiohttp_client: Any, database_url: str, amqp_url: str, broker_namespace: str
) -> dict[str, TestClient]:
    broker = ServiceSettings(amqp_url=amqp_url, broker_namespace=broker_namespace).model_dump(exclude_unset=True)
    conversation = await aiohttp_server(
        create_conversation_app(ConversationSettings(**broker, database_url=database_url))
    )
    gateway = await aiohttp_server(
        create_gateway_app(GatewaySettings(**broker, conversation_service_url=str(conversation.make_url(""))))
    )
    mock = await aiohttp_server(create_sms_mock(MockBehaviour(delivery_delay_seconds=0.05)))
    sms = await aiohttp_server(
        create_sms_app(
            SmsSettings(
                **broker,
                provider_backoff_initial_seconds=0.01,
                sms_provider_url=str(mock.make_url("")),
                sms_status_callback_url=str(gateway.make_url("/api/webhooks/sms/status")),
            )
        )
    )
    return {
        "gateway": await aiohttp_client(gateway),
        "conversation_service": await aiohttp_client(conversation),
        "sms_service": await aiohttp_client(sms),
        "sms_provider": await aiohttp_client(mock),
    }


async def scrape_all(stack: dict[str, TestClient]) -> dict[str, Samples]:
    names = list(stack)
    return dict(zip(names, await asyncio.gather(*(scrape(stack[name]) for name in names)), strict=True))


def moved(before: dict[str, Samples], after: dict[str, Samples], process: str, name: str, **labels: str) -> float:
    return value(after[process], name, labels) - value(before[process], name, labels)


async def test_n_messages_posted_move_the_counters_of_every_process_by_n(stack: dict[str, TestClient]) -> None:
    gateway = stack["gateway"]
    # A first message through the whole pipeline, so that every series exists and every process is warm.
    first = await gateway.post("/api/messages/sms", json=SMS_REQUEST)
    assert first.status == 202
    first_id = (await first.json())["id"]

    async def delivered(message_id: str) -> bool:
        response = await gateway.get(f"/api/messages/{message_id}")
        return response.status == 200 and (await response.json())["status"] == "delivered"

    await eventually(lambda: delivered(first_id), "the first message delivered", timeout=30)
    before = await scrape_all(stack)

    sends = [
        await gateway.post("/api/messages/sms", json={**SMS_REQUEST, "body": f"send {index}"}) for index in range(SENDS)
    ]
    webhooks = [
        await gateway.post(
            "/api/webhooks/sms",
            json={
                "from": "+18045551234",
                "to": "+12016661234",
                "type": "sms",
                "messaging_provider_id": f"metrics-{index}",
                "body": f"reply {index}",
            },
        )
        for index in range(WEBHOOKS)
    ]
    assert [r.status for r in sends + webhooks] == [202] * (SENDS + WEBHOOKS)
    send_ids = [(await r.json())["id"] for r in sends]
    for message_id in send_ids:
        await eventually(lambda message_id=message_id: delivered(message_id), "every send delivered", timeout=30)

    async def settled() -> dict[str, Samples] | None:
        after = await scrape_all(stack)
        stored = moved(before, after, "conversation_service", "messaging_events_stored_total", **RECEIPT_STORED)
        return after if stored >= SENDS else None

    after = await eventually(settled, "every receipt stored", timeout=30)

    def at(process: str, name: str, **labels: str) -> float:
        return moved(before, after, process, name, **labels)

    assert at("gateway", "messaging_messages_accepted_total", channel="sms", direction="outbound") == SENDS
    assert at("gateway", "messaging_messages_accepted_total", channel="sms", direction="inbound") == WEBHOOKS
    assert at("gateway", "http_requests_total", method="POST", route="/api/messages/sms", status="202") == SENDS
    assert at("gateway", "http_requests_total", method="POST", route="/api/webhooks/sms", status="202") == WEBHOOKS
    assert at("gateway", "messaging_messages_delivered_total", channel="sms") == SENDS
    assert at("sms_service", "messaging_messages_sent_total", channel="sms") == SENDS
    assert at("sms_service", "messaging_provider_attempts_total", outcome="accepted") == SENDS
    assert at("sms_service", "messaging_consumer_deliveries_total", queue=queue(stack, "sms"), outcome="acked") == SENDS
    assert at("sms_service", "messaging_consumer_in_flight", queue=queue(stack, "sms")) == 0
    provider_posts = [
        moved(before, after, "sms_provider", name, **dict(labels))
        for name, labels in after["sms_provider"]
        if name == "http_requests_total" and ("route", TwilioMock.send_path) in labels
    ]
    assert sum(provider_posts) == SENDS

    stored = "messaging_events_stored_total"
    assert at("conversation_service", stored, event="outbound", channel="sms", outcome="changed") == SENDS
    assert at("conversation_service", stored, event="inbound", channel="sms", outcome="changed") == WEBHOOKS
    assert at("conversation_service", stored, event="status", channel="sms", outcome="changed") == SENDS
    assert at("conversation_service", stored, **RECEIPT_STORED) == SENDS
    # Every message event the gateway or the SMS service published, acked once by conversation_service.
    events = queue(stack, "conversation")
    acked = at("conversation_service", "messaging_consumer_deliveries_total", queue=events, outcome="acked")
    assert acked == SENDS * 3 + WEBHOOKS
    assert at("conversation_service", "messaging_dead_letters_total", queue=events, reason="contract") == 0
    assert value(after["conversation_service"], "messaging_database_retries_total", {"operation": "write"}) == 0
    assert value(after["gateway"], "messaging_broker_reconnects_total") == 0


RECEIPT_STORED = {"event": "receipt", "channel": "sms", "outcome": "changed"}


def queue(stack: dict[str, TestClient], which: str) -> str:
    topology = stack["gateway"].server.app[BROKER].topology
    return (topology.sms_outbound if which == "sms" else topology.conversation_events).name


async def test_a_consumer_counts_requeues_redeliveries_and_dead_letters_by_why(
    amqp_url: str, broker_namespace: str
) -> None:
    metrics = Metrics()
    topology = Topology(broker_namespace)
    events = topology.conversation_events.name
    dead = {reason: {"queue": events, "reason": reason} for reason in ("handler", "contract")}

    async def failing(event: MessageEvent) -> None:
        raise RuntimeError("database unavailable")

    async with await aio_pika.connect_robust(amqp_url) as connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await declare_topology(
            channel, topology, QueueArguments(delivery_limit=2, max_length=ServiceSettings().queue_max_length)
        )
        queue = await channel.get_queue(events)
        parse_event = message_event_adapter.validate_json
        consumer = Consumer(queue, parse_event, failing, delivery_limit=2, redelivery_delay=0.01, metrics=metrics)
        await consumer.start()
        try:
            await Publisher(exchange).publish(message_received())
            await exchange.publish(aio_pika.Message(b'{"kind": "message_received"}'), routing_key="inbound.sms")

            async def both_dead() -> Samples | None:
                samples = parse(generate_latest(metrics.registry).decode())
                parked = [value(samples, "messaging_dead_letters_total", labels) for labels in dead.values()]
                return samples if all(parked) else None

            samples = await eventually(both_dead, "both messages dead-lettered")
        finally:
            await consumer.stop(grace_seconds=1)

    deliveries = "messaging_consumer_deliveries_total"
    # Delivered three times in all (the limit of 2 redeliveries, then its last): requeued twice, then parked.
    assert value(samples, deliveries, {"queue": events, "outcome": "requeued"}) == 2
    assert value(samples, deliveries, {"queue": events, "outcome": "dead_lettered"}) == 2
    assert value(samples, deliveries, {"queue": events, "outcome": "acked"}) == 0
    assert value(samples, "messaging_consumer_redeliveries_total", {"queue": events}) == 2
    assert value(samples, "messaging_dead_letters_total", dead["handler"]) == 1
    assert value(samples, "messaging_dead_letters_total", dead["contract"]) == 1
    assert value(samples, "messaging_consumer_in_flight", {"queue": events}) == 0


async def test_a_lost_broker_connection_and_a_lost_database_are_counted_once_they_retry(
    proxy_to: ProxyFactory, aiohttp_client: Any, database_url: str, amqp_url: str, broker_namespace: str
) -> None:
    # `proxy_to` first, so that the proxies outlive the app's connections through them.
    broker_proxy, proxied_amqp = await proxy_to(amqp_url)
    database_proxy, proxied_database = await proxy_to(database_url)
    settings = ConversationSettings(
        amqp_url=proxied_amqp,
        broker_namespace=broker_namespace,
        database_url=proxied_database,
        database_retry_max_interval_seconds=0.1,
        # Paused by a check of the database that came before the event did, the consumer would never
        # take the event, and nothing would be written to retry.
        consumer_pause_check_seconds=3600,
    )
    conversation = await aiohttp_client(create_conversation_app(settings))

    async def ready() -> bool:
        return (await conversation.get("/readyz")).status == 200

    broker_proxy.pause()
    broker_proxy.resume()

    # One for each of its connections, the publishing one and the consuming one.
    async def reconnected() -> bool:
        return value(await scrape(conversation), "messaging_broker_reconnects_total") == 2 and await ready()

    await eventually(reconnected, "the broker connection made again, and counted")

    database_proxy.pause()
    event = message_received()
    async with await aio_pika.connect_robust(amqp_url) as connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(Topology(broker_namespace).exchange)
        await Publisher(exchange).publish(event)

    async def retrying() -> bool:
        return value(await scrape(conversation), "messaging_database_retries_total", {"operation": "write"}) >= 2

    await eventually(retrying, "the write retried while the database is away")
    database_proxy.resume()
    stored_inbound = {"event": "inbound", "channel": "sms", "outcome": "changed"}

    async def stored() -> bool:
        return value(await scrape(conversation), "messaging_events_stored_total", stored_inbound) == 1

    await eventually(stored, "the event stored once the database is back")
    assert value(await scrape(conversation), "messaging_broker_reconnects_total") == 2
