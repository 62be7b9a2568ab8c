from common.logs import configure_logging
from common.serve import serve
from common.settings import load_settings
from sms_service.app import create_app
from sms_service.settings import SmsSettings


def main() -> None:
    settings = load_settings(SmsSettings)
    configure_logging("sms_service", settings)
    serve(create_app(settings), settings, settings.sms_service_port)


if __name__ == "__main__":
    main()
