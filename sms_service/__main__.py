from aiohttp import web

from common.logs import configure_logging
from common.settings import load_settings
from sms_service.app import create_app
from sms_service.settings import SmsSettings


def main() -> None:
    settings = load_settings(SmsSettings)
    configure_logging("sms_service", settings)
    web.run_app(create_app(settings), host=settings.bind_host, port=settings.sms_service_port, print=None)


if __name__ == "__main__":
    main()
