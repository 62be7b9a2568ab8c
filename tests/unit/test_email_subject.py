"""The subject email_service derives from a body: linear in the body, and reading only its start,
so that no body can stall the event loop (a regex like `<[^>]*>` took minutes on a run of `<`)."""

import multiprocessing
import time

import pytest

from email_service.provider import SUBJECT_SCAN_CHARS, subject_of

# A million characters: the gateway takes email bodies this long. A quadratic pass over them is
# about 10^12 steps, which cannot end within this bound; a linear one over the start ends at once.
MILLION = 1_000_000
BOUND_SECONDS = 5.0


@pytest.mark.parametrize(
    "body",
    [
        "<" * MILLION,
        "<a" * (MILLION // 2),
        "x" * MILLION,
        "<b>" * (MILLION // 3),
        "&" * MILLION,
    ],
    ids=["a run of <", "unclosed tags", "plain text", "closed tags", "a run of &"],
)
def test_a_hostile_body_of_a_million_characters_gets_its_subject_at_once(body: str) -> None:
    # In a process of its own, so that a quadratic algorithm fails the test instead of hanging it.
    context = multiprocessing.get_context("fork")
    worker = context.Process(target=subject_of, args=(body,))
    started = time.monotonic()
    worker.start()
    worker.join(BOUND_SECONDS)
    finished = not worker.is_alive()
    if not finished:
        worker.kill()
        worker.join()
    assert finished, f"subject extraction still running after {BOUND_SECONDS}s"
    assert worker.exitcode == 0
    assert time.monotonic() - started < BOUND_SECONDS


@pytest.mark.parametrize(
    ("body", "subject"),
    [
        ("<p>Hello <b>there</b> &amp; welcome</p>", "Hello there & welcome"),
        ("3 < 5, said nobody", "3 < 5, said nobody"),
        ("<" * 10, "<" * 10),
        ("<html><head></head><body></body></html>", "(no subject)"),
        ("x" * 100, "x" * 77 + "…"),
    ],
)
def test_the_subject_is_the_start_of_the_text(body: str, subject: str) -> None:
    assert subject_of(body) == subject


def test_only_the_start_of_the_body_is_read() -> None:
    """Text beyond the first SUBJECT_SCAN_CHARS characters never reaches the subject."""
    assert subject_of("<i>" * SUBJECT_SCAN_CHARS + "too late") == "(no subject)"
    assert subject_of("early" + "<i>" * SUBJECT_SCAN_CHARS) == "early"
