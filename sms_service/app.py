from aiohttp import web

from common.channel import create_channel_app
from common.contracts import SMS_PROVIDER
from common.provider import MessageSender
from sms_service.provider import SmsProviderClient
from sms_service.settings import SmsSettings


def create_app(settings: SmsSettings, *, provider: MessageSender | None = None) -> web.Application:
    """Sends SMS and MMS from `sms_service.outbound`. Tests may pass a fake `provider`."""
    return create_channel_app(
        settings,
        queue=lambda topology: topology.sms_outbound,
        provider_name=SMS_PROVIDER,
        make_client=lambda metrics: SmsProviderClient(settings, metrics=metrics),
        provider=provider,
    )
