"""Backpressure on real processes: a full queue is a quick 503 at the gateway, never a 202 nor a wait for
the publish timeout, and what was accepted before lands once the consumers return; a database outage
longer than the broker's consumer_timeout costs no delivery and parks nothing."""

import time
from pathlib import Path

import pytest

from common.broker import PUBLISH_TIMEOUT_SECONDS, QUEUE_FULL_RETRY_AFTER_SECONDS, Topology
from tests.factories import eventually
from tests.faults.harness import Harness
from tests.faults.load import Load, accepted_webhook_keys, assert_exactly_once, settled, sms_webhooks
from tests.faults.rabbit_nodes import rabbit_nodes
from tests.proxy import ProxyFactory

pytestmark = [pytest.mark.slow, pytest.mark.integration]

QUEUE_MAX_LENGTH = 20


async def test_a_full_queue_is_a_quick_503_and_what_was_accepted_lands_once(harness: Harness) -> None:
    harness.base_env["QUEUE_MAX_LENGTH"] = str(QUEUE_MAX_LENGTH)
    await harness.start(["conversation_service", "gateway"])
    warm_up, *requests = sms_webhooks(QUEUE_MAX_LENGTH + 11)
    # The gateway learns from conversation_service who owns the number the webhooks are sent to, and
    # keeps that answer through conversation_service's absence, as for a provider posting all along.
    async with harness.session.post(f"{harness.gateway_url}{warm_up.path}", json=warm_up.payload) as response:
        assert response.status == 202
    assert warm_up.key is not None
    await settled(harness, {warm_up.key}, set())
    # The consumers stop: every accepted webhook waits on the queue until it is full.
    code, _ = await harness["conversation_service"].terminate()
    assert code == 0

    answers: list[tuple[int, float, str | None, dict[str, object]]] = []
    for request in requests:
        started = time.monotonic()
        async with harness.session.post(f"{harness.gateway_url}{request.path}", json=request.payload) as response:
            body = await response.json()
            answers.append((response.status, time.monotonic() - started, response.headers.get("Retry-After"), body))
    statuses = [status for status, *_ in answers]

    first_refusal = statuses.index(503)
    # A quorum queue's limit is soft by one: it refuses once it is over.
    assert first_refusal in (QUEUE_MAX_LENGTH, QUEUE_MAX_LENGTH + 1), statuses
    assert set(statuses[:first_refusal]) == {202}
    assert set(statuses[first_refusal:]) == {503}, "a 202 after the queue was full"
    refusals = answers[first_refusal:]
    slowest = max(seconds for _, seconds, _, _ in refusals)
    assert slowest < PUBLISH_TIMEOUT_SECONDS / 5, f"a refusal took {slowest:.2f}s"
    assert {retry_after for _, _, retry_after, _ in refusals} == {str(int(QUEUE_FULL_RETRY_AFTER_SECONDS))}
    assert refusals[0][3] == {"error": "service_unavailable", "message": "the message queue is full; retry later"}
    depths = await harness.queue_depths()
    assert depths[Topology(harness.namespace).conversation_events.name] == first_refusal

    await harness["conversation_service"].restart(harness.session)
    accepted = {request.key for request in [warm_up, *requests[:first_refusal]] if request.key}
    report = await settled(harness, accepted, set())
    assert_exactly_once(report, accepted, set())
    assert sum(report.rows_by_provider_id.values()) == first_refusal + 1
    await harness.drained()
    print(f"\nqueue of {QUEUE_MAX_LENGTH}: {first_refusal} accepted, then 503 in at most {slowest * 1000:.0f} ms")


# The broker takes back a delivery held unacked past its consumer_timeout (30 minutes by default; here
# a node of the test's own, with 5 s) by closing the channel, and counts a delivery. With a delivery
# limit of 1 the second such return dead-letters the event: an outage of several consumer_timeouts
# parks every event the consumer held unless it paused and handed them back uncounted. The consumer
# notices the outage within about 3 s (a check a second, each given 2 s), so 5 s leaves it room.
CONSUMER_TIMEOUT_MS = 5000
HOLD_SECONDS = 1.0
OUTAGE_SECONDS = 4 * CONSUMER_TIMEOUT_MS / 1000


async def test_a_database_outage_past_the_consumer_timeout_costs_no_delivery(
    harness: Harness, proxy_to: ProxyFactory, tmp_path: Path
) -> None:
    async with rabbit_nodes(tmp_path / "rabbitmq", 1, consumer_timeout_ms=CONSUMER_TIMEOUT_MS) as [node]:
        harness.amqp_url = node.url
        harness.base_env.update(AMQP_URL=node.url, DELIVERY_LIMIT="1", CONSUMER_HOLD_SECONDS=str(HOLD_SECONDS))
        database_proxy, proxied_database_url = await proxy_to(harness.database_url)
        overrides = {"DATABASE_URL": proxied_database_url, "DATABASE_RETRY_MAX_INTERVAL_SECONDS": "0.5"}
        await harness.start(["conversation_service", "gateway"], {"conversation_service": overrides})
        conversation_service = harness["conversation_service"]
        queues = Topology(harness.namespace).conversation_events

        # Cut off mid-stream, so that the consumer has deliveries in hand when its writes start failing.
        load = Load(harness.session, harness.gateway_url, sms_webhooks(600), concurrency=16).start()
        await eventually(lambda: _stored_at_least(harness, 30), "conversation_service storing the stream", timeout=60)
        database_proxy.pause()
        outage_started = time.monotonic()
        answers = await load.finished()
        assert [a.status for a in answers if not a.accepted] == [], "the gateway must not need the database"
        keys = accepted_webhook_keys(answers)

        async def outage_over() -> bool:
            depths = await harness.queue_depths()
            assert depths[queues.dead_letter_name] == 0, f"events parked during the outage: {depths}"
            return time.monotonic() - outage_started >= OUTAGE_SECONDS

        await eventually(outage_over, "the outage has lasted", timeout=OUTAGE_SECONDS + 15, interval=0.5)
        assert conversation_service.log_count("consumer paused") >= 1
        assert conversation_service.log_count("handed back the deliveries held through a pause") >= 1
        database_proxy.resume()

        await conversation_service.wait_ready(harness.session)
        report = await settled(harness, keys, set())
        assert_exactly_once(report, keys, set())
        assert sum(report.rows_by_provider_id.values()) == 600
        await harness.drained()
        # Never taken back by the broker: the channel closure it does that with never happened.
        assert conversation_service.log_count("timed out") == 0, conversation_service.log_tail()


async def _stored_at_least(harness: Harness, count: int) -> int | None:
    stored = await harness.stored_count()
    return stored if stored >= count else None
