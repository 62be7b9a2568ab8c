from common.logs import configure_logging
from common.serve import serve
from common.settings import load_settings
from email_service.app import create_app
from email_service.settings import EmailSettings


def main() -> None:
    settings = load_settings(EmailSettings)
    configure_logging("email_service", settings)
    serve(create_app(settings), settings, settings.email_service_port)


if __name__ == "__main__":
    main()
