"""PostgreSQL unreachable while webhooks keep coming: the gateway keeps accepting them (it needs
only the broker), conversation_service says it is not ready and acks nothing it could not store,
and once the database is back every event lands exactly once, none parked as a dead letter."""

import time

import pytest

from common.broker import Topology
from tests.factories import eventually
from tests.faults.harness import Harness
from tests.faults.load import accepted_webhook_keys, assert_exactly_once, post_all, settled, sms_webhooks
from tests.prometheus import value
from tests.proxy import ProxyFactory

pytestmark = [pytest.mark.slow, pytest.mark.integration]

# A low delivery limit and an outage long enough to use it up several times over: a consumer that gave
# up on the database and put the event back on the queue (each round at least the consumer adapter's
# one-second pause before it nacks) would park events as dead letters and fail this test; one that
# waits for the database passes.
DELIVERY_LIMIT = 2
REDELIVERY_DELAY_SECONDS = 1.0
OUTAGE_SECONDS = (DELIVERY_LIMIT + 2) * 2 * REDELIVERY_DELAY_SECONDS
PREFETCH = 32


async def test_database_outage_loses_and_duplicates_nothing(harness: Harness, proxy_to: ProxyFactory) -> None:
    database_proxy, proxied_database_url = await proxy_to(harness.database_url)
    harness.base_env.update(
        DELIVERY_LIMIT=str(DELIVERY_LIMIT), CONSUMER_PREFETCH=str(PREFETCH), WRITE_BATCH_SIZE=str(PREFETCH)
    )
    # Back soon after the database is: the test waits for that.
    overrides = {"DATABASE_URL": proxied_database_url, "DATABASE_RETRY_MAX_INTERVAL_SECONDS": "0.5"}
    await harness.start(["conversation_service", "gateway"], {"conversation_service": overrides})
    conversation_service = harness["conversation_service"]
    queues = Topology(harness.namespace).conversation_events

    before = await post_all(harness.session, harness.gateway_url, sms_webhooks(200))
    before_keys = accepted_webhook_keys(before)
    assert len(before_keys) == 200
    await settled(harness, before_keys, set())

    database_proxy.pause()
    outage_started = time.monotonic()

    async def database_reported_down() -> bool:
        answer = await conversation_service.readyz_body(harness.session)
        return answer is not None and answer[0] == 503 and answer[1]["checks"]["database"] is False

    await eventually(database_reported_down, "conversation_service /readyz 503 with database false", timeout=10)

    published_before = await published_messages(harness)
    acked_before = await acked_deliveries(harness, queues.name)
    during = await post_all(harness.session, harness.gateway_url, sms_webhooks(500))
    assert [a.status for a in during if not a.accepted] == [], "the gateway must not need the database"
    during_keys = accepted_webhook_keys(during)
    assert len(during_keys) == 500
    assert await harness["gateway"].readyz(harness.session) == 200

    # Nothing is acked without being stored: all but the deliveries the consumer holds stay ready. The
    # gateway published the 500 as fewer messages, some of them bundles, and the broker counts those.
    depths = await harness.queue_depths()
    ready_during = depths[queues.name]
    published_during = await published_messages(harness) - published_before
    assert ready_during >= published_during - PREFETCH, (published_during, depths)
    assert await acked_deliveries(harness, queues.name) == acked_before
    assert await harness.stored_count() == 200

    # Hold the outage through several retry rounds, checking all along that nothing is parked.
    async def outage_over() -> bool:
        depths = await harness.queue_depths()
        assert depths[queues.dead_letter_name] == 0, f"events parked during the outage: {depths}"
        assert await database_reported_down()
        return time.monotonic() - outage_started >= OUTAGE_SECONDS

    await eventually(outage_over, "the outage has lasted", timeout=OUTAGE_SECONDS + 15, interval=0.5)
    database_proxy.resume()
    outage = time.monotonic() - outage_started

    await conversation_service.wait_ready(harness.session)
    recovered = time.monotonic() - outage_started - outage
    keys = before_keys | during_keys
    report = await settled(harness, keys, set())
    drained = time.monotonic() - outage_started - outage
    assert_exactly_once(report, keys, set())
    assert sum(report.rows_by_provider_id.values()) == 700
    assert report.counted == 700
    depths = await harness.queue_depths()
    assert set(depths.values()) == {0}, depths
    print(
        f"\n200 stored before; 500 accepted during a {outage:.1f}s outage, as {published_during:.0f} messages "
        f"({ready_during} left ready, {published_during - ready_during:.0f} in hand); ready {recovered:.1f}s after, "
        f"700 stored once {drained:.1f}s after; "
        f"retry log lines: {conversation_service.log_count('database unreachable; retrying')}, "
        f"handler failures: {conversation_service.log_count('handler failed')}"
    )


async def published_messages(harness: Harness) -> float:
    """Messages the gateway published (each a webhook or a bundle of them) since it started."""
    return value(await harness["gateway"].metrics(harness.session), "messaging_publish_bundle_size_count")


async def acked_deliveries(harness: Harness, queue: str) -> float:
    samples = await harness["conversation_service"].metrics(harness.session)
    return value(samples, "messaging_consumer_deliveries_total", {"queue": queue, "outcome": "acked"})
