"""Load a running stack (bin/start.sh) over HTTP and print what it sustains.

Posts N inbound webhooks and N sends with bounded concurrency, then waits until every one is
stored (and every send is `sent`), and prints the gateway's accept rate and latency and the
end-to-end rate. It targets only the given base URL, which should be on this machine.

    .venv/bin/python bin/benchmark.py --messages 2000 --concurrency 32
"""

import argparse
import asyncio
import statistics
import time
import uuid
from typing import Any

import aiohttp

PHONE_PAIRS = 50


def webhook(run: str, index: int) -> tuple[str, dict[str, Any]]:
    return "/api/webhooks/sms", {
        "from": f"+1804555{index % PHONE_PAIRS:04d}",
        "to": "+12016661234",
        "type": "sms",
        "messaging_provider_id": f"bench-{run}-{index}",
        "body": f"inbound {index}",
    }


def send(run: str, index: int) -> tuple[str, dict[str, Any]]:
    return "/api/messages/sms", {
        "from": "+12016661234",
        "to": f"+1804555{index % PHONE_PAIRS:04d}",
        "type": "sms",
        "body": f"outbound {index}",
    }


async def post_all(
    session: aiohttp.ClientSession, base_url: str, requests: list[tuple[str, dict[str, Any]]], concurrency: int
) -> tuple[list[float], list[str]]:
    """Latencies of every request, and the ids of the sends among them."""
    latencies: list[float] = []
    send_ids: list[str] = []
    queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
    for request in requests:
        queue.put_nowait(request)

    async def worker() -> None:
        while not queue.empty():
            path, payload = queue.get_nowait()
            started = time.perf_counter()
            async with session.post(f"{base_url}{path}", json=payload) as response:
                body = await response.json()
                if response.status != 202:
                    raise RuntimeError(f"{path} answered {response.status}: {body}")
            latencies.append(time.perf_counter() - started)
            if body["direction"] == "outbound":
                send_ids.append(body["id"])

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, send_ids


async def stored_count(session: aiohttp.ClientSession, base_url: str) -> int:
    total, cursor = 0, None
    while True:
        params = {"limit": "200", **({"cursor": cursor} if cursor else {})}
        async with session.get(f"{base_url}/api/conversations", params=params) as response:
            page = await response.json()
        total += sum(conversation["message_count"] for conversation in page["conversations"])
        cursor = page["next_cursor"]
        if cursor is None:
            return total


async def all_sent(session: aiohttp.ClientSession, base_url: str, ids: list[str]) -> bool:
    for message_id in ids:
        async with session.get(f"{base_url}/api/messages/{message_id}") as response:
            # Delivered implies sent: the provider's receipt may already have come back.
            if response.status != 200 or (await response.json())["status"] not in ("sent", "delivered"):
                return False
    return True


def percentile(values: list[float], share: float) -> float:
    return statistics.quantiles(values, n=100)[int(share * 100) - 1] if len(values) > 1 else values[0]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", default="http://127.0.0.1:8080")
    parser.add_argument("--messages", type=int, default=1000, help="webhooks, and as many sends")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the pipeline to drain")
    arguments = parser.parse_args()
    run = uuid.uuid4().hex[:8]

    async with aiohttp.ClientSession() as session:
        baseline = await stored_count(session, arguments.base_url)
        requests = [make(run, i) for i in range(arguments.messages) for make in (webhook, send)]
        started = time.perf_counter()
        latencies, send_ids = await post_all(session, arguments.base_url, requests, arguments.concurrency)
        accepted_in = time.perf_counter() - started

        deadline = started + arguments.timeout
        while await stored_count(session, arguments.base_url) < baseline + len(requests):
            if time.perf_counter() > deadline:
                raise SystemExit("the pipeline did not store every message in time")
            await asyncio.sleep(0.1)
        stored_in = time.perf_counter() - started
        while not await all_sent(session, arguments.base_url, send_ids):
            if time.perf_counter() > deadline:
                raise SystemExit("sends did not all reach `sent` in time")
            await asyncio.sleep(0.1)
        sent_in = time.perf_counter() - started

    total = len(requests)
    print(
        f"messages: {total} ({arguments.messages} webhooks + {arguments.messages} sends), "
        f"concurrency {arguments.concurrency}"
    )
    print(
        f"gateway accepted: {total / accepted_in:,.0f}/s; latency p50 {percentile(latencies, 0.5) * 1000:.1f} ms, "
        f"p95 {percentile(latencies, 0.95) * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms"
    )
    print(f"stored in PostgreSQL: all {total} after {stored_in:.2f}s = {total / stored_in:,.0f} messages/s end to end")
    print(f"every send `sent` (provider answered, status stored): after {sent_in:.2f}s")


if __name__ == "__main__":
    asyncio.run(main())
