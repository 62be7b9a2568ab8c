"""bin/supervise.py on small stand-in processes: restarts with backoff, gives up on a crash loop,
and stops everything on SIGTERM, killing what outstays the grace. The real stack under it is
tests/e2e/test_supervision.py."""

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from tests.factories import eventually

ROOT = Path(__file__).resolve().parents[2]

# Prints its pid, then serves until SIGTERM, which it reports; with the argument `ignore-term` it
# outstays a stop instead.
SERVER = """
import os, signal, sys, time
if sys.argv[1:] == ["ignore-term"]:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
else:
    signal.signal(signal.SIGTERM, lambda *_: (print("got SIGTERM", flush=True), sys.exit(0)))
print(f"serving as {os.getpid()}", flush=True)
while True:
    time.sleep(0.05)
"""
CRASHER = "import sys; print('crashing', flush=True); sys.exit(3)"


class Run:
    def __init__(self, process: asyncio.subprocess.Process, log: Path) -> None:
        self.process = process
        self.log = log

    def text(self) -> str:
        return self.log.read_text()

    async def shows(self, fragment: str, count: int = 1, timeout: float = 15.0) -> None:  # noqa: ASYNC109
        async def seen() -> bool:
            return self.text().count(fragment) >= count

        await eventually(seen, f"{fragment!r} x{count} in\n{self.text()}", timeout=timeout)

    def pids_of(self, name: str) -> list[int]:
        prefix = f"[{name}] serving as "
        return [int(line.removeprefix(prefix)) for line in self.text().splitlines() if line.startswith(prefix)]

    async def exit_status(self, within: float = 15.0) -> int:
        return await asyncio.wait_for(self.process.wait(), within)


Supervise = Callable[..., Awaitable[Run]]


@pytest.fixture
async def supervise(tmp_path: Path) -> AsyncIterator[Supervise]:
    runs: list[Run] = []

    async def start(*arguments: str, **environment: str) -> Run:
        log = tmp_path / f"supervise-{len(runs)}.log"
        with log.open("wb") as output:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                str(ROOT / "bin" / "supervise.py"),
                *arguments,
                env={
                    **os.environ,
                    "SUPERVISE_BACKOFF_INITIAL_SECONDS": "0.1",
                    "SUPERVISE_STOP_GRACE_SECONDS": "2",
                    **environment,
                },
                stdout=output,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        run = Run(process, log)
        runs.append(run)
        return run

    yield start
    for run in runs:
        if run.process.returncode is None:
            os.killpg(run.process.pid, signal.SIGKILL)
            await run.process.wait()


def service(name: str, code: str, *arguments: str) -> list[str]:
    return ["--service", name, sys.executable, "-c", code, *arguments]


async def test_a_killed_process_is_restarted_with_backoff_and_the_others_keep_running(supervise: Supervise) -> None:
    run = await supervise(*service("api", SERVER), *service("worker", SERVER))
    await run.shows("[api] serving as")
    await run.shows("[worker] serving as")
    (api,) = run.pids_of("api")
    (worker,) = run.pids_of("worker")

    os.kill(api, signal.SIGKILL)
    await run.shows("[supervise] api was killed by SIGKILL; restarting it in 0.1s (crash 1 of 5")
    await run.shows("[api] serving as", count=2)
    os.kill(run.pids_of("api")[1], signal.SIGKILL)
    await run.shows("[supervise] api was killed by SIGKILL; restarting it in 0.2s (crash 2 of 5")
    await run.shows("[api] serving as", count=3)

    assert run.pids_of("worker") == [worker]
    os.kill(worker, 0)  # still the same process, still running
    assert run.process.returncode is None


async def test_a_crash_loop_is_given_up_on_and_stops_the_stack_with_status_1(supervise: Supervise) -> None:
    run = await supervise(*service("steady", SERVER), *service("broken", CRASHER), SUPERVISE_CRASH_LIMIT="3")

    assert await run.exit_status() == 1
    text = run.text()
    assert text.count("[broken] crashing") == 3
    assert "restarting it in 0.1s (crash 1 of 3" in text
    assert "restarting it in 0.2s (crash 2 of 3" in text
    assert "broken exited with status 3; it crashed 3 times within 60s, so it is given up on" in text
    assert "so it is given up on and the stack stops" in text
    assert "[steady] got SIGTERM" in text


async def test_sigterm_stops_every_process_and_kills_one_that_outstays_the_grace(supervise: Supervise) -> None:
    run = await supervise(*service("polite", SERVER), *service("stubborn", SERVER, "ignore-term"))
    await run.shows("[polite] serving as")
    await run.shows("[stubborn] serving as")
    (polite,) = run.pids_of("polite")
    (stubborn,) = run.pids_of("stubborn")

    run.process.send_signal(signal.SIGTERM)

    assert await run.exit_status() == 0
    text = run.text()
    assert "[supervise] SIGTERM: stopping 2 processes" in text
    assert "[polite] got SIGTERM" in text
    assert "[supervise] stubborn did not stop within 2s of SIGTERM; killing it" in text
    assert "polite did not stop" not in text and "restarting" not in text
    for pid in (polite, stubborn):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


async def test_a_failing_start_up_check_stops_the_stack(supervise: Supervise) -> None:
    run = await supervise("--when-started", sys.executable, "-c", "raise SystemExit(2)", *service("api", SERVER))

    assert await run.exit_status() == 1
    assert "exited with status 2; stopping the stack" in run.text()
    # Not "[api] got SIGTERM": the check may fail before the api has its handler in place.
    assert "[supervise] every process stopped" in run.text()
