from common.logs import configure_logging
from common.serve import serve
from common.settings import load_settings
from conversation_service.app import create_app
from conversation_service.database import event_loop
from conversation_service.settings import ConversationSettings


def main() -> None:
    settings = load_settings(ConversationSettings)
    configure_logging("conversation_service", settings)
    serve(create_app(settings), settings, settings.conversation_service_port, event_loop=event_loop)


if __name__ == "__main__":
    main()
