"""Drive the gateway like providers and clients do, many requests at once, and record every answer;
then check what the database and the mock providers hold against what was answered 202."""

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from common.broker import Topology
from tests.factories import eventually
from tests.faults.harness import Harness

PHONE_PAIRS = 50
OUR_NUMBER = "+12016661234"
OUR_EMAIL = "user@usehatchapp.com"
RETRY_PAUSE_SECONDS = 0.05
# A send that went out: `delivered` once the mock provider's receipt came back, `sent` until then.
SENT = frozenset({"sent", "delivered"})


@dataclass(frozen=True)
class Request:
    kind: str  # "webhook" (its key is the provider message id) or "send" (its key is the id answered)
    path: str
    payload: dict[str, Any]
    key: str | None = None


@dataclass(frozen=True)
class Answer:
    request: Request
    status: int | None  # None: no HTTP answer at all (refused, reset)
    message_id: str | None
    started: float
    finished: float

    @property
    def accepted(self) -> bool:
        return self.status == 202


def sms_webhooks(count: int, run: str | None = None) -> list[Request]:
    run = run or uuid.uuid4().hex[:8]
    return [
        Request(
            "webhook",
            "/api/webhooks/sms",
            {
                "from": f"+1804555{index % PHONE_PAIRS:04d}",
                "to": OUR_NUMBER,
                "type": "sms",
                "messaging_provider_id": f"fault-{run}-{index}",
                "body": f"inbound {index}",
            },
            key=f"fault-{run}-{index}",
        )
        for index in range(count)
    ]


def sms_sends(count: int) -> list[Request]:
    return [
        Request(
            "send",
            "/api/messages/sms",
            {"from": OUR_NUMBER, "to": f"+1804555{index % PHONE_PAIRS:04d}", "type": "sms", "body": f"out {index}"},
        )
        for index in range(count)
    ]


def email_sends(count: int) -> list[Request]:
    return [
        Request(
            "send",
            "/api/messages/email",
            {"from": OUR_EMAIL, "to": f"contact{index % PHONE_PAIRS}@gmail.com", "body": f"<p>out {index}</p>"},
        )
        for index in range(count)
    ]


def interleave(*streams: Sequence[Request]) -> list[Request]:
    mixed: list[Request] = []
    for index in range(max(map(len, streams))):
        mixed.extend(stream[index] for stream in streams if index < len(stream))
    return mixed


class Load:
    """Posts `requests` with `concurrency` workers; `answers` grows as they come back, so a test can
    act in the middle of the stream; `stop()` makes the workers finish after their current request.
    With a `pause`, each worker waits that long after every request: a steady trickle, not a flood."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        requests: Sequence[Request],
        concurrency: int,
        pause: float = 0.0,
    ):
        self._session = session
        self._pause = pause
        self._base_url = base_url
        self._pending = list(reversed(requests))
        self._concurrency = concurrency
        self._stopped = False
        self.answers: list[Answer] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> "Load":
        self._task = asyncio.create_task(self._run())
        return self

    def stop(self) -> None:
        self._stopped = True

    async def finished(self, within: float = 120.0) -> list[Answer]:
        assert self._task is not None
        await asyncio.wait_for(self._task, within)
        return self.answers

    def count(self, predicate: Callable[[Answer], bool] = lambda answer: answer.accepted) -> int:
        return sum(1 for answer in self.answers if predicate(answer))

    async def _run(self) -> None:
        await asyncio.gather(*(self._worker() for _ in range(self._concurrency)))

    async def _worker(self) -> None:
        while self._pending and not self._stopped:
            request = self._pending.pop()
            started = time.monotonic()
            status: int | None = None
            message_id: str | None = None
            try:
                async with self._session.post(
                    f"{self._base_url}{request.path}", json=request.payload, timeout=aiohttp.ClientTimeout(total=30)
                ) as response:
                    status = response.status
                    body = await response.json(content_type=None)
                    if status == 202:
                        message_id = body["id"]
            except (aiohttp.ClientError, TimeoutError):
                status = None
            self.answers.append(Answer(request, status, message_id, started, time.monotonic()))
            if status != 202:
                # A client told to come back later does not hammer: the pace of a real retrying one.
                await asyncio.sleep(RETRY_PAUSE_SECONDS)
            await asyncio.sleep(self._pause)


async def post_all(
    session: aiohttp.ClientSession, base_url: str, requests: Sequence[Request], concurrency: int = 32
) -> list[Answer]:
    return await Load(session, base_url, requests, concurrency).start().finished()


def accepted_webhook_keys(answers: Sequence[Answer]) -> set[str]:
    return {a.request.key for a in answers if a.accepted and a.request.kind == "webhook" and a.request.key}


def accepted_send_ids(answers: Sequence[Answer]) -> set[str]:
    return {a.message_id for a in answers if a.accepted and a.request.kind == "send" and a.message_id}


@dataclass(frozen=True)
class StoreReport:
    rows_by_provider_id: Counter[str]
    rows_by_id: Counter[str]
    status_by_id: dict[str, str]
    provider_id_by_id: dict[str, str | None]
    conversations: int
    counted: int  # the sum of conversations.message_count
    miscounted: list[tuple[int, int, int]]  # conversations whose message_count is not its rows


def store_report(harness: Harness) -> StoreReport:
    # One snapshot: a batch stored between two separate reads made the conversations' counts
    # disagree with the messages read a moment before.
    rows, per_conversation = harness.snapshot(
        ("SELECT id::text, direction, provider_message_id, status FROM messages", None),
        (
            "SELECT c.id, c.message_count, count(m.id) FROM conversations c "
            "LEFT JOIN messages m ON m.conversation_id = c.id GROUP BY c.id, c.message_count",
            None,
        ),
    )
    return StoreReport(
        rows_by_provider_id=Counter(pid for _, direction, pid, _ in rows if direction == "inbound"),
        rows_by_id=Counter(message_id for message_id, *_ in rows),
        status_by_id={message_id: status for message_id, _, _, status in rows},
        provider_id_by_id={message_id: pid for message_id, _, pid, _ in rows},
        conversations=len(per_conversation),
        counted=sum(count for _, count, _ in per_conversation),
        miscounted=[row for row in per_conversation if row[1] != row[2]],
    )


async def settled(harness: Harness, webhook_keys: set[str], send_ids: set[str], within: float = 60.0) -> StoreReport:
    """The store once every accepted webhook is in it and every accepted send went out, and the
    conversation queue is empty; fails with what is missing after `within` seconds."""

    async def done() -> StoreReport | None:
        report = await asyncio.to_thread(store_report, harness)
        inbound_missing = webhook_keys - set(report.rows_by_provider_id)
        unsent = {i for i in send_ids if report.status_by_id.get(i) not in SENT}
        if inbound_missing or unsent:
            return None
        depths = await harness.queue_depths()
        return report if depths[Topology(harness.namespace).conversation_events.name] == 0 else None

    try:
        return await eventually(done, "every accepted message stored", timeout=within, interval=0.25)
    except AssertionError:
        report = await asyncio.to_thread(store_report, harness)
        missing = webhook_keys - set(report.rows_by_provider_id)
        unsent = {i: report.status_by_id.get(i) for i in send_ids if report.status_by_id.get(i) not in SENT}
        raise AssertionError(
            f"{len(missing)} accepted webhooks not stored (e.g. {sorted(missing)[:5]}); "
            f"{len(unsent)} accepted sends not sent (e.g. {list(unsent.items())[:5]}); "
            f"queues: {await harness.queue_depths()}"
        ) from None


def assert_exactly_once(report: StoreReport, webhook_keys: set[str], send_ids: set[str]) -> None:
    duplicated = {key: n for key, n in report.rows_by_provider_id.items() if n > 1}
    assert not duplicated, f"webhooks stored more than once: {duplicated}"
    assert webhook_keys <= set(report.rows_by_provider_id)
    assert send_ids <= set(report.rows_by_id)
    assert all(n == 1 for n in report.rows_by_id.values())
    assert report.miscounted == [], f"conversations whose message_count is not their messages: {report.miscounted}"
    assert report.counted == sum(report.rows_by_id.values())


def assert_sent_once(records: list[dict[str, Any]], send_ids: set[str], report: StoreReport) -> None:
    """The mock provider took each accepted send exactly once (its idempotency key is the message id),
    and the store holds the provider's id for it."""
    keys = Counter(record["idempotency_key"] for record in records)
    repeated = {key: n for key, n in keys.items() if n > 1}
    assert not repeated, f"the provider recorded these sends more than once: {repeated}"
    assert send_ids <= set(keys), f"never reached the provider: {sorted(send_ids - set(keys))[:5]}"
    provider_ids = {record["idempotency_key"]: record["id"] for record in records}
    wrong = {i for i in send_ids if report.provider_id_by_id.get(i) != provider_ids[i]}
    assert not wrong, f"stored with another provider id than the provider gave: {sorted(wrong)[:5]}"
