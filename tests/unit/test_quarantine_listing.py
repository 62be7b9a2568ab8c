"""What `make quarantine` prints of an entry: why, when, the URL and the start of the body, with
whatever a forger put there escaped, so that it cannot drive the operator's terminal."""

import uuid
from datetime import UTC, datetime

from gateway.quarantine import (
    BODY_PREVIEW_CHARS,
    QuarantinedWebhook,
    ReplayOutcome,
    describe,
    format_entries,
    format_outcomes,
)
from gateway.webhooks import WebhookRequest

RECEIVED = datetime(2026, 12, 1, 22, 0, tzinfo=UTC)


def entry(
    body: bytes, path_qs: str = "/api/webhooks/email", headers: tuple[tuple[str, str], ...] = ()
) -> QuarantinedWebhook:
    request = WebhookRequest(
        webhook="/api/webhooks/email",
        method="POST",
        origin="https://hooks.example.com",
        path_qs=path_qs,
        headers=headers,
        body=body,
        received_at=RECEIVED,
    )
    return QuarantinedWebhook.of(request, "no v1 signature matches the timestamp and body", uuid.uuid4())


def test_an_entry_shows_why_when_where_and_the_start_of_its_body() -> None:
    kept = entry(b'{"xillio_id": "m-1"}' + b"x" * 1000)

    listing = format_entries([describe(kept)])

    assert listing.splitlines() == [
        "1 quarantined webhook(s)",
        f"- {kept.event_id} received 2026-12-01T22:00:00+00:00: no v1 signature matches the timestamp and body",
        "    POST https://hooks.example.com/api/webhooks/email",
        "    body: " + ('{"xillio_id": "m-1"}' + "x" * 1000)[:BODY_PREVIEW_CHARS],
    ]


def test_terminal_escapes_and_bytes_that_are_not_utf8_are_shown_escaped() -> None:
    kept = entry(b"\x1b[2J\x1b]0;owned\x07 \xff", path_qs="/api/webhooks/email?\x1b[31m")

    shown = describe(kept)

    assert "\x1b" not in shown.body_start and "\x07" not in shown.body_start
    assert shown.body_start == "\\x1b[2J\\x1b]0;owned\\x07 \\ufffd"
    assert "\x1b" not in shown.url


def test_credentials_sent_along_are_not_kept() -> None:
    kept = entry(
        b"{}", headers=(("Authorization", "Bearer msk_x"), ("Cookie", "a=b"), ("X-Xillio-Signature", "t=1,v1=ab"))
    )

    assert kept.request.headers == (("X-Xillio-Signature", "t=1,v1=ab"),)


def test_an_entry_survives_the_queue_byte_for_byte() -> None:
    kept = entry(bytes(range(256)))

    assert QuarantinedWebhook.model_validate_json(kept.model_dump_json()) == kept


def test_a_replay_report_counts_what_was_published_and_what_stays() -> None:
    report = format_outcomes([ReplayOutcome("a", None), ReplayOutcome("b", "the webhook is not signed")])

    assert report.splitlines() == [
        "replayed 1, left 1 in quarantine",
        "- a: published",
        "- b: stays: the webhook is not signed",
    ]
