"""How the dead-letter tool reads a dead letter's headers and prints its report (the broker side is
in tests/integration/test_dead_letters.py)."""

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from common.dead_letters import DeadLetterQueue, describe, format_report, parse_arguments

DIED_AT = datetime(2024, 11, 1, 14, 0, tzinfo=UTC)


@dataclass
class StoredDeadLetter:
    """The parts of an incoming message the tool reads."""

    body: bytes = b'{"kind": "send_message", "message_id": "m-1"}'
    routing_key: str = "sms_service.outbound"
    type: str | None = "send_message"
    message_id: str | None = "e-1"
    correlation_id: str | None = "c-1"
    headers: dict[str, Any] = field(default_factory=dict)


def death(queue: str, reason: str, routing_keys: list[str], count: int = 1) -> dict[str, Any]:
    return {"queue": queue, "reason": reason, "count": count, "routing-keys": routing_keys, "time": DIED_AT}


def test_a_dead_letter_shows_the_routing_key_it_was_first_published_with() -> None:
    replayed_then_dead_again = StoredDeadLetter(
        headers={
            # The latest death first: after a replay straight to its queue, that queue is the routing key.
            "x-death": [
                death("sms_service.outbound", "delivery_limit", ["sms_service.outbound"]),
                death("sms_service.outbound", "rejected", ["outbound.mms"], count=2),
            ],
            "x-first-death-reason": "rejected",
            "x-delivery-count": 20,
        }
    )

    letter = describe(replayed_then_dead_again)  # type: ignore[arg-type]

    assert (letter.routing_key, letter.first_death_reason, letter.delivery_count) == ("outbound.mms", "rejected", 20)
    assert [(d.reason, d.count, d.routing_keys) for d in letter.deaths] == [
        ("delivery_limit", 1, ("sms_service.outbound",)),
        ("rejected", 2, ("outbound.mms",)),
    ]


def test_a_dead_letter_without_death_headers_keeps_its_own_routing_key_and_a_short_body() -> None:
    letter = describe(StoredDeadLetter(body=b"x" * 1000, type=None))  # type: ignore[arg-type]

    assert (letter.routing_key, letter.kind, letter.first_death_reason, letter.delivery_count) == (
        "sms_service.outbound",
        None,
        None,
        None,
    )
    assert letter.deaths == () and letter.body_start == "x" * 200


def test_the_report_names_each_queue_and_each_message_with_its_deaths() -> None:
    stored = StoredDeadLetter(
        headers={
            "x-death": [death("ns.sms_service.outbound", "rejected", ["outbound.sms"])],
            "x-first-death-reason": "rejected",
        }
    )
    letter = describe(stored)  # type: ignore[arg-type]
    report = [
        DeadLetterQueue("sms_service.outbound", "ns.sms_service.outbound.dead-letter", 1, (letter,)),
        DeadLetterQueue("email_service.outbound", "ns.email_service.outbound.dead-letter", 0, ()),
    ]

    assert format_report(report).splitlines() == [
        "sms_service.outbound: 1 dead letter(s) in ns.sms_service.outbound.dead-letter",
        "  - outbound.sms send_message message_id=m-1 event_id=e-1 correlation_id=c-1 "
        "first_death_reason=rejected delivery_count=None",
        "    x-death: rejected in ns.sms_service.outbound x1 "
        "(routing keys outbound.sms; last 2024-11-01 14:00:00+00:00)",
        '    body: {"kind": "send_message", "message_id": "m-1"}',
        "email_service.outbound: 0 dead letter(s) in ns.email_service.outbound.dead-letter",
    ]


@pytest.mark.parametrize(
    "argv", [["replay", "--limit", "0"], ["list", "--queue", "gateway"], ["list", "--message-id", "m-1"], []]
)
def test_the_command_line_refuses_what_it_cannot_do(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_arguments(argv)

    assert exited.value.code == 2
