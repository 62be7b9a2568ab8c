from aiohttp import web

from common.channel import create_channel_app
from common.contracts import EMAIL_PROVIDER
from common.provider import MessageSender
from email_service.provider import EmailProviderClient
from email_service.settings import EmailSettings


def create_app(settings: EmailSettings, *, provider: MessageSender | None = None) -> web.Application:
    """Sends email from `email_service.outbound`. Tests may pass a fake `provider`."""
    return create_channel_app(
        settings,
        queue=lambda topology: topology.email_outbound,
        provider_name=EMAIL_PROVIDER,
        make_client=lambda metrics: EmailProviderClient(settings, metrics=metrics),
        provider=provider,
    )
