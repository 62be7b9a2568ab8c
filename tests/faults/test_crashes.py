"""A worker killed outright (SIGKILL: no cleanup, no ack, no goodbye) in the middle of a stream, then
started again: nothing the gateway acknowledged is lost, nothing is stored or sent twice."""

import time

import pytest

from tests.factories import eventually
from tests.faults.harness import Harness
from tests.faults.load import (
    SENT,
    Load,
    accepted_send_ids,
    accepted_webhook_keys,
    assert_exactly_once,
    assert_sent_once,
    settled,
    sms_sends,
    sms_webhooks,
)

pytestmark = [pytest.mark.slow, pytest.mark.integration]


async def test_conversation_service_killed_mid_stream_stores_every_webhook_once(harness: Harness) -> None:
    await harness.start(["conversation_service", "gateway"])
    conversation_service = harness["conversation_service"]
    load = Load(harness.session, harness.gateway_url, sms_webhooks(2000), concurrency=32).start()

    # Kill it once it is busy storing: some of the stream stored, some in its hands, most to come. Early,
    # as the gateway only publishes and can run far ahead of a database slowed by a busy machine.
    stored_before_kill = await eventually(
        lambda: _at_least(harness, 50), "conversation_service storing the stream", timeout=60
    )
    await conversation_service.kill()
    accepted_at_kill = load.count()
    killed_at = time.monotonic()
    await conversation_service.restart(harness.session)
    restarted_in = time.monotonic() - killed_at

    answers = await load.finished()
    assert [a.status for a in answers if not a.accepted] == []
    keys = accepted_webhook_keys(answers)
    assert len(keys) == 2000
    assert accepted_at_kill < 2000, "the kill came after the stream: it proves nothing"

    report = await settled(harness, keys, set())
    assert_exactly_once(report, keys, set())
    assert sum(report.rows_by_provider_id.values()) == 2000
    assert report.counted == 2000
    await harness.drained()
    replays = conversation_service.log_count("message event changed nothing")
    print(
        f"\nwebhooks accepted 2000; stored {stored_before_kill} when killed, with {accepted_at_kill} accepted; "
        f"back in {restarted_in:.1f}s; stored 2000 once in {report.conversations} conversations; "
        f"replays after restart: {replays}"
    )


async def test_sms_service_killed_mid_stream_sends_every_message_once(harness: Harness) -> None:
    await harness.start(["sms_provider", "conversation_service", "sms_service", "gateway"])
    sms_service = harness["sms_service"]
    total = 300
    load = Load(harness.session, harness.gateway_url, sms_sends(total), concurrency=32).start()

    async def provider_busy() -> int:
        count = len(await harness.provider_records("sms_provider"))
        return count if count >= 60 else 0

    sent_before_kill = await eventually(provider_busy, "sms_service sending the stream", timeout=60)
    await sms_service.kill()
    accepted_at_kill = load.count()
    assert sent_before_kill < total, "the kill came after the stream: it proves nothing"
    await sms_service.restart(harness.session)

    answers = await load.finished()
    assert [a.status for a in answers if not a.accepted] == []
    ids = accepted_send_ids(answers)
    assert len(ids) == total

    report = await settled(harness, set(), ids)
    assert_exactly_once(report, set(), ids)
    records = await harness.provider_records("sms_provider")
    assert_sent_once(records, ids, report)
    assert len(records) == total
    assert {report.status_by_id[i] for i in ids} <= SENT
    # A send the killed process had made but not acked comes again: the provider answers it from its
    # idempotency record, and its status event reaches conversation_service twice.
    status_events = harness["conversation_service"].log_count("kind=message_status_changed")
    print(
        f"\nsends accepted {total}; provider had {sent_before_kill} when sms_service was killed "
        f"({accepted_at_kill} accepted by then); provider recorded {len(records)}, each once; "
        f"{status_events} status events for them; all {total} sent or delivered"
    )


async def _at_least(harness: Harness, count: int) -> int:
    stored = await harness.stored_count()
    return stored if stored >= count else 0
