from collections.abc import AsyncIterator

from aiohttp import web

from common.broker import BROKER, ContractPublisher, broker_ctx
from common.health import add_health_routes
from common.http import error_middleware
from gateway.handlers import MessageIntake
from gateway.reads import conversation_reader_ctx
from gateway.settings import GatewaySettings
from gateway.views import MESSAGE_INTAKE, VALIDATION_RULES, add_routes


def create_app(settings: GatewaySettings, *, publisher: ContractPublisher | None = None) -> web.Application:
    """The public API. Tests pass a fake `publisher` to run without a broker."""
    app = web.Application(middlewares=[error_middleware], client_max_size=settings.max_request_bytes)
    app[VALIDATION_RULES] = settings.validation_rules
    add_health_routes(app)
    if publisher is None:
        app.cleanup_ctx.append(broker_ctx(settings))
        app.cleanup_ctx.append(_intake_ctx)
    else:
        app[MESSAGE_INTAKE] = MessageIntake(publisher)
    app.cleanup_ctx.append(conversation_reader_ctx(settings.conversation_service_url, settings.read_timeout_seconds))
    add_routes(app)
    return app


async def _intake_ctx(app: web.Application) -> AsyncIterator[None]:
    app[MESSAGE_INTAKE] = MessageIntake(app[BROKER].publisher)
    yield
