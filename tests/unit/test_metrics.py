"""What a confirmed publish and a stored event mean on the counters: each message event lands on the
one counter an operator would look for, under its channel."""

from prometheus_client import generate_latest

from common.contracts import Channel, Contract, MessageStatus
from common.metrics import Metrics
from tests.factories import delivery_reported, message_received, send_message, status_changed
from tests.prometheus import Samples, parse


def published(*contracts: Contract) -> Samples:
    metrics = Metrics()
    for contract in contracts:
        metrics.count_published(contract)
    return messaging_samples(metrics)


def messaging_samples(metrics: Metrics) -> Samples:
    samples = parse(generate_latest(metrics.registry).decode())
    # Only what moved: a counter without labels is exported at 0 from the start.
    return {key: n for key, n in samples.items() if key[0].startswith("messaging_") and key[0].endswith("_total") and n}


def sample(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return name, frozenset(labels.items())


def test_each_published_contract_counts_once_on_its_own_counter() -> None:
    mms = send_message(Channel.MMS)
    email = send_message(Channel.EMAIL)

    assert published(
        mms,
        message_received(Channel.SMS),
        status_changed(mms, MessageStatus.SENT),
        status_changed(email, MessageStatus.FAILED, error="refused"),
        delivery_reported(mms, MessageStatus.DELIVERED),
        delivery_reported(email, MessageStatus.FAILED, error="bounced"),
    ) == {
        sample("messaging_messages_accepted_total", channel="mms", direction="outbound"): 1,
        sample("messaging_messages_accepted_total", channel="sms", direction="inbound"): 1,
        sample("messaging_messages_sent_total", channel="mms"): 1,
        sample("messaging_messages_failed_total", channel="email", stage="send"): 1,
        sample("messaging_messages_delivered_total", channel="mms"): 1,
        sample("messaging_messages_failed_total", channel="email", stage="delivery"): 1,
    }


def test_a_stored_event_is_counted_by_event_channel_and_outcome() -> None:
    metrics = Metrics()
    command = send_message(Channel.EMAIL)

    metrics.count_stored(command, "changed")
    metrics.count_stored(command, "replayed")
    metrics.count_stored(delivery_reported(command), "awaiting_message")

    assert messaging_samples(metrics) == {
        sample("messaging_events_stored_total", event="outbound", channel="email", outcome="changed"): 1,
        sample("messaging_events_stored_total", event="outbound", channel="email", outcome="replayed"): 1,
        sample("messaging_events_stored_total", event="receipt", channel="email", outcome="awaiting_message"): 1,
    }
