from aiohttp import web

from common.logs import configure_logging
from common.settings import load_settings
from email_service.app import create_app
from email_service.settings import EmailSettings


def main() -> None:
    settings = load_settings(EmailSettings)
    configure_logging("email_service", settings)
    web.run_app(create_app(settings), host=settings.bind_host, port=settings.email_service_port, print=None)


if __name__ == "__main__":
    main()
