"""Wait until every URL answers 200, or exit 1 naming those that did not within the timeout."""

import argparse
import sys
import time
import urllib.error
import urllib.request


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("urls", nargs="+")
    arguments = parser.parse_args()
    deadline = time.monotonic() + arguments.timeout
    waiting = list(arguments.urls)
    while waiting and time.monotonic() < deadline:
        waiting = [url for url in waiting if not _ready(url)]
        if waiting:
            time.sleep(0.25)
    for url in waiting:
        print(f"not ready after {arguments.timeout:.0f}s: {url}", file=sys.stderr)
    return 1 if waiting else 0


if __name__ == "__main__":
    sys.exit(main())
