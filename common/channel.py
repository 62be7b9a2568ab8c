"""A channel service: consume its outbound queue, send each message through its provider, publish
the outcome. Both sms_service and email_service are this, with their own provider client."""

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from typing import Any

from aiohttp import web

from common.broker import BROKER, ContractPublisher, QueueSpec, Topology, broker_ctx, consumer_ctx
from common.contracts import MessageStatus, MessageStatusChanged, SendMessage
from common.health import METRICS, add_health_routes
from common.http import error_middleware
from common.metrics import Metrics
from common.provider import MessageSender, ProviderClient
from common.settings import ServiceSettings

log = logging.getLogger(__name__)


class SendHandler:
    """Sends one `SendMessage` through the provider and publishes the outcome as `MessageStatusChanged`.

    A publish failure propagates, so the command is redelivered and sent again; the provider sees
    the same idempotency key and answers with the original result instead of sending twice.
    """

    def __init__(self, provider: MessageSender, publisher: ContractPublisher, provider_name: str) -> None:
        self._provider = provider
        self._publisher = publisher
        self._provider_name = provider_name

    async def __call__(self, command: SendMessage) -> None:
        outcome = await self._provider.send(command)
        event = MessageStatusChanged(
            correlation_id=command.correlation_id,
            message_id=command.message_id,
            status=outcome.status,
            provider=self._provider_name,
            provider_message_id=outcome.provider_message_id,
            attempts=outcome.attempts,
            error=outcome.error,
            command=command,
        )
        await self._publisher.publish(event)
        log.log(
            # A send that went through is counted in the activity summary; one that failed is worth a line.
            logging.DEBUG if outcome.status is MessageStatus.SENT else logging.WARNING,
            f"message {outcome.status}",
            extra={
                "message_id": str(command.message_id),
                "correlation_id": str(command.correlation_id),
                "provider": self._provider_name,
                "provider_message_id": outcome.provider_message_id,
                "attempts": outcome.attempts,
                "error": outcome.error,
            },
        )


PROVIDER: web.AppKey[MessageSender] = web.AppKey("provider")


def provider_ctx(
    make_client: Callable[[Metrics], ProviderClient[Any]], override: MessageSender | None = None
) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup_ctx that puts the provider client on the app; it closes only a client it made itself."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        async with AsyncExitStack() as owned:
            app[PROVIDER] = (
                override if override is not None else await owned.enter_async_context(make_client(app[METRICS]))
            )
            yield

    return ctx


def create_channel_app(
    settings: ServiceSettings,
    *,
    queue: Callable[[Topology], QueueSpec],
    provider_name: str,
    make_client: Callable[[Metrics], ProviderClient[Any]],
    provider: MessageSender | None = None,
) -> web.Application:
    """A channel service: consume its outbound queue, send each message through the provider, publish
    the outcome. `provider` replaces the real client in tests."""
    app = web.Application(middlewares=[error_middleware])
    add_health_routes(app)
    app.cleanup_ctx.append(broker_ctx(settings))
    app.cleanup_ctx.append(provider_ctx(make_client, provider))
    app.cleanup_ctx.append(
        consumer_ctx(
            settings,
            queue,
            SendMessage.model_validate_json,
            lambda app: SendHandler(app[PROVIDER], app[BROKER].bundling_publisher, provider_name),
        )
    )
    return app
