#!/usr/bin/env python
"""Benchmark, not product: conversation_service's writes driven directly, without broker or HTTP.

Concurrent submitters (as the consumer's deliveries in hand would be) store inbound messages over a
few hundred conversations into a scratch database, first one transaction per event, then through
the write batches at each (size, wait) asked for; prints events per second and the CPU this process
spent per 1,000 events. `--compare FILE` runs the same against another version's writes.py (say,
`git show REV:conversation_service/writes.py > /tmp/writes_rev.py`, for a REV whose writes.py uses
database.Prepared, as they do since the writes were prepared), in the same run.

    .venv/bin/python bin/benchmark_writes.py --events 4000 --submitters 64 --grid 16:0.005 64:0.005
"""

import argparse
import asyncio
import importlib.util
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg2
from yarl import URL

from common.accounts import DEVELOPMENT_ACCOUNT_ID, DEVELOPMENT_ACCOUNT_NAME
from common.contracts import Channel, MessageContent, MessageReceived, inbound_message_id
from conversation_service.database import Database, connect
from conversation_service.migrate import drop_database, migrate
from conversation_service.settings import MigrationSettings
from conversation_service.write_batches import WriteBatches, running
from conversation_service.writes import MessageWriter

OUR_PHONE = "+12016661234"


def scratch_settings() -> MigrationSettings:
    configured = MigrationSettings()
    name = f"/messaging_service_bench_{uuid.uuid4().hex[:8]}"
    return MigrationSettings(
        database_url=str(URL(configured.database_url).with_path(name)),
        database_owner_url=str(URL(configured.database_owner_url).with_path(name)),
        database_admin_url=configured.database_admin_url,
    )


def empty(settings: MigrationSettings) -> None:
    connection = psycopg2.connect(settings.database_owner_url)
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(
            "TRUNCATE conversations, conversation_participants, messages, message_status_history, "
            "pending_receipts, accounts RESTART IDENTITY CASCADE"
        )
        cursor.execute(
            "INSERT INTO accounts (id, name) VALUES (%s, %s)", (str(DEVELOPMENT_ACCOUNT_ID), DEVELOPMENT_ACCOUNT_NAME)
        )
        cursor.execute("VACUUM ANALYZE")
    connection.close()


def inbound(count: int, conversations: int) -> list[MessageReceived]:
    run = uuid.uuid4().hex[:8]
    return [
        MessageReceived(
            message_id=inbound_message_id("sms-provider", f"{run}-{i}"),
            account_id=DEVELOPMENT_ACCOUNT_ID,
            correlation_id=uuid.uuid4(),
            provider="sms-provider",
            provider_message_id=f"{run}-{i}",
            content=MessageContent(
                channel=Channel.SMS,
                from_address=f"+1312555{i % conversations:04d}",
                to_address=OUR_PHONE,
                body=f"message {i}",
                timestamp=datetime.now(UTC),
            ),
        )
        for i in range(count)
    ]


async def drive(
    store: Callable[[MessageReceived], Awaitable[Any]], events: list[MessageReceived], submitters: int
) -> tuple[float, float]:
    """Events per second and CPU seconds per 1,000 events, `submitters` storing at once."""
    queue = iter(events)

    async def submitter() -> None:
        for event in queue:
            await store(event)

    wall, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(submitter() for _ in range(submitters)))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return len(events) / wall, cpu / len(events) * 1000


def load_writes(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"writes_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=4000)
    parser.add_argument("--conversations", type=int, default=300)
    parser.add_argument("--submitters", type=int, default=64)
    parser.add_argument("--pool-size", type=int, default=10)
    parser.add_argument("--grid", nargs="*", default=["8:0.005", "16:0.005", "32:0.005", "64:0.005"])
    parser.add_argument("--compare", type=Path, nargs="*", default=[])
    parser.add_argument("--repeat", type=int, default=1)
    arguments = parser.parse_args()
    settings = scratch_settings()
    migrate(settings)
    try:
        async with connect(settings.database_url, pool_size=arguments.pool_size) as engine:
            database = Database(engine, retry_max_interval=1.0)
            writers: list[tuple[str, Any]] = [("this", MessageWriter(database))]
            writers += [(str(path), load_writes(path).MessageWriter(database)) for path in arguments.compare]
            print(
                f"{arguments.events} inbound events over {arguments.conversations} conversations, "
                f"{arguments.submitters} submitters, pool {arguments.pool_size}"
            )
            print(f"{'writer':<28} {'path':<22} {'events/s':>9} {'cpu ms/1k':>10}")
            for _ in range(arguments.repeat):
                for name, writer in writers:
                    runs: list[tuple[str, Callable[[MessageReceived], Awaitable[Any]], Any]] = [
                        ("a transaction per event", writer.store_inbound, None)
                    ]
                    if hasattr(writer, "store_batch"):
                        for cell in arguments.grid:
                            size, wait = cell.split(":")
                            batches = WriteBatches(writer.store_batch, size=int(size), wait_seconds=float(wait))
                            runs.append((f"batches N={size} T={wait}", batches.store, batches))
                    for label, store, batches in runs:
                        empty(settings)
                        events = inbound(arguments.events, arguments.conversations)
                        if batches is None:
                            rate, cpu = await drive(store, events, arguments.submitters)
                        else:
                            async with running(batches, 5.0):
                                rate, cpu = await drive(store, events, arguments.submitters)
                        print(f"{name[-28:]:<28} {label:<22} {rate:>9.0f} {cpu:>10.1f}", flush=True)
    finally:
        drop_database(settings)


if __name__ == "__main__":
    asyncio.run(main())
