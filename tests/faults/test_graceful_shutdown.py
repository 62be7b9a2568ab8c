"""SIGTERM, as an orchestrator stops a container, to each service while it has work in hand: it exits
0 within its grace period, having finished that work or handed it back to the broker; started again,
nothing is lost and nothing is done twice."""

import pytest

from tests.factories import eventually
from tests.faults.harness import Harness
from tests.faults.load import (
    Load,
    accepted_send_ids,
    accepted_webhook_keys,
    assert_exactly_once,
    assert_sent_once,
    email_sends,
    interleave,
    post_all,
    settled,
    sms_sends,
    sms_webhooks,
)
from tests.proxy import PauseMode, ProxyFactory

pytestmark = [pytest.mark.slow, pytest.mark.integration]

GRACE_SECONDS = 3.0
# Start-up of the shutdown, the broker and database goodbyes: what a clean exit may take beyond the
# grace, with room for a scheduler starved by the rest of the stack on 2 cores.
EXIT_MARGIN_SECONDS = 8.0


async def test_sigterm_finishes_or_returns_in_flight_work(harness: Harness, proxy_to: ProxyFactory) -> None:
    sms_proxy, sms_provider_url = await proxy_to(f"http://127.0.0.1:{harness.ports['sms_provider']}")
    email_proxy, email_provider_url = await proxy_to(f"http://127.0.0.1:{harness.ports['email_provider']}")
    harness.base_env["SHUTDOWN_GRACE_SECONDS"] = str(GRACE_SECONDS)
    await harness.start(
        ["sms_provider", "email_provider", "conversation_service", "sms_service", "email_service", "gateway"],
        {
            "sms_service": {"SMS_PROVIDER_URL": sms_provider_url},
            "email_service": {"EMAIL_PROVIDER_URL": email_provider_url},
        },
    )
    figures: list[str] = []

    # conversation_service, busy storing a stream of webhooks: what it holds is stored and acked.
    conversation_service = harness["conversation_service"]
    load = Load(harness.session, harness.gateway_url, sms_webhooks(800), concurrency=32).start()
    await eventually(lambda: _stored_at_least(harness, 150), "conversation_service storing the stream", timeout=30)
    code, took = await conversation_service.terminate()
    assert code == 0, conversation_service.log_tail()
    assert took < GRACE_SECONDS + EXIT_MARGIN_SECONDS
    stored_at_stop = await harness.stored_count()
    replays_before = conversation_service.log_count("message event changed nothing")
    await conversation_service.restart(harness.session)
    answers = await load.finished()
    keys = accepted_webhook_keys(answers)
    assert len(keys) == 800
    report = await settled(harness, keys, set())
    assert_exactly_once(report, keys, set())
    assert sum(report.rows_by_provider_id.values()) == 800
    replays = conversation_service.log_count("message event changed nothing") - replays_before
    assert stored_at_stop < 800
    # Finished, not dropped: every event it was storing was acked before it left, so none came back.
    assert replays == 0, f"{replays} events stored but not acked by the stopped conversation_service"
    figures.append(
        f"conversation_service: exit {code} in {took:.2f}s with {stored_at_stop}/800 stored; "
        f"800 stored once after restart, {replays} events redone"
    )

    # sms_service and email_service, each with sends stuck on a provider that does not answer: they
    # give up the sends at the end of the grace period, unacked, and the broker hands them out again.
    sms_proxy.pause(PauseMode.HOLD)
    email_proxy.pause(PauseMode.HOLD)
    sends = await post_all(harness.session, harness.gateway_url, interleave(sms_sends(60), email_sends(60)))
    ids = accepted_send_ids(sends)
    assert len(ids) == 120
    await eventually(
        lambda: _true(sms_proxy.held > 0 and email_proxy.held > 0), "sends waiting on the providers", timeout=15
    )
    for name in ("sms_service", "email_service"):
        service = harness[name]
        code, took = await service.terminate()
        assert code == 0, service.log_tail()
        assert took < GRACE_SECONDS + EXIT_MARGIN_SECONDS, f"{name} took {took:.1f}s"
        figures.append(f"{name}: exit {code} in {took:.2f}s with sends in hand")
    sms_proxy.resume()
    email_proxy.resume()
    for name in ("sms_service", "email_service"):
        await harness[name].restart(harness.session)
    report = await settled(harness, keys, ids)
    assert_exactly_once(report, keys, ids)
    sms_records = await harness.provider_records("sms_provider")
    email_records = await harness.provider_records("email_provider")
    assert_sent_once(sms_records + email_records, ids, report)
    assert (len(sms_records), len(email_records)) == (60, 60)
    figures.append("120 sends held at SIGTERM: all sent after restart, each provider recorded 60, once each")

    # The gateway, in the middle of a stream: what it started answering it finishes; what it no
    # longer takes gets no answer, and the provider retries it later, to the same message.
    gateway = harness["gateway"]
    more = sms_webhooks(800)
    load = Load(harness.session, harness.gateway_url, more, concurrency=32).start()
    await eventually(lambda: _true(load.count() >= 200), "the gateway accepting the stream", timeout=30)
    code, took = await gateway.terminate()
    load.stop()
    answers = await load.finished()
    assert code == 0, gateway.log_tail()
    assert took < GRACE_SECONDS + EXIT_MARGIN_SECONDS
    assert {a.status for a in answers} <= {202, None}, {a.status for a in answers}
    accepted_at_stop = load.count()
    await gateway.restart(harness.session)
    # Providers retry what got no answer, and resend some that did (they cannot know).
    unanswered = [a.request for a in answers if not a.accepted]
    answered = {a.request.key for a in answers}
    retries = unanswered + [r for r in more if r.key not in answered] + [a.request for a in answers[:50]]
    retried = await post_all(harness.session, harness.gateway_url, retries)
    assert {a.status for a in retried} == {202}
    more_keys = accepted_webhook_keys(answers) | accepted_webhook_keys(retried)
    assert more_keys == {r.key for r in more}
    report = await settled(harness, keys | more_keys, ids)
    assert_exactly_once(report, keys | more_keys, ids)
    assert sum(report.rows_by_provider_id.values()) == 1600
    await harness.drained()
    figures.append(
        f"gateway: exit {code} in {took:.2f}s with {accepted_at_stop} of 800 accepted and "
        f"{len(answers) - accepted_at_stop} unanswered; {len(retries)} retried (50 of them repeats): "
        f"1600 webhooks stored once"
    )
    print("\n" + "\n".join(figures))


async def _stored_at_least(harness: Harness, count: int) -> bool:
    return await harness.stored_count() >= count


async def _true(value: bool) -> bool:
    return value
