"""Run the stack's processes, restart one that dies, and stop them all on SIGINT or SIGTERM.

    supervise.py [--when-started COMMAND...] --service NAME COMMAND... [--service NAME COMMAND...]

Every line a process prints comes out prefixed with `[NAME] `; the supervisor's own lines with
`[supervise] `. A process that exits while the stack is not stopping is restarted after a backoff
that doubles with each crash of the recent window (SUPERVISE_BACKOFF_INITIAL_SECONDS, at most
SUPERVISE_BACKOFF_MAX_SECONDS); one that crashes SUPERVISE_CRASH_LIMIT times within
SUPERVISE_CRASH_WINDOW_SECONDS is given up on, and then the whole stack stops with status 1: a
stack without one of its processes looks alive while messages pile up or go unread, so it is
better seen dead than trusted. The `--when-started` command runs once everything is started
(start.sh waits for readiness with it); if it fails, the stack stops with status 1 too.

Stopping sends SIGTERM to every process, then SIGKILL to those still running after
SUPERVISE_STOP_GRACE_SECONDS. On Linux each process also gets SIGTERM from the kernel if the
supervisor itself is killed, so a `kill -9` of the supervisor leaves no orphans serving.
"""

import asyncio
import ctypes
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

# Long JSON log lines (a stack trace in one record) must not break the line reader.
LINE_LIMIT_BYTES = 1 << 20
PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Policy:
    backoff_initial_seconds: float = 1.0
    backoff_max_seconds: float = 30.0
    crash_limit: int = 5
    crash_window_seconds: float = 60.0
    stop_grace_seconds: float = 20.0

    @classmethod
    def from_environment(cls) -> "Policy":
        def number(name: str, default: float) -> float:
            value = os.environ.get(f"SUPERVISE_{name}")
            return float(value) if value else default

        defaults = cls()
        return cls(
            backoff_initial_seconds=number("BACKOFF_INITIAL_SECONDS", defaults.backoff_initial_seconds),
            backoff_max_seconds=number("BACKOFF_MAX_SECONDS", defaults.backoff_max_seconds),
            crash_limit=int(number("CRASH_LIMIT", defaults.crash_limit)),
            crash_window_seconds=number("CRASH_WINDOW_SECONDS", defaults.crash_window_seconds),
            stop_grace_seconds=number("STOP_GRACE_SECONDS", defaults.stop_grace_seconds),
        )


@dataclass
class Program:
    name: str
    command: Sequence[str]
    crashes: deque[float] = field(default_factory=deque)
    process: asyncio.subprocess.Process | None = None
    output: asyncio.Task[None] | None = None

    def recent_crashes(self, now: float, window: float) -> int:
        while self.crashes and now - self.crashes[0] > window:
            self.crashes.popleft()
        return len(self.crashes)


def say(message: str) -> None:
    try:
        print(f"[supervise] {message}", file=sys.stderr, flush=True)
    except BrokenPipeError:
        pass  # nobody reads the log any more; supervising goes on


def describe(status: int) -> str:
    if status < 0:
        return f"was killed by {signal.Signals(-status).name}"
    return f"exited with status {status}"


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Supervisor:
    def __init__(self, programs: Sequence[Program], policy: Policy, when_started: Sequence[str] | None) -> None:
        self._programs = programs
        self._policy = policy
        self._when_started = when_started
        self._stopping = asyncio.Event()
        self._status = 0

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self._stop_requested, signum)
        watchers = []
        for program in self._programs:
            await self._start(program, "started")
            watchers.append(asyncio.create_task(self._watch(program)))
        if self._when_started:
            watchers.append(asyncio.create_task(self._run_when_started(self._when_started)))
        await self._stopping.wait()
        # No restart may begin once the processes are being stopped.
        for watcher in watchers:
            watcher.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
        await self._stop_all()
        return self._status

    def _stop_requested(self, signum: int) -> None:
        if not self._stopping.is_set():
            say(f"{signal.Signals(signum).name}: stopping {len(self._programs)} processes")
        self._stopping.set()

    def _fail(self, message: str) -> None:
        say(message)
        self._status = 1
        self._stopping.set()

    async def _start(self, program: Program, how: str) -> None:
        program.process = await asyncio.create_subprocess_exec(
            *program.command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            limit=LINE_LIMIT_BYTES,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        program.output = asyncio.create_task(_relay(program.name, program.process))
        say(f"{program.name} {how} (pid {program.process.pid})")

    async def _watch(self, program: Program) -> None:
        """Restart the program whenever it exits, until the stack stops or the program is given up on."""
        policy = self._policy
        while True:
            assert program.process is not None and program.output is not None
            status = await program.process.wait()
            await program.output
            if self._stopping.is_set():
                return
            now = time.monotonic()
            program.crashes.append(now)
            crashes = program.recent_crashes(now, policy.crash_window_seconds)
            if crashes >= policy.crash_limit:
                self._fail(
                    f"{program.name} {describe(status)}; it crashed {crashes} times within "
                    f"{policy.crash_window_seconds:g}s, so it is given up on and the stack stops"
                )
                return
            delay = min(policy.backoff_initial_seconds * 2 ** (crashes - 1), policy.backoff_max_seconds)
            say(
                f"{program.name} {describe(status)}; restarting it in {delay:g}s "
                f"(crash {crashes} of {policy.crash_limit} allowed within {policy.crash_window_seconds:g}s)"
            )
            try:
                await asyncio.wait_for(self._stopping.wait(), delay)
                return
            except TimeoutError:
                pass
            await self._start(program, "restarted")

    async def _run_when_started(self, command: Sequence[str]) -> None:
        process = await asyncio.create_subprocess_exec(*command, stdin=asyncio.subprocess.DEVNULL)
        try:
            status = await process.wait()
        except asyncio.CancelledError:
            process.terminate()
            await process.wait()
            raise
        if status != 0 and not self._stopping.is_set():
            self._fail(f"{' '.join(command)} {describe(status)}; stopping the stack")

    async def _stop_all(self) -> None:
        running = [p for p in self._programs if p.process is not None and p.process.returncode is None]
        for program in running:
            assert program.process is not None
            program.process.terminate()
        grace = self._policy.stop_grace_seconds
        deadline = time.monotonic() + grace
        for program in running:
            assert program.process is not None
            try:
                await asyncio.wait_for(program.process.wait(), max(deadline - time.monotonic(), 0))
            except TimeoutError:
                say(f"{program.name} did not stop within {grace:g}s of SIGTERM; killing it")
                program.process.kill()
                await program.process.wait()
        for program in self._programs:
            if program.output is not None:
                await program.output
        say("every process stopped")


async def _relay(name: str, process: asyncio.subprocess.Process) -> None:
    assert process.stdout is not None
    prefix = f"[{name}] ".encode()
    out = sys.stdout.buffer
    while True:
        try:
            line = await process.stdout.readline()
        except ValueError:
            # A line longer than the limit: pass on what the reader holds rather than lose it.
            line = await process.stdout.read(LINE_LIMIT_BYTES) + b"\n"
        if not line:
            return
        try:
            out.write(prefix + (line if line.endswith(b"\n") else line + b"\n"))
            out.flush()
        except BrokenPipeError:
            # Whoever read the log is gone (`make run | head`); reading on keeps the process from
            # blocking on a full pipe.
            continue


def parse_arguments(arguments: Sequence[str]) -> tuple[list[Program], list[str] | None]:
    programs: list[Program] = []
    when_started: list[str] | None = None
    current: list[str] | None = None
    for argument in arguments:
        if argument == "--service":
            current = []
            programs.append(Program("", current))
        elif argument == "--when-started":
            current = when_started = []
        elif current is None:
            raise SystemExit(f"supervise: unexpected {argument!r}; usage:\n{__doc__}")
        elif current is not when_started and not programs[-1].name:
            programs[-1].name = argument
        else:
            current.append(argument)
    if not programs or any(not program.name or not program.command for program in programs):
        raise SystemExit(f"supervise: every --service needs a name and a command; usage:\n{__doc__}")
    return programs, when_started


def main() -> int:
    programs, when_started = parse_arguments(sys.argv[1:])
    return asyncio.run(Supervisor(programs, Policy.from_environment(), when_started).run())


if __name__ == "__main__":
    sys.exit(main())
