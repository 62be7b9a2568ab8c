from common.logs import configure_logging
from common.serve import serve
from common.settings import load_settings
from gateway.app import create_app
from gateway.settings import GatewaySettings


def main() -> None:
    settings = load_settings(GatewaySettings)
    configure_logging("gateway", settings)
    serve(create_app(settings), settings, settings.gateway_port)


if __name__ == "__main__":
    main()
