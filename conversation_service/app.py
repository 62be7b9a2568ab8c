from collections.abc import AsyncIterator, Callable

from aiohttp import web

from common.broker import broker_ctx, consumer_ctx
from common.contracts import message_event_adapter
from common.health import METRICS, READINESS_CHECKS, add_health_routes
from common.http import error_middleware
from common.settings import Profile
from conversation_service.account_routes import ACCOUNT_STORE, add_account_routes
from conversation_service.accounts import AccountStore
from conversation_service.api import REPOSITORY, SETTINGS, add_read_routes
from conversation_service.database import connect
from conversation_service.handlers import EventHandler
from conversation_service.housekeeping import chore_ctx
from conversation_service.idempotency import KEY_STORE, IdempotencyKeyStore, add_key_routes
from conversation_service.repository import MessageRepository
from conversation_service.service_token import service_token_middleware
from conversation_service.settings import ConversationSettings
from conversation_service.write_batches import WriteBatches, running

WRITE_BATCHES = web.AppKey("write_batches", WriteBatches)


def create_app(settings: ConversationSettings, *, repository: MessageRepository | None = None) -> web.Application:
    """Consumes the conversation queue into PostgreSQL and serves the gateway: the read API, the
    Idempotency-Key store, and who holds a key or owns an address.

    Tests pass a fake `repository` to serve the read API alone, with neither database nor broker.
    """
    app = web.Application(middlewares=[error_middleware, service_token_middleware(settings.internal_service_token)])
    app[SETTINGS] = settings
    add_health_routes(app)
    if repository is None:
        app.cleanup_ctx.append(database_ctx(settings))
        app.cleanup_ctx.append(write_batches_ctx(settings))
        app.cleanup_ctx.append(broker_ctx(settings))
        app.cleanup_ctx.append(
            consumer_ctx(
                settings,
                lambda topology: topology.conversation_events,
                message_event_adapter.validate_json,
                lambda app: EventHandler(app[WRITE_BATCHES], app[METRICS]),
                # Deliveries held through a long outage would outlive the broker's consumer_timeout.
                pause_unless=lambda app: app[REPOSITORY].is_available,
            )
        )
        app.cleanup_ctx.append(
            chore_ctx(
                "purge expired idempotency keys",
                settings.idempotency_purge_interval_seconds,
                lambda app: app[KEY_STORE].purge_expired,
            )
        )
        app.cleanup_ctx.append(
            chore_ctx(
                "expire receipts whose send never came",
                settings.receipt_expiry_interval_seconds,
                lambda app: lambda: app[REPOSITORY].expire_pending_receipts(settings.receipt_wait_seconds),
            )
        )
        add_key_routes(app)
        add_account_routes(app)
    else:
        app[REPOSITORY] = repository
    add_read_routes(app)
    return app


def database_ctx(settings: ConversationSettings) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        async with connect(settings.database_url, pool_size=settings.database_pool_size) as engine:
            repository = MessageRepository(
                engine,
                retry_max_interval=settings.database_retry_max_interval_seconds,
                receipt_clock_skew_seconds=settings.receipt_clock_skew_seconds,
                metrics=app[METRICS],
            )
            app[REPOSITORY] = repository
            app[KEY_STORE] = IdempotencyKeyStore(
                engine,
                ttl_seconds=settings.idempotency_key_ttl_seconds,
                claim_seconds=settings.idempotency_claim_seconds,
            )
            app[ACCOUNT_STORE] = AccountStore(
                engine, development_fallback=settings.messaging_profile is Profile.DEVELOPMENT
            )
            app[READINESS_CHECKS]["database"] = repository.is_available
            yield

    return ctx


def write_batches_ctx(settings: ConversationSettings) -> Callable[[web.Application], AsyncIterator[None]]:
    """Torn down after the consumer: its last deliveries' writes are still in here."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        batches = WriteBatches(
            app[REPOSITORY].store_batch,
            size=settings.write_batch_size,
            wait_seconds=settings.write_batch_wait_seconds,
            metrics=app[METRICS],
        )
        async with running(batches, settings.shutdown_grace_seconds):
            app[WRITE_BATCHES] = batches
            yield

    return ctx
