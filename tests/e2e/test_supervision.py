"""bin/start.sh under fire: kill -9 each process in turn while clients keep sending, and occupy one
process's port so that it crash-loops. The supervisor alone, on stand-in processes, is
tests/unit/test_supervisor.py; SIGTERM of the whole stack is in test_stack.py."""

import asyncio
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import psycopg2
import pytest

from tests.e2e.stack import PORT_OF_PROCESS, Stack, launch, process_exists, stack_environment, stop
from tests.factories import eventually
from tests.faults.load import Load, email_sends, interleave, sms_sends

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.slow]

# The gateway last: while it is down clients are refused, which the other phases must never see.
KILL_ORDER = ("sms_provider", "email_provider", "conversation_service", "sms_service", "email_service", "gateway")
# A send every PACE seconds: a steady trickle across every kill, light on a shared machine.
PACE_SECONDS = 0.05
BACK_WITHIN_SECONDS = 60.0
FINAL = ("sent", "delivered", "failed")


async def probe(session: aiohttp.ClientSession, url: str, path: str) -> int | None:
    try:
        async with session.get(f"{url}{path}", timeout=aiohttp.ClientTimeout(total=5)) as response:
            return response.status
    except (aiohttp.ClientError, TimeoutError):
        return None


def stored(database_url: str) -> dict[str, list[str]]:
    """Each stored message's statuses by id (a list, so a message stored twice shows twice)."""
    with psycopg2.connect(database_url) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT id::text, status FROM messages")
        rows = cursor.fetchall()
    connection.close()
    by_id: dict[str, list[str]] = {}
    for message_id, status in rows:
        by_id.setdefault(message_id, []).append(status)
    return by_id


async def accepted_more(load: Load, than: int) -> None:
    async def more() -> bool:
        return load.count() > than

    await eventually(more, f"more than {than} sends accepted", timeout=30)


async def kill_each_in_turn(stack: Stack, session: aiohttp.ClientSession, load: Load) -> float:
    """Kill -9 every process once, each after the one before is back; when the gateway's kill began."""
    await accepted_more(load, than=20)
    gateway_down_from = float("inf")
    for name in KILL_ORDER:
        (*_, pid) = stack.pids_of(name)
        starts = len(stack.pids_of(name))
        accepted = load.count()
        if name == "gateway":
            gateway_down_from = time.monotonic()
        os.kill(pid, signal.SIGKILL)

        async def reaped(pid: int = pid) -> bool:
            return not process_exists(pid)

        await eventually(reaped, f"{name} gone", timeout=10)
        others = {
            other: await probe(session, stack.url_of(other), "/healthz") for other in PORT_OF_PROCESS if other != name
        }
        assert others == dict.fromkeys(others, 200), f"with {name} killed: {others}"

        async def back(name: str = name, starts: int = starts) -> bool:
            return len(stack.pids_of(name)) > starts and await probe(session, stack.url_of(name), "/readyz") == 200

        await eventually(back, f"{name} restarted and ready", timeout=BACK_WITHIN_SECONDS, interval=0.2)
        assert f"[supervise] {name} was killed by SIGKILL; restarting it in 1s (crash 1 of 5" in stack.text()
        # Clients are served again (and, but for the gateway's own restart, never stopped being).
        await accepted_more(load, than=accepted + 5)
    return gateway_down_from


async def test_each_process_killed_in_turn_is_restarted_while_the_rest_keep_serving(
    stack: Stack, database_url: str
) -> None:
    async with aiohttp.ClientSession() as session:
        requests = interleave(sms_sends(20_000), email_sends(20_000))
        load = Load(session, stack.base_url, requests, concurrency=1, pause=PACE_SECONDS).start()
        try:
            gateway_down_from = await kill_each_in_turn(stack, session, load)
        finally:
            load.stop()
            answers = await load.finished()

    # A send in flight when the gateway was killed is lost with it: only those answered before count.
    refused = [a for a in answers if not a.accepted and a.finished < gateway_down_from]
    assert refused == [], f"{len(refused)} sends refused while the gateway was up: {refused[:3]}"
    accepted_ids = {a.message_id for a in answers if a.accepted and a.message_id}
    assert len(accepted_ids) == sum(a.accepted for a in answers)
    assert stack.process.returncode is None, "the stack stopped"

    async def all_stored_with_an_outcome() -> dict[str, list[str]] | None:
        by_id = await asyncio.to_thread(stored, database_url)
        settled = all(set(by_id.get(i, [])) & set(FINAL) for i in accepted_ids)
        return by_id if settled else None

    try:
        by_id = await eventually(all_stored_with_an_outcome, "every accepted send stored and sent", timeout=120)
    except AssertionError:
        by_id = stored(database_url)
        missing = [i for i in accepted_ids if i not in by_id]
        pending = {i: by_id[i] for i in accepted_ids if i in by_id and not set(by_id[i]) & set(FINAL)}
        raise AssertionError(f"{len(missing)} accepted sends not stored, {len(pending)} without an outcome") from None
    assert {i: statuses for i, statuses in by_id.items() if len(statuses) > 1} == {}
    assert accepted_ids <= set(by_id)
    print(f"\n{len(accepted_ids)} sends accepted across {len(KILL_ORDER)} kills; every one stored once")


@pytest.fixture
def occupied_port() -> Iterator[socket.socket]:
    """A listening socket nobody answers on: a process told to bind its port fails at start-up."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock


async def test_a_process_that_keeps_crashing_is_given_up_on_and_the_stack_stops(
    database_url: str,
    database_owner_url: str,
    amqp_url: str,
    broker_namespace: str,
    tmp_path: Path,
    occupied_port: socket.socket,
) -> None:
    port = occupied_port.getsockname()[1]
    env = stack_environment(
        database_url,
        database_owner_url,
        amqp_url,
        broker_namespace,
        SUPERVISE_BACKOFF_INITIAL_SECONDS="0.2",
        # The stack can never get ready: the crash loop, not the start-up check's deadline, must end it,
        # however slowly a busy machine starts the five attempts.
        START_TIMEOUT_SECONDS="600",
        CONVERSATION_SERVICE_PORT=str(port),
        CONVERSATION_SERVICE_URL=f"http://127.0.0.1:{port}",
    )
    stack = await launch(env, tmp_path / "stack.log")
    try:
        status = await asyncio.wait_for(stack.process.wait(), 300)
    finally:
        await stop(stack)

    text = stack.text()
    assert status == 1, text[-5000:]
    assert len(stack.pids_of("conversation_service")) == 5
    assert "restarting it in 0.2s (crash 1 of 5 allowed within 60s)" in text
    assert "restarting it in 1.6s (crash 4 of 5 allowed within 60s)" in text
    assert (
        "[supervise] conversation_service exited with status 1; it crashed 5 times within 60s, "
        "so it is given up on and the stack stops"
    ) in text
    assert "[supervise] every process stopped" in text
    # The others were never restarted: they did not crash, they were stopped.
    assert all(len(stack.pids_of(name)) == 1 for name in PORT_OF_PROCESS if name != "conversation_service")
