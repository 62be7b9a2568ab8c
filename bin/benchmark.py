"""Measure a running stack (bin/start.sh, development profile) and print one Markdown table (`make bench`).

Scenarios (--scenarios, all by default):
  ingest         N inbound SMS webhooks at C in flight, timed until the last one is a row in
                 PostgreSQL; run alternately with the reference, ../shared/bench/naive_pipeline.py (the
                 same pipeline written plainly, which this starts itself in MODE=batch on its own
                 port and database), for --rounds rounds, and the ratio of each round.
  sends          N sends, timed until every one is `sent` (or already `delivered`) in the messages table.
  conversations  GET /api/conversations?limit=50 and the pages its cursors lead to, 16 connections.
  messages       the same over the pages of the largest conversation's messages.

The writes are loaded by ../shared/bench/ingest.py, the reads by wrk (`apt-get install -y wrk`). The
reads expect `make seed` to have run: at least --seeded-messages messages, and a conversation of at
least a tenth of that (100,000 at most). For each scenario the table gives throughput, p50 and p99
latency, the load generator's own CPU (share of one core: near 100% it, not the stack, is the
limit), and CPU seconds per 1,000 messages (or requests) of every process: the stack's (the
supervisor and its children, found from the process listening on the gateway's port), the
reference's, PostgreSQL's and RabbitMQ's, from utime+stime (and that of reaped children) in
/proc/<pid>/stat before and after. Its last row is each column's peak RSS (VmHWM, the largest
process of the column). PostgreSQL and RabbitMQ are counted whole: on a machine others use,
their figures include others' work.

Ports and databases come from the same settings the stack reads (environment, then .env).
"""

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

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


def _stat(pid: int) -> tuple[str, int, float] | None:
    """A process's name, parent and CPU seconds, its reaped children's included; None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name, rest = text[text.index("(") + 1 : text.rindex(")")], text[text.rindex(")") + 2 :].split()
    utime, stime, cutime, cstime = (int(value) for value in rest[11:15])
    return name, int(rest[1]), (utime + stime + cutime + cstime) / CLOCK_TICKS


def _processes() -> dict[int, tuple[str, int, float]]:
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


def _members(group: Group, processes: dict[int, tuple[str, int, float]]) -> Iterator[int]:
    children = defaultdict(list)
    for pid, (_, parent, _) in processes.items():
        children[parent].append(pid)
    pending = [pid for pid in group.roots if pid in processes]
    while pending:
        pid = pending.pop()
        yield pid
        if group.with_descendants:
            pending.extend(children[pid])


def cpu_seconds(groups: Sequence[Group]) -> dict[str, float]:
    processes = _processes()
    return {group.name: sum(processes[pid][2] for pid in _members(group, processes)) for group in groups}


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


def stack_groups(gateway_port: int) -> list[Group]:
    """The supervisor above the gateway's listener, each of its children, PostgreSQL and RabbitMQ."""
    processes = _processes()
    pid = _listener(gateway_port)
    while pid is not None and pid > 1 and not any(part.endswith("supervise.py") for part in _cmdline(pid)):
        pid = processes.get(pid, ("", None, 0.0))[1]
    if pid is None or pid <= 1:
        raise SystemExit(f"no bin/supervise.py runs the process on port {gateway_port}: start the stack (make run)")
    by_label: dict[str, list[int]] = defaultdict(list)
    for child, (_, parent, _) in processes.items():
        if parent == pid:
            by_label[_label(_cmdline(child))].append(child)
    groups = [Group(label, tuple(pids)) for label, pids in sorted(by_label.items())]
    groups.append(Group("supervise", (pid,), with_descendants=False))
    postmasters = tuple(
        p
        for p, (name, parent, _) in processes.items()
        if name == "postgres" and processes.get(parent, ("",))[0] != name
    )
    rabbit = tuple(
        p for p, (name, _, _) in processes.items() if name == "beam.smp" and any("rabbit" in a for a in _cmdline(p))
    )
    return [*groups, Group("postgres", postmasters), Group("rabbitmq", rabbit)]


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
class Loaded:
    count: int
    rate: float
    p50_ms: float
    p99_ms: float


Parser = Callable[[str, str], Loaded]


def measured(scenario: str, groups: Sequence[Group], command: Sequence[str], parse: Parser) -> Row:
    """Run a load generator to its end, with every group's CPU and the generator's own around it."""
    before, loader_before, started = cpu_seconds(groups), _children_cpu(), time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wall, loader = time.monotonic() - started, _children_cpu() - loader_before
    after = cpu_seconds(groups)
    if done.returncode != 0:
        raise SystemExit(f"{scenario}: {' '.join(command)} failed:\n{done.stdout}{done.stderr}")
    loaded = parse(done.stdout, scenario)
    return Row(
        scenario,
        loaded.rate,
        loaded.p50_ms,
        loaded.p99_ms,
        loader / wall,
        {name: (after[name] - before[name]) / loaded.count * 1000 for name in after},
    )


def _children_cpu() -> float:
    """Of this process's finished children: the load generators and what they ran (psql)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def ingest_output(output: str, scenario: str) -> Loaded:
    """ingest.py's last line: `n=... errors=E accept=... p50=Xms p99=Yms stored=S e2e=R/s (...)`."""
    found = re.search(r"errors=(\d+) .*p50=([\d.]+)ms p99=([\d.]+)ms stored=(\d+) e2e=(\d+)/s", output.splitlines()[-1])
    if found is None or "TIMEOUT" in output or int(found.group(1)):
        raise SystemExit(f"{scenario}: not every message was accepted and stored in time:\n{output}")
    _, p50, p99, stored, rate = found.groups()
    return Loaded(int(stored), float(rate), float(p50), float(p99))


def wrk_output(output: str, scenario: str) -> Loaded:
    if "Non-2xx" in output or "Socket errors" in output:
        raise SystemExit(f"{scenario}: some requests failed:\n{output}")
    requests = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    return Loaded(requests, rate, _wrk_ms(output, "50"), _wrk_ms(output, "99"))


def _wrk_ms(output: str, percentile: str) -> float:
    value, unit = re.search(rf"^\s+{percentile}%\s+([\d.]+)(us|ms|s)$", output, re.MULTILINE).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def ingest_command(reference_dir: Path, url: str, dsn: str, count_sql: str, *options: str) -> list[str]:
    return [sys.executable, str(reference_dir / "ingest.py"), "--url", url, "--dsn", dsn, "--sql", count_sql, *options]


def scalar(dsn: str, sql: str, *parameters: object) -> object:
    with psycopg2.connect(dsn) as connection, connection.cursor() as cursor:
        cursor.execute(sql, parameters)
        (value,) = cursor.fetchone()
    connection.close()
    return value


def _libpq(url: str) -> str:
    """psql takes no `postgresql+driver` scheme and no query the services understand; plain URLs pass."""
    return str(URL(url).with_query(None))


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


def wrk_command(base_url: str, paths: list[str], connections: int, seconds: int, script_dir: Path) -> list[str]:
    """wrk cycling through `paths`, each thread from its own place in the list."""
    script = script_dir / f"paths-{abs(hash(tuple(paths)))}.lua"
    quoted = ",\n".join(f'  "{path}"' for path in paths)
    script.write_text(
        f"local paths = {{\n{quoted}\n}}\nlocal i = 0\n"
        "function init(args) math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16)); "
        "i = math.random(#paths) end\n"
        'function request() i = i % #paths + 1; return wrk.format("GET", paths[i]) end\n'
    )
    threads = str(min(connections, os.cpu_count() or 1))
    return ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), base_url]


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated, of: " + ", ".join(SCENARIOS))
    parser.add_argument("--url", help="the gateway (default: http://127.0.0.1:GATEWAY_PORT)")
    parser.add_argument("--webhooks", type=int, default=5000, help="webhooks per ingest run (default 5000)")
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight for writes (default 64)")
    parser.add_argument("--rounds", type=int, default=3, help="ingest runs of the project and the reference each")
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
        help="where naive_pipeline.py and ingest.py are (default ../shared/bench)",
    )
    parser.add_argument("--reference-port", type=int, default=8090)
    parser.add_argument("--reference-database", default="naive", help="created if missing (default naive)")
    arguments = parser.parse_args()
    scenarios = [name.strip() for name in arguments.scenarios.split(",") if name.strip()]
    if unknown := set(scenarios) - set(SCENARIOS):
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")

    gateway = GatewaySettings()
    database = MigrationSettings()
    dsn = _libpq(database.database_url)
    base_url = arguments.url or f"http://127.0.0.1:{gateway.gateway_port}"
    if not _answers(f"{base_url}/readyz"):
        raise SystemExit(f"the gateway at {base_url} is not ready: start the stack (make run)")
    groups = stack_groups(URL(base_url).port or 80)
    writes = {"ingest", "sends"} & set(scenarios)
    if writes and not (arguments.reference_dir / "ingest.py").is_file():
        raise SystemExit(f"no ingest.py in {arguments.reference_dir}: give --reference-dir")
    reads = {"conversations", "messages"} & set(scenarios)
    if reads and shutil.which("wrk") is None:
        raise SystemExit("the read scenarios need wrk: apt-get install -y wrk")

    rows: list[Row] = []
    columns = [group.name for group in groups]
    rss: dict[str, float] = {}
    load = ["-c", str(arguments.concurrency), "--timeout", str(arguments.timeout)]
    if "ingest" in scenarios:
        with Reference(
            arguments.reference_dir,
            arguments.reference_port,
            database.database_admin_url,
            arguments.reference_database,
            ServiceSettings().amqp_urls[0],
        ) as reference:
            reference_groups = [reference.group, *groups[-2:]]
            columns.insert(-2, "reference")
            ratios = []
            for round_number in range(1, arguments.rounds + 1):
                seq = scalar(dsn, "SELECT coalesce(max(seq), 0) FROM messages")
                ours = measured(
                    f"{arguments.webhooks:,} webhooks, project (round {round_number})",
                    groups,
                    ingest_command(
                        arguments.reference_dir,
                        base_url,
                        dsn,
                        f"SELECT count(*) FROM messages WHERE seq > {seq} AND body LIKE '{{run}} %'",
                        "-n",
                        str(arguments.webhooks),
                        *load,
                    ),
                    ingest_output,
                )
                last = scalar(reference.dsn, "SELECT coalesce(max(id), 0) FROM messages")
                theirs = measured(
                    f"{arguments.webhooks:,} webhooks, reference (round {round_number})",
                    reference_groups,
                    ingest_command(
                        arguments.reference_dir,
                        reference.url,
                        reference.dsn,
                        f"SELECT count(*) FROM messages WHERE id > {last} AND body LIKE '{{run}} %'",
                        "-n",
                        str(arguments.webhooks),
                        *load,
                    ),
                    ingest_output,
                )
                rows += [ours, theirs]
                ratios.append(float(ours.rate) / float(theirs.rate))
            rows.append(Row("ingest ratio, project / reference", ", ".join(f"{r:.2f}x" for r in ratios)))
            rss.update(peak_rss_mib([reference.group]))
    if "sends" in scenarios:
        seq = scalar(dsn, "SELECT coalesce(max(seq), 0) FROM messages")
        rows.append(
            measured(
                f"{arguments.sends:,} sends reaching `sent`",
                groups,
                ingest_command(
                    arguments.reference_dir,
                    base_url,
                    dsn,
                    f"SELECT count(*) FROM messages WHERE seq > {seq} AND body LIKE '{{run}} %' "
                    "AND status IN ('sent', 'delivered')",
                    "--kind",
                    "send",
                    "-n",
                    str(arguments.sends),
                    *load,
                ),
                ingest_output,
            )
        )
    if reads:
        stored = scalar(dsn, "SELECT count(*) FROM messages WHERE account_id = %s", str(DEVELOPMENT_ACCOUNT_ID))
        big_id, big_size = _largest_conversation(dsn)
        wanted_big = min(BIG_CONVERSATION, arguments.seeded_messages // 10)
        if int(stored) < arguments.seeded_messages or big_size < wanted_big:  # type: ignore[call-overload]
            raise SystemExit(
                f"the reads need {arguments.seeded_messages:,} messages and a conversation of {wanted_big:,}; the "
                f"database holds {stored:,} and its largest conversation {big_size:,}: run make seed "
                f"(or give --seeded-messages)"
            )
        with tempfile.TemporaryDirectory() as script_dir:
            for scenario in ("conversations", "messages"):
                if scenario not in scenarios:
                    continue
                if scenario == "conversations":
                    first, key, title = f"/api/conversations?limit={PAGE}", "conversations", "conversations"
                else:
                    first, key = f"/api/conversations/{big_id}/messages?limit={PAGE}", "messages"
                    title = f"messages of a {big_size:,}-message conversation"
                paths = page_paths(base_url, first, key, arguments.pages)
                command = wrk_command(base_url, paths, arguments.connections, arguments.seconds, Path(script_dir))
                row = measured(f"a {PAGE}-item page of {title}, {stored:,} stored", groups, command, wrk_output)
                row.scenario += f" ({len(paths)} pages, {arguments.connections} connections)"
                rows.append(row)
    rss.update(peak_rss_mib(groups))
    print(
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}, {os.cpu_count()} cores; CPU in seconds per 1,000 messages or requests"
    )
    print(table(rows, columns, rss))


def _largest_conversation(dsn: str) -> tuple[int, int]:
    with psycopg2.connect(dsn) as connection, connection.cursor() as cursor:
        cursor.execute(
            "SELECT id, message_count FROM conversations WHERE account_id = %s ORDER BY message_count DESC LIMIT 1",
            (str(DEVELOPMENT_ACCOUNT_ID),),
        )
        found = cursor.fetchone() or (0, 0)
    connection.close()
    return found


if __name__ == "__main__":
    main()
