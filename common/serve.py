"""How every process serves its app: the event loop, the access log and the activity summary, the same
for the services and the mock providers."""

import asyncio
import gc
import logging
from collections.abc import Callable

import uvloop
from aiohttp import web

from common.activity import activity_summary_ctx
from common.settings import ProcessSettings


async def _freeze_what_started(app: web.Application) -> None:
    """Everything built until now (modules, models, compiled statements, pools) lives as long as the
    process: frozen, the collector's full passes skip it. Each pass walked all of it, a pause of
    10-20 ms (18 ms once three of the services are imported) that set the reads' p99: 21-29 ms
    before, 14-16 ms after (make bench, two pairs)."""
    gc.collect()
    gc.freeze()


def serve(
    app: web.Application,
    settings: ProcessSettings,
    port: int,
    *,
    # uvloop's transports and callbacks cost less CPU per request and per AMQP frame than asyncio's.
    event_loop: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop,
) -> None:
    # The access log is a line per request: at INFO it was a fifth of the gateway's CPU under load.
    debug = settings.log_level.upper() == "DEBUG"
    # First in, last out: its closing summary counts what the other resources finished on the way out.
    app.cleanup_ctx.insert(0, activity_summary_ctx(settings.log_summary_interval_seconds))
    # After every other startup step: the resources of cleanup_ctx are built by the first.
    app.on_startup.append(_freeze_what_started)
    web.run_app(
        app,
        host=settings.bind_host,
        port=port,
        print=None,
        access_log=logging.getLogger("aiohttp.access") if debug else None,
        loop=event_loop(),
    )
