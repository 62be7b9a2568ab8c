"""Measure a running stack (bin/start.sh, development profile) and print one Markdown table (`make bench`).

Scenarios (--scenarios, all by default):
  ingest         N inbound SMS webhooks at C in flight, timed until the last one is a row in
                 PostgreSQL; run alternately with the reference, ../shared/bench/naive_pipeline.py (the
                 same pipeline written plainly, which this starts itself in MODE=batch on its own
                 port and database), for --rounds rounds, and the ratio of each round. Each side
                 first takes --warmup webhooks, unmeasured: a stack just started has its address
                 owners and its pool's connections still to fetch.
  sends          N sends, timed until every one is `sent` (or already `delivered`) in the messages table.
  conversations  GET /api/conversations?limit=50 and the pages its cursors lead to, 16 connections;
                 run alternately with the floor, bin/read_floor.py (the same pages through the same
                 two hops, libraries and statements, with none of the stack's own code), which this
                 starts itself on --floor-port and the next port, for --read-rounds rounds, and the
                 ratio of each round.
  messages       the same over the pages of the largest conversation's messages.

wrk (`apt-get install -y wrk`) loads every scenario, the writes with ../shared/bench/ingest.py's
requests. The reads expect `make seed` to have run: at least --seeded-messages messages, and a
conversation of a tenth of that (100,000 at most). For each scenario the table gives throughput,
p50 and p99 latency, the load generator's own CPU (share of one core: near 100% it, not the stack,
is the limit), and CPU seconds per 1,000 messages (or requests) of every process: the stack's (the
supervisor and its children, found from the process listening on the gateway's port), the
reference's, the floor's, PostgreSQL's (its background processes and the backends of the database measured)
and RabbitMQ's (whole: on a machine others use, it includes their work), from utime+stime, and
that of reaped children, in /proc/<pid>/stat before and after. Its last row is each column's peak
RSS (VmHWM, the largest process of the column). Every run adds its messages to the databases.

Ports and databases come from the same settings the stack reads (environment, then .env).
"""

import argparse
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import psycopg2
from yarl import URL

from common.accounts import DEVELOPMENT_ACCOUNT_ID
from common.settings import ServiceSettings
from conversation_service.settings import MigrationSettings
from gateway.settings import GatewaySettings

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ("ingest", "sends", "conversations", "messages")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE = 50
BIG_CONVERSATION = 100_000

# Processes


@dataclass(frozen=True)
class Group:
    """A column of the table: processes counted together (replicas of one service, a server's workers)."""

    name: str
    roots: tuple[int, ...]
    # The supervisor's children have columns of their own.
    with_descendants: bool = True
    # PostgreSQL serves others too: only its background processes and the backends connected to this
    # database count, and not what the postmaster reaped (backends of any database that ended).
    database: str | None = None


def _stat(pid: int) -> tuple[str, int, float, float] | None:
    """A process's name, parent, CPU seconds, and those of the children it reaped; None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name, rest = text[text.index("(") + 1 : text.rindex(")")], text[text.rindex(")") + 2 :].split()
    utime, stime, cutime, cstime = (int(value) for value in rest[11:15])
    return name, int(rest[1]), (utime + stime) / CLOCK_TICKS, (cutime + cstime) / CLOCK_TICKS


def _processes() -> dict[int, tuple[str, int, float, float]]:
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))) is not None:
            found[int(entry)] = stat
    return found


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _peak_rss_kib(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    found = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    return int(found.group(1)) if found else 0


def _members(group: Group, processes: dict[int, tuple[str, int, float, float]]) -> Iterator[int]:
    children = defaultdict(list)
    for pid, (_, parent, *_) in processes.items():
        children[parent].append(pid)
    pending = [pid for pid in group.roots if pid in processes]
    while pending:
        pid = pending.pop()
        yield pid
        if group.with_descendants:
            pending.extend(child for child in children[pid] if group.database is None or _serves(child, group.database))


def _serves(pid: int, database: str) -> bool:
    """Whether a PostgreSQL server process works for `database`: the server's own (checkpointer, WAL
    writer...) do for all; a backend (`user database host(port) state`) or an autovacuum worker for one."""
    words = " ".join(_cmdline(pid)).split(": ")[-1].split()
    if len(words) >= 3 and ("(" in words[2] or words[2] == "[local]"):
        return words[1] == database
    if words[:2] == ["autovacuum", "worker"]:
        return words[2:3] == [database]
    return True


def cpu_seconds(groups: Sequence[Group]) -> dict[str, float]:
    processes = _processes()

    def cpu(group: Group, pid: int) -> float:
        _, _, own, reaped = processes[pid]
        return own if group.database is not None and pid in group.roots else own + reaped

    return {group.name: sum(cpu(group, pid) for pid in _members(group, processes)) for group in groups}


def peak_rss_mib(groups: Sequence[Group]) -> dict[str, float]:
    processes = _processes()
    return {
        group.name: max((_peak_rss_kib(pid) for pid in _members(group, processes)), default=0) / 1024
        for group in groups
    }


def _listener(port: int) -> int | None:
    """The process listening on a TCP port of this machine."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            descriptors = os.listdir(f"/proc/{entry}/fd")
            if any(os.readlink(f"/proc/{entry}/fd/{fd}") in inodes for fd in descriptors):
                return int(entry)
        except OSError:
            continue
    return None


def _label(command: list[str]) -> str:
    module = command[command.index("-m") + 1] if "-m" in command[:-1] else Path(command[-1] or "?").name
    return module.replace("_service", "").replace(".mock_provider", " mock")


def stack_groups(gateway_port: int, database: str) -> list[Group]:
    """The supervisor above the gateway's listener, each of its children, PostgreSQL (for `database`)
    and RabbitMQ."""
    processes = _processes()
    pid = _listener(gateway_port)
    while pid is not None and pid > 1 and not any(part.endswith("supervise.py") for part in _cmdline(pid)):
        pid = processes[pid][1] if pid in processes else None
    if pid is None or pid <= 1:
        raise SystemExit(f"no bin/supervise.py runs the process on port {gateway_port}: start the stack (make run)")
    by_label: dict[str, list[int]] = defaultdict(list)
    for child, (_, parent, *_) in processes.items():
        if parent == pid:
            by_label[_label(_cmdline(child))].append(child)
    groups = [Group(label, tuple(pids)) for label, pids in sorted(by_label.items())]
    groups.append(Group("supervise", (pid,), with_descendants=False))
    postmasters = tuple(
        p
        for p, (name, parent, *_) in processes.items()
        if name == "postgres" and processes.get(parent, ("",))[0] != name
    )
    rabbit = tuple(
        p for p, (name, *_) in processes.items() if name == "beam.smp" and any("rabbit" in a for a in _cmdline(p))
    )
    return [*groups, Group("postgres", postmasters, database=database), Group("rabbitmq", rabbit)]


# Loads


@dataclass
class Row:
    scenario: str
    # Per second; or, for a row that compares, what it says.
    rate: float | str
    p50_ms: float | None = None
    p99_ms: float | None = None
    loader_core: float | None = None
    cpu_per_1k: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Stored:
    """How many of a write load's rows are in PostgreSQL: one connection, asked every 50 ms, on an
    indexed column past where the table ended before the load (a count of the whole table would cost
    PostgreSQL more than the load does)."""

    dsn: str
    sql: str
    parameters: tuple[object, ...]
    expected: int


def measured(
    scenario: str, groups: Sequence[Group], command: Sequence[str], *, stored: Stored | None = None, timeout: float
) -> Row:
    """Run wrk to its end, and for writes until every row is stored, with every group's CPU and the
    load generator's own (wrk's, and this process's polling) around it."""
    before, loader_before, started = cpu_seconds(groups), _loader_cpu(), time.monotonic()
    wrk = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        stored_in = None
        if stored is not None:
            stored_in = _wait_stored(stored, started, started + timeout, wrk)
            # wrk runs for its whole duration, even with every thread stopped; SIGINT ends it and it
            # reports. A row is stored well after its request was answered, so no answer is cut off.
            wrk.send_signal(signal.SIGINT)
        output, _ = wrk.communicate(timeout=max(started + timeout - time.monotonic(), 1) + 5)
    finally:
        if wrk.poll() is None:
            wrk.kill()
    wall, loader = time.monotonic() - started, _loader_cpu() - loader_before
    after = cpu_seconds(groups)
    if wrk.returncode != 0 or "Non-2xx" in output or "Socket errors" in output or "failed 0" not in output:
        raise SystemExit(
            f"{scenario}: some requests failed:\n{' '.join(command)}\n{output}\n"
            "(reads all act for the development account: past RATE_LIMIT_PER_SECOND the gateway answers 429; "
            "start the stack under bench with it and RATE_LIMIT_BURST raised, as README's Benchmark says)"
        )
    requests = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    count = stored.expected if stored is not None else requests
    if requests != count:
        raise SystemExit(f"{scenario}: {count:,} rows stored but wrk saw {requests:,} answers:\n{output}")
    return Row(
        scenario,
        count / stored_in if stored_in is not None else rate,
        _wrk_ms(output, "50"),
        _wrk_ms(output, "99"),
        loader / wall,
        {name: (after[name] - before[name]) / count * 1000 for name in after},
    )


def _wait_stored(stored: Stored, started: float, deadline: float, wrk: subprocess.Popen[str]) -> float:
    """Seconds from the load's start until its last row was stored."""
    connection = psycopg2.connect(stored.dsn)
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            while True:
                cursor.execute(stored.sql, stored.parameters)
                (count,) = cursor.fetchone()
                if count >= stored.expected:
                    return time.monotonic() - started
                if time.monotonic() > deadline or wrk.poll() not in (None, 0):
                    raise SystemExit(
                        f"only {count:,} of {stored.expected:,} messages were stored in time; wrk said:\n"
                        f"{wrk.communicate()[0] if wrk.poll() is not None else ''}"
                    )
                time.sleep(0.05)
    finally:
        connection.close()


def _loader_cpu() -> float:
    """wrk's (a finished child) and this process's own."""
    children, own = resource.getrusage(resource.RUSAGE_CHILDREN), resource.getrusage(resource.RUSAGE_SELF)
    return children.ru_utime + children.ru_stime + own.ru_utime + own.ru_stime


def _wrk_ms(output: str, percentile: str) -> float:
    value, unit = re.search(rf"^\s+{percentile}%\s+([\d.]+)(us|ms|s)\s*$", output, re.MULTILINE).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def fetch_one(dsn: str, sql: str, *parameters: object) -> tuple[Any, ...] | None:
    with psycopg2.connect(dsn) as connection, connection.cursor() as cursor:
        cursor.execute(sql, parameters)
        row = cursor.fetchone()
    connection.close()
    return row


# The reference


class Reference:
    """naive_pipeline.py in MODE=batch on its own port and database, on the stack's broker."""

    def __init__(self, reference_dir: Path, port: int, admin_url: str, database: str, amqp_url: str) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.dsn = str(URL(admin_url).with_path(f"/{database}"))
        self._admin_url, self._database = admin_url, database
        self._command = [sys.executable, str(reference_dir / "naive_pipeline.py")]
        self._environment = {**os.environ, "MODE": "batch", "PORT": str(port), "NAIVE_DSN": self.dsn}
        self._environment["NAIVE_AMQP"] = amqp_url
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> "Reference":
        if _answers(f"{self.url}/count"):
            raise SystemExit(f"something already answers on {self.url}: pick another --reference-port")
        connection = psycopg2.connect(self._admin_url)
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self._database,))
            if cursor.fetchone() is None:
                cursor.execute(f'CREATE DATABASE "{self._database}"')
        connection.close()
        self.process = subprocess.Popen(self._command, env=self._environment, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not _answers(f"{self.url}/count"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise SystemExit(f"the reference ({' '.join(self._command)}) did not start on {self.url}")
            time.sleep(0.2)
        return self

    def __exit__(self, *_: object) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)

    @property
    def group(self) -> Group:
        assert self.process is not None
        return Group("reference", (self.process.pid,))


class ReadFloor:
    """bin/read_floor.py's relay and reader, on the stack's database with its runtime role: the pages'
    floor, the same hops, libraries and statements without the stack's own code."""

    def __init__(self, relay_port: int, database_url: str, pool_size: int) -> None:
        self.url = f"http://127.0.0.1:{relay_port}"
        script = [sys.executable, str(ROOT / "bin" / "read_floor.py")]
        reader = ["--port", str(relay_port + 1), "--database-url", database_url, "--pool-size", str(pool_size)]
        self._commands = [
            [*script, "reader", *reader],
            [*script, "relay", "--port", str(relay_port), "--upstream", f"http://127.0.0.1:{relay_port + 1}"],
        ]
        self.processes: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> "ReadFloor":
        probe = f"{self.url}/api/conversations?limit=1"
        if _answers(probe):
            raise SystemExit(f"something already answers on {self.url}: pick another --floor-port")
        self.processes = [subprocess.Popen(command, stdout=subprocess.DEVNULL) for command in self._commands]
        deadline = time.monotonic() + 30
        while not _answers(probe):
            if any(process.poll() is not None for process in self.processes) or time.monotonic() > deadline:
                self.__exit__()
                raise SystemExit(f"the read floor (bin/read_floor.py) did not start on {self.url}")
            time.sleep(0.2)
        return self

    def __exit__(self, *_: object) -> None:
        for process in self.processes:
            process.terminate()
            process.wait(timeout=10)

    @property
    def group(self) -> Group:
        return Group("floor", tuple(process.pid for process in self.processes))


def say(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


# Reads


def page_paths(base_url: str, first: str, key: str, pages: int) -> list[str]:
    """The first `pages` pages' paths, each found by following the cursor of the one before."""
    paths, cursor = [], None
    while len(paths) < pages:
        path = first + (f"&cursor={urllib.parse.quote(cursor)}" if cursor else "")
        with urllib.request.urlopen(base_url + path, timeout=30) as response:
            body = json.load(response)
        paths.append(path)
        if len(body[key]) != PAGE or not (cursor := body["next_cursor"]):
            break
    return paths


# Every wrk script counts the answers that are not the expected status (wrk itself reports only
# those outside 2xx), and a write load stops each thread once its share is answered.
_LUA_COMMON = """
local threads, next_offset = {}, 0
function setup(thread)
  thread:set("offset", next_offset)
  next_offset = next_offset + 1
  table.insert(threads, thread)
end
answered, failed = 0, 0
function response(status, headers, body)
  answered = answered + 1
  if status ~= %(expected)d then failed = failed + 1 end
  if quota and answered >= quota then wrk.thread:stop() end
end
function done(summary, latency, requests)
  local total = 0
  for _, thread in ipairs(threads) do total = total + thread:get("failed") end
  io.write(string.format("failed %%d\\n", total))
end
"""
# Each thread posts its share of the numbered requests; a connection whose thread has handed out its
# share waits (delay) instead of sending another.
_LUA_WRITES = """
local path, template, total, thread_count = %(path)s, %(template)s, %(total)d, %(threads)d
local counterparts = %(pairs)d
local headers = {["Content-Type"] = "application/json"}
local reserved, issued = 0, 0
function init(args)
  quota = math.floor((total - offset + thread_count - 1) / thread_count)
end
function delay()
  if reserved < quota then
    reserved = reserved + 1
    return 0
  end
  return 3600000
end
function request()
  local i = issued * thread_count + offset
  issued = issued + 1
  return wrk.format("POST", path, headers, string.format(template, i %% counterparts, i, i))
end
"""
# Each thread cycles through the pages from a place of its own.
_LUA_READS = """
local paths = {%(paths)s}
local i = 0
function init(args)
  math.randomseed(os.time() + offset * 7919)
  i = math.random(#paths)
end
function request()
  i = i %% #paths + 1
  return wrk.format("GET", paths[i])
end
"""


def _wrk(
    base_url: str, connections: int, seconds: float, script_dir: Path, name: str, script: str, expected: int
) -> list[str]:
    path = script_dir / f"{name}.lua"
    path.write_text(_LUA_COMMON % {"expected": expected} + script)
    threads = min(connections, os.cpu_count() or 1)
    # wrk counts an answer slower than its timeout (2 s unless told) as an error: a slow stack is measured, not failed.
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{int(seconds)}s", "--timeout", "60s", "--latency"]
    return [*command, "-s", str(path), base_url]


def read_command(base_url: str, paths: list[str], connections: int, seconds: int, script_dir: Path) -> list[str]:
    script = _LUA_READS % {"paths": ", ".join(json.dumps(path) for path in paths)}
    return _wrk(base_url, connections, seconds, script_dir, "reads", script, 200)


# The requests of ../shared/bench/ingest.py: `%d`s are the counterpart (of PAIRS), then the request's number.
PAIRS = 200
WEBHOOK = (
    "/api/webhooks/sms",
    '{"from": "+1804555%%04d", "to": "+12016661234", "type": "sms", "messaging_provider_id": "%(run)s-%%d", '
    '"body": "%(run)s %%d", "attachments": null, "timestamp": "2024-11-01T14:00:00Z"}',
)
SEND = (
    "/api/messages/sms",
    '{"from": "+12016661234", "to": "+1804555%%04d", "type": "sms", "body": "%(run)s %%d", "attachments": null}',
)


def write_command(
    base_url: str, request: tuple[str, str], run: str, total: int, connections: int, timeout: float, script_dir: Path
) -> list[str]:
    path, template = request
    script = _LUA_WRITES % {
        "path": json.dumps(path),
        "template": json.dumps(template % {"run": run}),
        "total": total,
        "threads": min(connections, os.cpu_count() or 1),
        "pairs": PAIRS,
    }
    return _wrk(base_url, connections, timeout, script_dir, f"writes-{run}", script, 202)


# The table


def table(rows: list[Row], columns: list[str], rss: dict[str, float]) -> str:
    header = ["scenario", "throughput", "p50 ms", "p99 ms", "loader CPU", *columns, "total"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]

    def number(value: float | None, digits: int = 1) -> str:
        return "" if value is None else f"{value:.{digits}f}"

    for row in rows:
        cpu = [number(row.cpu_per_1k.get(name), 2) if name in row.cpu_per_1k else "" for name in columns]
        total = number(sum(row.cpu_per_1k.values()), 2) if row.cpu_per_1k else ""
        loader = f"{row.loader_core:.0%}" if row.loader_core is not None else ""
        rate = f"{row.rate:,.0f}/s" if isinstance(row.rate, float) else row.rate
        lines.append(
            f"| {row.scenario} | {rate} | {number(row.p50_ms)} | {number(row.p99_ms)} | {loader} | "
            + " | ".join(cpu)
            + f" | {total} |"
        )
    lines.append("| peak RSS, MiB | | | | | " + " | ".join(f"{rss.get(name, 0):.0f}" for name in columns) + " | |")
    return "\n".join(lines)


def seeded(dsn: str, messages: int) -> tuple[int, int, int]:
    """The development account's messages, and its largest conversation's id and size, if seeded enough."""
    account = str(DEVELOPMENT_ACCOUNT_ID)
    (stored,) = fetch_one(dsn, "SELECT count(*) FROM messages WHERE account_id = %s", account) or (0,)
    big_id, big_size = fetch_one(
        dsn,
        "SELECT id, message_count FROM conversations WHERE account_id = %s ORDER BY message_count DESC LIMIT 1",
        account,
    ) or (0, 0)
    wanted_big = min(BIG_CONVERSATION, messages // 10)
    if stored < messages or big_size < wanted_big:
        raise SystemExit(
            f"the reads need {messages:,} messages and a conversation of {wanted_big:,}; the database holds "
            f"{stored:,} and its largest conversation {big_size:,}: run make seed (or give --seeded-messages)"
        )
    return stored, big_id, big_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated, of: " + ", ".join(SCENARIOS))
    parser.add_argument("--url", help="the gateway (default: http://127.0.0.1:GATEWAY_PORT)")
    parser.add_argument("--webhooks", type=int, default=5000, help="webhooks per ingest run (default 5000)")
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight for writes (default 64)")
    parser.add_argument("--rounds", type=int, default=3, help="ingest runs of the project and the reference each")
    parser.add_argument(
        "--warmup", type=int, default=1000, help="webhooks each side takes, unmeasured, before the ingest rounds"
    )
    parser.add_argument("--sends", type=int, default=2500, help="sends in the sends scenario (default 2500)")
    parser.add_argument("--connections", type=int, default=16, help="connections for reads (default 16)")
    parser.add_argument("--seconds", type=int, default=15, help="duration of each read scenario")
    parser.add_argument("--pages", type=int, default=400, help="distinct pages each read scenario cycles through")
    parser.add_argument(
        "--seeded-messages", type=int, default=1_000_000, help="messages the reads require stored (make seed)"
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds a write scenario may take to drain")
    parser.add_argument(
        "--reference-dir",
        type=Path,
        default=ROOT.parent / "shared" / "bench",
        help="where naive_pipeline.py is (default ../shared/bench)",
    )
    parser.add_argument("--reference-port", type=int, default=8090)
    parser.add_argument("--reference-database", default="naive", help="created if missing (default naive)")
    parser.add_argument("--read-rounds", type=int, default=2, help="runs of each read scenario and of its floor")
    parser.add_argument("--floor-port", type=int, default=8094, help="the read floor's relay; its reader the next")
    arguments = parser.parse_args()
    scenarios = [name.strip() for name in arguments.scenarios.split(",") if name.strip()]
    if unknown := set(scenarios) - set(SCENARIOS):
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")

    gateway = GatewaySettings()
    database = MigrationSettings()
    dsn = database.database_url
    base_url = arguments.url or f"http://127.0.0.1:{gateway.gateway_port}"
    if not _answers(f"{base_url}/readyz"):
        raise SystemExit(f"the gateway at {base_url} is not ready: start the stack (make run)")
    groups = stack_groups(URL(base_url).port or 80, URL(dsn).path.lstrip("/"))
    if "ingest" in scenarios and not (arguments.reference_dir / "naive_pipeline.py").is_file():
        raise SystemExit(f"no naive_pipeline.py in {arguments.reference_dir}: give --reference-dir")
    if shutil.which("wrk") is None:
        raise SystemExit("bench loads the stack with wrk, which is missing: apt-get install -y wrk")
    if {"conversations", "messages"} & set(scenarios):
        stored, big_id, big_size = seeded(dsn, arguments.seeded_messages)

    rows: list[Row] = []
    columns = [group.name for group in groups]
    rss: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as scripts:
        script_dir = Path(scripts)

        def write(
            scenario: str,
            url: str,
            request: tuple[str, str],
            total: int,
            count: str,
            target: str,
            measured_groups: Sequence[Group],
        ) -> Row:
            """Rows are counted past the largest `count` (an indexed column) stored before the load."""
            run = f"r{uuid.uuid4().hex[:10]}"
            (start,) = fetch_one(target, f"SELECT coalesce(max({count}), 0) FROM messages") or (0,)
            say(f"{scenario}...")
            command = write_command(url, request, run, total, arguments.concurrency, arguments.timeout, script_dir)
            sql = f"SELECT count(*) FROM messages WHERE {count} > %s AND body LIKE %s"
            if request is SEND:
                sql += " AND status IN ('sent', 'delivered')"
            stored = Stored(target, sql, (start, f"{run} %"), total)
            return measured(scenario, measured_groups, command, stored=stored, timeout=arguments.timeout)

        if "ingest" in scenarios:
            with Reference(
                arguments.reference_dir,
                arguments.reference_port,
                database.database_admin_url,
                arguments.reference_database,
                ServiceSettings().amqp_urls[0],
            ) as reference:
                postgres, rabbitmq = groups[-2:]
                reference_database = replace(postgres, database=arguments.reference_database)
                reference_groups = [reference.group, reference_database, rabbitmq]
                columns.insert(-2, "reference")
                ratios = []
                webhooks = f"{arguments.webhooks:,} webhooks at {arguments.concurrency} in flight"
                if arguments.warmup:
                    for url, count, target, measured_groups in (
                        (base_url, "seq", dsn, groups),
                        (reference.url, "id", reference.dsn, reference_groups),
                    ):
                        write("warm-up", url, WEBHOOK, arguments.warmup, count, target, measured_groups)
                for number in range(1, arguments.rounds + 1):
                    ours = write(
                        f"{webhooks}, project ({number})", base_url, WEBHOOK, arguments.webhooks, "seq", dsn, groups
                    )
                    theirs = write(
                        f"{webhooks}, reference ({number})",
                        reference.url,
                        WEBHOOK,
                        arguments.webhooks,
                        "id",
                        reference.dsn,
                        reference_groups,
                    )
                    rows += [ours, theirs]
                    ratios.append(float(ours.rate) / float(theirs.rate))
                rows.append(Row("ingest ratio, project / reference", ", ".join(f"{r:.2f}x" for r in ratios)))
                rss.update(peak_rss_mib([reference.group]))
        if "sends" in scenarios:
            rows.append(
                write(f"{arguments.sends:,} sends reaching `sent`", base_url, SEND, arguments.sends, "seq", dsn, groups)
            )
        reads = [name for name in ("conversations", "messages") if name in scenarios]
        if reads:
            with ReadFloor(arguments.floor_port, database.database_url, database.database_pool_size) as floor:
                columns.insert(-2, "floor")
                postgres = groups[-2]
                floor_groups = [floor.group, postgres]
                for scenario in reads:
                    if scenario == "conversations":
                        first, key, title = f"/api/conversations?limit={PAGE}", "conversations", "conversations"
                    else:
                        first, key = f"/api/conversations/{big_id}/messages?limit={PAGE}", "messages"
                        title = f"messages of a {big_size:,}-message conversation"
                    say(f"{scenario}: following the cursors of up to {arguments.pages} pages...")
                    paths = page_paths(base_url, first, key, arguments.pages)
                    pages = f"a {PAGE}-item page of {title}, {stored:,} stored ({len(paths)} pages, "
                    pages += f"{arguments.connections} connections)"
                    ratios = []
                    for number in range(1, arguments.read_rounds + 1):
                        ours, bare = (
                            measured(
                                f"{pages}, {side} ({number})",
                                measured_groups,
                                read_command(url, paths, arguments.connections, arguments.seconds, script_dir),
                                timeout=arguments.seconds + 30,
                            )
                            for side, url, measured_groups in (
                                ("project", base_url, groups),
                                ("floor", floor.url, floor_groups),
                            )
                        )
                        rows += [ours, bare]
                        ratios.append(float(ours.rate) / float(bare.rate))
                    rows.append(Row(f"{scenario} ratio, project / floor", ", ".join(f"{r:.2f}x" for r in ratios)))
                rss.update(peak_rss_mib([floor.group]))
    rss.update(peak_rss_mib(groups))
    print(
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}, {os.cpu_count()} cores; CPU in seconds per 1,000 messages or requests"
    )
    print(table(rows, columns, rss))


if __name__ == "__main__":
    main()
