"""Token-bucket rate limits, keyed by user (or any string)."""

import math
from collections import OrderedDict

from mcproxy.errors import RateLimited


class RateLimiter:
    """One token bucket per key: ``rate`` tokens a second, at most ``burst`` saved up.

    Buckets are kept in least-recently-used order and capped at ``max_keys``; a bucket
    that is evicted was idle the longest, and a fresh bucket starts full, so eviction
    only ever forgives.
    """

    def __init__(self, clock, rate: float, burst: int, max_keys: int = 100_000):
        self._clock = clock
        self.rate = rate
        self.burst = burst
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def check(self, key: str, cost: float = 1.0) -> None:
        """Take ``cost`` tokens from ``key``'s bucket, or raise `RateLimited` with Retry-After."""
        now = self._clock.seconds()
        tokens, stamp = self._buckets.pop(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - stamp) * self.rate)
        if tokens < cost:
            self._buckets[key] = (tokens, now)
            wait = math.ceil((cost - tokens) / self.rate)
            raise RateLimited(f"rate limit of {self.rate:g} requests a second exceeded; retry later", retry_after=wait)
        self._buckets[key] = (tokens - cost, now)
        while len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
