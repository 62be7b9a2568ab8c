"""Check that PostgreSQL and RabbitMQ answer where the settings say; exit 1 naming what is missing.

With --wait N it keeps trying for N seconds (for services that were just started).
"""

import argparse
import socket
import sys
import time
from urllib.parse import urlsplit

from common.settings import DatabaseSettings, ServiceSettings


def _endpoints() -> dict[str, tuple[str, int]]:
    database = urlsplit(DatabaseSettings().database_url)
    broker = urlsplit(ServiceSettings().amqp_url)
    return {
        "PostgreSQL": (database.hostname or "127.0.0.1", database.port or 5432),
        "RabbitMQ": (broker.hostname or "127.0.0.1", broker.port or 5672),
    }


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--wait", type=float, default=0.0, help="seconds to keep trying")
    deadline = time.monotonic() + parser.parse_args().wait
    while True:
        missing = {name: address for name, address in _endpoints().items() if not _reachable(*address)}
        if not missing or time.monotonic() >= deadline:
            break
        time.sleep(1.0)
    for name, (host, port) in missing.items():
        print(f"{name} is not reachable at {host}:{port}", file=sys.stderr)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
