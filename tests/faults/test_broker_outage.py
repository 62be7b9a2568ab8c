"""RabbitMQ unreachable for every service at once (their AMQP connections go through a proxy that
the test cuts): the gateway refuses with 503 rather than accept what it cannot queue, says it is not
ready, and recovers by itself; the consumers reconnect and carry on; everything accepted lands once."""

import time
from collections.abc import Awaitable

import pytest

from tests.factories import eventually
from tests.faults.harness import Harness
from tests.faults.load import (
    Load,
    accepted_send_ids,
    accepted_webhook_keys,
    assert_exactly_once,
    assert_sent_once,
    interleave,
    settled,
    sms_sends,
    sms_webhooks,
)
from tests.proxy import PauseMode, ProxyFactory

pytestmark = [pytest.mark.slow, pytest.mark.integration]

OUTAGE_SECONDS = 3.0


# REFUSE: the broker is down, reconnects are refused at once. HOLD: a partition, reconnects hang.
@pytest.mark.parametrize("mode", [PauseMode.REFUSE, PauseMode.HOLD])
async def test_broker_outage_answers_503_then_recovers_and_loses_nothing(
    harness: Harness, proxy_to: ProxyFactory, mode: PauseMode
) -> None:
    broker_proxy, proxied_amqp_url = await proxy_to(harness.amqp_url)
    harness.base_env["AMQP_URL"] = proxied_amqp_url
    await harness.start(["sms_provider", "conversation_service", "sms_service", "gateway"])
    gateway = harness["gateway"]
    load = Load(
        harness.session, harness.gateway_url, interleave(sms_webhooks(3000), sms_sends(3000)), concurrency=16
    ).start()

    await eventually(lambda: _ge(load.count(), 200), "200 requests accepted before the cut", timeout=30)
    broker_proxy.pause(mode)
    cut_at = time.monotonic()
    await eventually(lambda: _equals(gateway.readyz(harness.session), 503), "the gateway /readyz 503", timeout=10)

    def refused_during_outage() -> int:
        return load.count(lambda a: a.started > cut_at and a.status == 503)

    async def outage_long_enough() -> bool:
        return time.monotonic() - cut_at >= OUTAGE_SECONDS and refused_during_outage() >= 20

    await eventually(outage_long_enough, "requests answered during the outage", timeout=OUTAGE_SECONDS + 20)
    for name in ("conversation_service", "sms_service"):
        assert await harness[name].readyz(harness.session) == 503, f"{name} still says ready"
    broker_proxy.resume()
    resumed_at = time.monotonic()

    await eventually(lambda: _equals(gateway.readyz(harness.session), 200), "the gateway ready again", timeout=30)
    ready_again = time.monotonic() - resumed_at
    await eventually(
        lambda: _ge(load.count(lambda a: a.accepted and a.started > resumed_at), 200), "202s again", timeout=30
    )
    first_202 = min(a.finished for a in load.answers if a.accepted and a.started > resumed_at) - resumed_at
    load.stop()
    answers = await load.finished()
    for name in ("conversation_service", "sms_service"):
        await harness[name].wait_ready(harness.session)

    statuses = {a.status for a in answers}
    assert statuses <= {202, 503}, f"answers other than 202 and 503: {statuses}"
    during = [a for a in answers if a.started > cut_at and a.finished < resumed_at]
    assert {a.status for a in during} == {503}, "a request made while the broker was down got a 2xx"
    assert {a.request.kind for a in during} == {"send", "webhook"}
    keys, ids = accepted_webhook_keys(answers), accepted_send_ids(answers)

    report = await settled(harness, keys, ids)
    assert_exactly_once(report, keys, ids)
    records = await harness.provider_records("sms_provider")
    assert_sent_once(records, ids, report)
    # A request refused with 503 may or may not have reached the broker before the cut; nothing else
    # may be stored or sent.
    assert sum(report.rows_by_id.values()) <= len(answers)
    await harness.drained()
    refused = [a for a in answers if a.status == 503]
    slowest = max(a.finished - a.started for a in during)
    print(
        f"\n{mode}: {len(answers)} requests: {len(keys)} webhooks and {len(ids)} sends accepted, "
        f"{len(refused)} refused with 503 ({len(during)} made and answered inside the "
        f"{resumed_at - cut_at:.1f}s outage, slowest {slowest:.2f}s); gateway ready {ready_again:.1f}s "
        f"after resume, first 202 after {first_202:.1f}s; stored {sum(report.rows_by_id.values())} once, "
        f"provider sent {len(records)} once"
    )


async def _ge(value: int, minimum: int) -> bool:
    return value >= minimum


async def _equals(awaitable: Awaitable[object], expected: object) -> bool:
    return await awaitable == expected
