"""Idempotency on the real broker and database, with replicas: two gateways (and, for webhooks, two
conversation_service consumers) in-process, every one of them a full app of its own."""

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aio_pika
import psycopg2
import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiopg.sa import create_engine

from common.accounts import DEVELOPMENT_ACCOUNT_ID
from common.broker import Topology
from common.contracts import SendMessage
from common.idempotency import CLAIM_PATH, ClaimState, KeyClaim, KeyClaimRequest
from common.settings import ServiceSettings
from conversation_service.app import create_app as create_conversation_app
from conversation_service.idempotency import IdempotencyKeyStore
from conversation_service.settings import ConversationSettings
from gateway.app import create_app as create_gateway_app
from gateway.handlers import request_fingerprint
from gateway.requests import send_request_adapter
from gateway.settings import GatewaySettings
from tests.factories import eventually, gateway_headers

pytestmark = pytest.mark.integration

SMS = {
    "from": "+12016661234",
    "to": "+18045551234",
    "type": "sms",
    "body": "text message",
    "timestamp": "2024-11-01T14:00:00Z",
}
KEY = {"Idempotency-Key": "order-42"}
# Short enough for a test to wait out the claim of a gateway that died.
CLAIM_SECONDS = 1.0

Start = Callable[..., Awaitable[Any]]


def query(database_url: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg2.connect(database_url) as connection, connection.cursor() as cursor:
        cursor.execute(sql)
        rows = cursor.fetchall() if cursor.description else []
    connection.close()
    return rows


@pytest.fixture
def broker_settings(amqp_url: str, broker_namespace: str) -> dict[str, Any]:
    return ServiceSettings(amqp_url=amqp_url, broker_namespace=broker_namespace).model_dump(exclude_unset=True)


@pytest.fixture
def claim_seconds() -> float:
    """The service's default, far above what a live request takes from claim to publish even on a loaded
    machine: a repeat waits for that request instead of taking its claim over and publishing again."""
    return float(ConversationSettings.model_fields["idempotency_claim_seconds"].default)


@pytest.fixture
async def conversation(
    aiohttp_server: Any, broker_settings: dict[str, Any], database_url: str, claim_seconds: float
) -> TestServer:
    settings = ConversationSettings(
        **broker_settings, database_url=database_url, idempotency_claim_seconds=claim_seconds
    )
    return await aiohttp_server(create_conversation_app(settings))


@pytest.fixture
def start_gateway(aiohttp_client: Any, broker_settings: dict[str, Any], conversation: TestServer) -> Start:
    """A new gateway replica each call, all sharing the one conversation_service."""

    async def start() -> TestClient:
        settings = GatewaySettings(**broker_settings, conversation_service_url=str(conversation.make_url("")))
        return await aiohttp_client(create_gateway_app(settings))

    return start


@pytest.fixture
async def published_sends(amqp_url: str, broker_namespace: str, conversation: TestServer) -> AsyncIterator[Start]:
    """How many SendMessages reached the exchange since the test began, counted by a queue of its own."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        tap = await channel.declare_queue(exclusive=True)
        await tap.bind(Topology(broker_namespace).exchange, "outbound.#")

        async def count() -> int:
            declared = await channel.declare_queue(tap.name, passive=True)
            return declared.declaration_result.message_count or 0

        yield count


def stored_messages(database_url: str) -> list[tuple[Any, ...]]:
    return query(database_url, "SELECT id, body FROM messages ORDER BY seq")


async def test_one_key_sent_at_once_to_two_replicas_is_one_message(
    start_gateway: Start, published_sends: Start, database_url: str
) -> None:
    replicas = [await start_gateway(), await start_gateway()]

    responses = await asyncio.gather(
        *(replicas[i % 2].post("/api/messages/sms", json=SMS, headers=KEY) for i in range(20))
    )

    assert [response.status for response in responses] == [202] * 20
    bodies = [await response.json() for response in responses]
    assert all(body == bodies[0] for body in bodies)
    replayed = [response.headers.get("Idempotent-Replayed") for response in responses]
    assert sorted(replayed, key=str) == [None] + ["true"] * 19
    assert await published_sends() == 1

    async def stored() -> bool:
        return len(stored_messages(database_url)) == 1

    await eventually(stored, "the message to be stored")
    assert stored_messages(database_url) == [(bodies[0]["id"], SMS["body"])]


async def test_a_restarted_gateway_still_honours_the_key(
    start_gateway: Start, published_sends: Start, database_url: str
) -> None:
    first_gateway = await start_gateway()
    first = await first_gateway.post("/api/messages/sms", json=SMS, headers=KEY)
    first_body = await first.json()
    await first_gateway.close()
    restarted = await start_gateway()

    repeat = await restarted.post("/api/messages/sms", json=SMS, headers=KEY)
    reused = await restarted.post("/api/messages/sms", json={**SMS, "body": "another message"}, headers=KEY)

    assert (first.status, repeat.status, reused.status) == (202, 202, 422)
    assert await repeat.json() == first_body
    assert repeat.headers["Idempotent-Replayed"] == "true"
    assert [detail["field"] for detail in (await reused.json())["details"]] == ["Idempotency-Key"]
    assert await published_sends() == 1


async def test_an_expired_key_is_a_new_send(start_gateway: Start, published_sends: Start, database_url: str) -> None:
    gateway = await start_gateway()
    first = await (await gateway.post("/api/messages/sms", json=SMS, headers=KEY)).json()
    query(database_url, "UPDATE idempotency_keys SET created_at = created_at - interval '25 hours'")

    again = await gateway.post("/api/messages/sms", json=SMS, headers=KEY)
    repeat = await gateway.post("/api/messages/sms", json=SMS, headers=KEY)

    assert again.status == 202
    assert "Idempotent-Replayed" not in again.headers
    second = await again.json()
    assert second["id"] != first["id"]
    assert await repeat.json() == second
    assert await published_sends() == 2

    async def both_stored() -> bool:
        return len(stored_messages(database_url)) == 2

    await eventually(both_stored, "both sends to be stored")
    assert {row[0] for row in stored_messages(database_url)} == {first["id"], second["id"]}


async def test_expired_keys_are_purged_and_live_ones_kept(start_gateway: Start, database_url: str) -> None:
    gateway = await start_gateway()
    for key in ("old-1", "old-2", "fresh"):
        response = await gateway.post("/api/messages/sms", json=SMS, headers={"Idempotency-Key": key})
        assert response.status == 202
    query(
        database_url, "UPDATE idempotency_keys SET created_at = created_at - interval '25 hours' WHERE key LIKE 'old-%'"
    )

    async with create_engine(database_url) as engine:
        store = IdempotencyKeyStore(engine, ttl_seconds=24 * 3600, claim_seconds=CLAIM_SECONDS)
        assert await store.purge_expired() == 2
        assert await store.purge_expired() == 0

    assert query(database_url, "SELECT key FROM idempotency_keys") == [("fresh",)]


@pytest.mark.parametrize("claim_seconds", [CLAIM_SECONDS])
async def test_a_claim_whose_gateway_died_before_publishing_is_taken_over(
    start_gateway: Start, published_sends: Start, conversation: TestServer
) -> None:
    gateway = await start_gateway()
    request = send_request_adapter.validate_python(SMS, context=GatewaySettings().validation_rules)
    orphan = SendMessage(
        message_id=uuid.uuid4(),
        account_id=DEVELOPMENT_ACCOUNT_ID,
        correlation_id=uuid.uuid4(),
        content=request.to_content(),
    )
    # What a gateway that died between claiming the key and publishing leaves behind.
    claim = KeyClaimRequest(
        key=KEY["Idempotency-Key"], request_fingerprint=request_fingerprint(request), command=orphan
    )
    async with gateway.session.post(
        conversation.make_url(CLAIM_PATH),
        data=claim.model_dump_json(),
        headers={"Content-Type": "application/json", **gateway_headers(account_id=None)},
    ) as claimed:
        assert KeyClaim.model_validate_json(await claimed.read()).state is ClaimState.CLAIMED

    response = await gateway.post("/api/messages/sms", json=SMS, headers=KEY)

    assert response.status == 202
    assert (await response.json())["id"] == str(orphan.message_id)
    assert response.headers["Idempotent-Replayed"] == "true"
    assert await published_sends() == 1


async def test_a_released_claim_is_taken_over_at_once_and_a_published_one_cannot_be_released(
    database_url: str,
) -> None:
    request = send_request_adapter.validate_python(SMS, context=GatewaySettings().validation_rules)
    first, repeat = (
        SendMessage(
            message_id=uuid.uuid4(),
            account_id=DEVELOPMENT_ACCOUNT_ID,
            correlation_id=uuid.uuid4(),
            content=request.to_content(),
        )
        for _ in range(2)
    )

    def claim_with(command: SendMessage) -> KeyClaimRequest:
        return KeyClaimRequest(key="order-7", request_fingerprint=request_fingerprint(request), command=command)

    async with create_engine(database_url) as engine:
        # A claim that would hold for a minute: only the release can hand it over within this test.
        store = IdempotencyKeyStore(engine, ttl_seconds=24 * 3600, claim_seconds=60)
        assert (await store.claim(claim_with(first))).state is ClaimState.CLAIMED
        assert (await store.claim(claim_with(repeat))).state is ClaimState.IN_PROGRESS
        assert await store.release(DEVELOPMENT_ACCOUNT_ID, "order-7", repeat.message_id) is False
        assert await store.release(DEVELOPMENT_ACCOUNT_ID, "order-7", first.message_id) is True

        taken_over = await store.claim(claim_with(repeat))

        assert (taken_over.state, taken_over.command) == (ClaimState.CLAIMED, first)
        assert await store.mark_published(DEVELOPMENT_ACCOUNT_ID, "order-7", first.message_id) is True
        assert await store.release(DEVELOPMENT_ACCOUNT_ID, "order-7", first.message_id) is False
        assert (await store.claim(claim_with(repeat))).state is ClaimState.PUBLISHED


def sms_webhook(provider_id: str) -> dict[str, Any]:
    return {
        "from": "+18045551234",
        "to": "+12016661234",
        "type": "sms",
        "messaging_provider_id": provider_id,
        "body": f"reply {provider_id}",
        "timestamp": "2024-11-01T14:05:00Z",
    }


def email_webhook(provider_id: str) -> dict[str, Any]:
    return {
        "from": "contact@gmail.com",
        "to": "user@usehatchapp.com",
        "xillio_id": provider_id,
        "body": f"<p>reply {provider_id}</p>",
        "timestamp": "2024-11-01T14:05:00Z",
    }


async def test_webhooks_repeated_at_once_on_every_replica_are_one_message_each(
    aiohttp_server: Any,
    start_gateway: Start,
    conversation: TestServer,
    broker_settings: dict[str, Any],
    database_url: str,
    amqp_url: str,
    broker_namespace: str,
) -> None:
    # A second consumer of the same queue: the duplicates are split between the two.
    second_consumer = await aiohttp_server(
        create_conversation_app(ConversationSettings(**broker_settings, database_url=database_url))
    )
    replicas = [await start_gateway(), await start_gateway()]
    webhooks = [("/api/webhooks/sms", sms_webhook(f"sms-{n}")) for n in range(4)]
    webhooks += [("/api/webhooks/email", email_webhook(f"email-{n}")) for n in range(2)]
    copies = 9

    responses = await asyncio.gather(
        *(replicas[copy % 2].post(path, json=payload) for copy in range(copies) for path, payload in webhooks)
    )
    assert [response.status for response in responses] == [202] * copies * len(webhooks)

    async def drained() -> bool:
        return (
            len(stored_messages(database_url)) == len(webhooks)
            and await events_waiting(amqp_url, broker_namespace) == 0
        )

    await eventually(drained, "every webhook stored and the conversation queue empty")
    # Stopped, the consumers cannot write anything after the count below.
    await second_consumer.close()
    await conversation.close()
    rows = query(database_url, "SELECT provider_message_id, count(*) FROM messages GROUP BY 1 ORDER BY 1")
    assert rows == sorted((payload.get("messaging_provider_id") or payload["xillio_id"], 1) for _, payload in webhooks)
    counts = query(database_url, "SELECT channels, message_count FROM conversations ORDER BY id")
    assert sorted(counts) == [(["email"], 2), (["sms"], 4)]


async def events_waiting(amqp_url: str, broker_namespace: str) -> int:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(Topology(broker_namespace).conversation_events.name, passive=True)
        return queue.declaration_result.message_count or 0
