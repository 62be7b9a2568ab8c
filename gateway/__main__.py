from aiohttp import web

from common.logs import configure_logging
from common.settings import load_settings
from gateway.app import create_app
from gateway.settings import GatewaySettings


def main() -> None:
    settings = load_settings(GatewaySettings)
    configure_logging("gateway", settings)
    web.run_app(create_app(settings), host=settings.bind_host, port=settings.gateway_port, print=None)


if __name__ == "__main__":
    main()
