"""A token bucket per client (an API key's prefix), held in this gateway replica's memory."""

import time
from collections.abc import Callable
from dataclasses import dataclass

# Buckets of clients not seen for a while are full again and can be forgotten; past this many the
# least recently seen go first, so a flood of keys cannot grow the gateway's memory.
MAX_CLIENTS = 100_000


@dataclass
class _Bucket:
    tokens: float
    updated: float


class TokenBuckets:
    """`rate` tokens a second up to `burst`; each request takes one."""

    def __init__(
        self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic, max_clients: int = MAX_CLIENTS
    ) -> None:
        self._rate = rate
        self._burst = burst
        self._clock = clock
        self._max_clients = max_clients
        self._buckets: dict[str, _Bucket] = {}

    def take(self, client: str) -> float:
        """0 when `client` may go ahead (a token is taken); else how many seconds until it may."""
        now = self._clock()
        bucket = self._buckets.pop(client, None)
        if bucket is None:
            bucket = _Bucket(float(self._burst), now)
            while len(self._buckets) >= self._max_clients:
                del self._buckets[next(iter(self._buckets))]
        bucket.tokens = min(float(self._burst), bucket.tokens + (now - bucket.updated) * self._rate)
        bucket.updated = now
        # Re-inserted on every request: the dict's order is then least recently seen first.
        self._buckets[client] = bucket
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return 0.0
        return (1 - bucket.tokens) / self._rate
