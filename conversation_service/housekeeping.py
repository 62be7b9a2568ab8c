"""Chores every conversation_service replica runs every so often, each a DELETE that is safe to
repeat on any number of replicas: expired Idempotency-Keys, receipts whose send never came."""

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from common.cancellation import honour_dropped_cancel

log = logging.getLogger(__name__)

# Does its work and says how many rows it removed.
Chore = Callable[[], Awaitable[int]]


def chore_ctx(
    what: str, interval_seconds: float, make_chore: Callable[[web.Application], Chore]
) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup_ctx that runs the chore every `interval_seconds` while the app runs; `make_chore`
    takes it from the app once the resources registered before this one are up."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(run_every(what, make_chore(app), interval_seconds))
        yield
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    return ctx


async def run_every(what: str, chore: Chore, interval_seconds: float) -> None:
    while True:
        try:
            removed = await chore()
        except Exception:
            honour_dropped_cancel()
            # A failed round (the database away, most likely) must not end the next ones.
            log.exception("housekeeping failed", extra={"chore": what})
        else:
            honour_dropped_cancel()
            log.info("housekeeping done", extra={"chore": what, "removed": removed})
        await asyncio.sleep(interval_seconds)
