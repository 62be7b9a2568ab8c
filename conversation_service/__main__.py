from aiohttp import web

from common.logs import configure_logging
from common.settings import load_settings
from conversation_service.app import create_app
from conversation_service.settings import ConversationSettings


def main() -> None:
    settings = load_settings(ConversationSettings)
    configure_logging("conversation_service", settings)
    web.run_app(create_app(settings), host=settings.bind_host, port=settings.conversation_service_port, print=None)


if __name__ == "__main__":
    main()
