"""The stack on a 3-node RabbitMQ cluster, every service but the mock as two replicas, and the node
holding every connection and every queue's leader killed (SIGKILL of its beam) mid-stream: the
clients fail over to the other nodes by themselves, the quorum queues elect new leaders, and every
request answered 202 is stored exactly once and every accepted send reaches the provider once."""

import time
from pathlib import Path

import pytest

from tests.factories import eventually, free_ports
from tests.faults.harness import KINDS, Harness, Service
from tests.faults.load import (
    Load,
    accepted_send_ids,
    accepted_webhook_keys,
    assert_exactly_once,
    assert_sent_once,
    interleave,
    post_all,
    settled,
    sms_sends,
    sms_webhooks,
)
from tests.faults.rabbit_nodes import rabbit_nodes

pytestmark = [pytest.mark.slow, pytest.mark.integration]

WEBHOOKS = 400
SENDS = 200
# Each worker's pause after a request: the stream lasts over a second (32 workers at most ~20 requests
# a second each), so the kill lands in it. As a flood, the gateways had answered all 600 before 100
# were stored, once, when a deadlock between the replicas held a batch back.
PACE_SECONDS = 0.05


def add_replica(harness: Harness, name: str) -> Service:
    """A second process of the kind `name`, on a port of its own, with the stack's environment."""
    [port] = free_ports(1)
    kind = KINDS[name]
    replica = Service(
        f"{name}-2",
        kind,
        port,
        {**harness.base_env, kind.port_variable: str(port)},
        harness.directory / f"{name}-2.log",
    )
    harness.services[replica.name] = replica
    return replica


async def test_a_node_killed_mid_stream_loses_and_duplicates_nothing(harness: Harness, tmp_path: Path) -> None:
    async with rabbit_nodes(tmp_path / "rabbitmq", 3) as nodes:
        doomed, *survivors = nodes
        # Every service tries the nodes in this order, so all of them start on the doomed one, which
        # then also leads every queue (a quorum queue's first leader is where it was declared).
        harness.base_env["AMQP_URL"] = ",".join(node.url for node in nodes)
        harness.amqp_url = survivors[0].url
        await harness.start(["sms_provider", "conversation_service", "sms_service", "gateway"])
        replicas = [add_replica(harness, name) for name in ("conversation_service", "sms_service", "gateway")]
        for replica in replicas:
            await replica.start()
        for replica in replicas:
            await replica.wait_ready(harness.session)
        gateways = [harness["gateway"].url, harness["gateway-2"].url]

        loads = [
            Load(
                harness.session,
                gateway,
                interleave(sms_webhooks(WEBHOOKS // 2), sms_sends(SENDS // 2)),
                16,
                pause=PACE_SECONDS,
            ).start()
            for gateway in gateways
        ]

        async def under_way() -> bool:
            return await harness.stored_count() >= 100

        await eventually(under_way, "the stream being stored", timeout=60)
        await doomed.kill()
        killed_at = time.monotonic()
        accepted_at_kill = sum(load.count() for load in loads)

        during = [answer for load in loads for answer in await load.finished()]
        refused = [answer for answer in during if not answer.accepted]
        assert accepted_at_kill < WEBHOOKS + SENDS, "the kill came after the stream: it proves nothing"
        # Only what was in flight on the lost connections, or sent while the queues elected new leaders,
        # goes unconfirmed: a 503, never a 202 that is then lost.
        assert {answer.status for answer in refused} <= {503}, refused[:5]

        for service in harness.services.values():
            await service.wait_ready(harness.session, within=30)
        failed_over_in = time.monotonic() - killed_at
        # On the survivors now, both gateways accept everything again.
        after = [
            answer
            for gateway in gateways
            for answer in await post_all(harness.session, gateway, interleave(sms_webhooks(50), sms_sends(25)))
        ]
        assert [answer.status for answer in after if not answer.accepted] == []

        answers = during + after
        keys, send_ids = accepted_webhook_keys(answers), accepted_send_ids(answers)
        report = await settled(harness, keys, send_ids)
        assert_exactly_once(report, keys, send_ids)
        assert_sent_once(await harness.provider_records("sms_provider"), send_ids, report)
        await harness.drained()
        print(
            f"\n{len(keys)} webhooks and {len(send_ids)} sends accepted ({accepted_at_kill} before the kill), "
            f"{len(refused)} answered 503 during the failover; every service ready on the survivors "
            f"{failed_over_in:.1f}s after the kill; each accepted message stored once and each send sent once"
        )
