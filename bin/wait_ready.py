"""Wait until every process of the stack answers its health check, or exit 1 naming those that did not.

Ports come from the same settings classes the processes read (environment first, then .env), so
this looks exactly where they listen.
"""

import argparse
import sys
import time
import urllib.error
import urllib.request

from conversation_service.settings import ConversationSettings
from email_service.settings import EmailMockProviderSettings, EmailSettings
from gateway.settings import GatewaySettings
from sms_service.settings import SmsMockProviderSettings, SmsSettings


def stack_urls() -> dict[str, str]:
    ports = {
        "sms_provider": SmsMockProviderSettings().sms_provider_port,
        "email_provider": EmailMockProviderSettings().email_provider_port,
        "conversation_service": ConversationSettings().conversation_service_port,
        "sms_service": SmsSettings().sms_service_port,
        "email_service": EmailSettings().email_service_port,
        "gateway": GatewaySettings().gateway_port,
    }
    return {name: f"http://127.0.0.1:{port}/readyz" for name, port in ports.items()}


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--timeout", type=float, default=60.0)
    arguments = parser.parse_args()
    deadline = time.monotonic() + arguments.timeout
    waiting = stack_urls()
    while waiting and time.monotonic() < deadline:
        waiting = {name: url for name, url in waiting.items() if not _ready(url)}
        if waiting:
            time.sleep(0.25)
    for name, url in waiting.items():
        print(f"[start] {name} not ready after {arguments.timeout:.0f}s: {url}", file=sys.stderr)
    if waiting:
        return 1
    print(
        f"[start] the stack is ready: API at http://127.0.0.1:{GatewaySettings().gateway_port} (Ctrl-C stops it)",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
