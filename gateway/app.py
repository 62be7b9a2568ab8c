from collections.abc import AsyncIterator, Callable

from aiohttp import web

from common.broker import BROKER, ContractPublisher, broker_ctx
from common.health import add_health_routes
from common.http import error_middleware
from common.settings import Profile
from gateway.auth import PERIMETER, ROUTE_ACCESS, Authenticator, Perimeter, echo_correlation_id, perimeter_middleware
from gateway.conversation_client import CONVERSATION_SERVICE, ClientTimeouts, conversation_service_ctx
from gateway.handlers import KeyStore, MessageIntake
from gateway.openapi import add_openapi_routes
from gateway.quarantine import quarantine_ctx
from gateway.rate_limit import TokenBuckets
from gateway.settings import GatewaySettings
from gateway.views import MESSAGE_INTAKE, VALIDATION_RULES, add_routes, webhooks_ctx


def create_app(
    settings: GatewaySettings,
    *,
    publisher: ContractPublisher | None = None,
    key_store: KeyStore | None = None,
) -> web.Application:
    """The public API. Tests pass a fake `publisher` to run without a broker (refused webhooks are
    published to it too), and a fake `key_store` to keep Idempotency-Keys without conversation_service."""
    app = web.Application(
        middlewares=[error_middleware, perimeter_middleware], client_max_size=settings.max_request_bytes
    )
    app[VALIDATION_RULES] = settings.validation_rules
    app[ROUTE_ACCESS] = {}
    app.on_response_prepare.append(echo_correlation_id)
    # In production the gateway's port is public: its metrics are for Prometheus only.
    production = settings.messaging_profile is Profile.PRODUCTION
    add_health_routes(app, metrics_token=settings.internal_service_token if production else None)
    if publisher is None:
        app.cleanup_ctx.append(broker_ctx(settings))
    app.cleanup_ctx.append(
        conversation_service_ctx(
            settings.conversation_service_url,
            settings.internal_service_token,
            ClientTimeouts(
                read_seconds=settings.read_timeout_seconds,
                key_store_seconds=settings.key_store_timeout_seconds,
                auth_seconds=settings.auth_timeout_seconds,
            ),
            cache_seconds=settings.auth_cache_seconds,
        )
    )
    app.cleanup_ctx.append(quarantine_ctx(publisher))
    app.cleanup_ctx.append(_handlers_ctx(settings, publisher, key_store))
    app.cleanup_ctx.append(webhooks_ctx(settings))
    add_routes(app)
    add_openapi_routes(app, settings)
    return app


def _handlers_ctx(
    settings: GatewaySettings, publisher: ContractPublisher | None, key_store: KeyStore | None
) -> Callable[[web.Application], AsyncIterator[None]]:
    """The perimeter and the intake, on the given fakes or on the broker and conversation_service set
    up before them."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        conversation_service = app[CONVERSATION_SERVICE]
        app[PERIMETER] = Perimeter(
            settings.messaging_profile,
            Authenticator(conversation_service, settings.messaging_profile),
            TokenBuckets(settings.rate_limit_per_second, settings.rate_limit_burst),
        )
        app[MESSAGE_INTAKE] = MessageIntake(
            app[BROKER].bundling_publisher if publisher is None else publisher,
            conversation_service if key_store is None else key_store,
            conversation_service,
            idempotency_wait_seconds=settings.idempotency_wait_seconds,
        )
        yield

    return ctx
