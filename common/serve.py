"""How every process serves its app: the event loop, the access log and the activity summary, the same
for the services and the mock providers."""

import logging

import uvloop
from aiohttp import web

from common.activity import activity_summary_ctx
from common.settings import ProcessSettings


def serve(app: web.Application, settings: ProcessSettings, port: int) -> None:
    # The access log is a line per request: at INFO it was a fifth of the gateway's CPU under load.
    debug = settings.log_level.upper() == "DEBUG"
    # First in, last out: its closing summary counts what the other resources finished on the way out.
    app.cleanup_ctx.insert(0, activity_summary_ctx(settings.log_summary_interval_seconds))
    web.run_app(
        app,
        host=settings.bind_host,
        port=port,
        print=None,
        access_log=logging.getLogger("aiohttp.access") if debug else None,
        # uvloop's transports and callbacks cost less CPU per request and per AMQP frame than asyncio's.
        loop=uvloop.new_event_loop(),
    )
