from collections.abc import AsyncIterator, Callable

from aiohttp import web

from common.broker import BROKER, ContractPublisher, broker_ctx
from common.health import add_health_routes
from common.http import error_middleware
from common.settings import Profile
from gateway.auth import development_account_middleware
from gateway.handlers import MessageIntake
from gateway.idempotency import HttpKeyStore, KeyStore
from gateway.openapi import add_openapi_routes
from gateway.reads import CONVERSATION_READER, ConversationReader
from gateway.settings import GatewaySettings
from gateway.upstream import CONVERSATION_SERVICE, conversation_service_ctx
from gateway.views import MESSAGE_INTAKE, VALIDATION_RULES, add_routes


def create_app(
    settings: GatewaySettings, *, publisher: ContractPublisher | None = None, key_store: KeyStore | None = None
) -> web.Application:
    """The public API. Tests pass a fake `publisher` to run without a broker, and a fake `key_store`
    to keep Idempotency-Keys without conversation_service."""
    app = web.Application(
        middlewares=[error_middleware, development_account_middleware], client_max_size=settings.max_request_bytes
    )
    app[VALIDATION_RULES] = settings.validation_rules
    # In production the gateway's port is public: its metrics are for Prometheus only.
    production = settings.messaging_profile is Profile.PRODUCTION
    add_health_routes(app, metrics_token=settings.internal_service_token if production else None)
    if publisher is None:
        app.cleanup_ctx.append(broker_ctx(settings))
    app.cleanup_ctx.append(conversation_service_ctx(settings.conversation_service_url, settings.internal_service_token))
    app.cleanup_ctx.append(_handlers_ctx(settings, publisher, key_store))
    add_routes(app)
    add_openapi_routes(app, settings)
    return app


def _handlers_ctx(
    settings: GatewaySettings, publisher: ContractPublisher | None, key_store: KeyStore | None
) -> Callable[[web.Application], AsyncIterator[None]]:
    """The intake and the reader, on the given fakes or on the broker and conversation_service set up
    before them."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        conversation_service = app[CONVERSATION_SERVICE]
        app[CONVERSATION_READER] = ConversationReader(conversation_service, settings.read_timeout_seconds)
        app[MESSAGE_INTAKE] = MessageIntake(
            app[BROKER].publisher if publisher is None else publisher,
            HttpKeyStore(conversation_service, settings.key_store_timeout_seconds) if key_store is None else key_store,
            idempotency_wait_seconds=settings.idempotency_wait_seconds,
        )
        yield

    return ctx
