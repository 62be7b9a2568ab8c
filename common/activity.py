"""A periodic INFO summary of what a process did, in place of a log line per request or message.

Per-request and per-message lines are DEBUG, so at INFO a busy process would say nothing at all.
The summary says how many of each thing happened since the last one, read from the counters the
process keeps for `/metrics` anyway: nothing is counted twice on the hot path, and the summary
agrees with what Prometheus sees. An idle process logs nothing.
"""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterator

from aiohttp import web
from prometheus_client import CollectorRegistry

from common.health import METRICS

log = logging.getLogger(__name__)

# Counted like any request, but an orchestrator's probes and Prometheus' scrapes are not work: with
# them, no process would ever be idle.
_PROBE_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})
# The process and platform collectors' counters (CPU seconds) move even when nothing happens.
_RUNTIME_PREFIXES = ("process_", "python_")

Totals = dict[tuple[str, str], float]


def _counter_totals(registry: CollectorRegistry) -> Iterator[tuple[tuple[str, str], float]]:
    for metric in registry.collect():
        if metric.type != "counter" or metric.name.startswith(_RUNTIME_PREFIXES):
            continue
        for sample in metric.samples:
            if not sample.name.endswith("_total") or sample.labels.get("route") in _PROBE_ROUTES:
                continue
            yield (metric.name, " ".join(sample.labels.values())), sample.value


def activity_since(registry: CollectorRegistry, before: Totals) -> tuple[Totals, dict[str, dict[str, int]]]:
    """The counters' totals now, and what grew since `before`: by metric, then by its label values."""
    now = dict(_counter_totals(registry))
    grown: dict[str, dict[str, int]] = {}
    for (name, labels), value in now.items():
        if (delta := value - before.get((name, labels), 0.0)) > 0:
            grown.setdefault(name, {})[labels] = round(delta)
    return now, grown


def activity_summary_ctx(interval_seconds: float) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup_ctx that logs the summary every `interval_seconds`, and once more on the way out so
    that the last stretch before a stop is not lost."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        registry = app[METRICS].registry
        loop = asyncio.get_running_loop()
        totals, _ = activity_since(registry, {})
        since = loop.time()

        def summarize() -> None:
            nonlocal totals, since
            totals, grown = activity_since(registry, totals)
            now, seconds = loop.time(), loop.time() - since
            if grown:
                log.info(f"activity in the last {seconds:.0f}s", extra={"seconds": round(seconds, 1), "counts": grown})
            since = now

        async def every_interval() -> None:
            while True:
                await asyncio.sleep(interval_seconds)
                summarize()

        task = asyncio.create_task(every_interval())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        summarize()

    return ctx
