"""Token-bucket rate limits: per client address, per user, per endpoint class and per tool."""

import math
from collections import OrderedDict
from collections.abc import Callable

from mcproxy.config import RateLimitConfig, parse_limit
from mcproxy.errors import RateLimited


def exceeded(rate: float, wait: int) -> RateLimited:
    """The refusal of a bucket filling at ``rate`` that has enough again in ``wait`` seconds."""
    return RateLimited(f"rate limit of {rate:g} requests a second exceeded; retry in {wait} s", retry_after=wait)


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

    def configure(self, rate: float, burst: int) -> None:
        """New numbers for every bucket: a bigger burst is there to use at once, a smaller
        one caps the saved-up tokens at the next check; what keys spent stays spent."""
        grown = burst - self.burst
        if grown > 0:
            for key, (tokens, stamp) in self._buckets.items():
                self._buckets[key] = (tokens + grown, stamp)
        self.rate = rate
        self.burst = burst

    def wait(self, key: str, cost: float = 1.0) -> int:
        """Whole seconds until ``key`` could spend ``cost`` (0: it can now); spends nothing."""
        bucket = self._buckets.get(key)
        if bucket is None:
            return 0
        tokens, stamp = bucket
        tokens = min(float(self.burst), tokens + (self._clock.seconds() - stamp) * self.rate)
        return 0 if tokens >= cost else math.ceil((cost - tokens) / self.rate)

    def check(self, key: str, cost: float = 1.0) -> None:
        """Take ``cost`` tokens from ``key``'s bucket, or raise `RateLimited` with Retry-After."""
        now = self._clock.seconds()
        tokens, stamp = self._buckets.pop(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - stamp) * self.rate)
        if tokens < cost:
            self._buckets[key] = (tokens, now)
            raise exceeded(self.rate, math.ceil((cost - tokens) / self.rate))
        self._buckets[key] = (tokens - cost, now)
        while len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)


class RequestLimits:
    """Every rate limit of the daemon, from ``ratelimit.*``.

    A request is counted against its client address before authentication (guessing
    credentials costs the guesser), then against its user, then against the user's bucket
    of its endpoint class; a tool call also against the user's bucket of that tool.
    """

    def __init__(self, clock, config: RateLimitConfig, on_limited: Callable[[str], None] = lambda kind: None):
        self._clock = clock
        self.addresses = RateLimiter(clock, config.address_rate, config.address_burst)
        self.users = RateLimiter(clock, config.user_rate, config.user_burst)
        self._classes: dict[str, RateLimiter] = {}
        self._tools: dict[str, RateLimiter] = {}
        self._on_limited = on_limited
        self._configure(config)

    def reconfigure(self, config) -> None:
        """Apply new ``ratelimit.*`` values (live reload).

        Buckets that still exist keep what their keys have spent (see `RateLimiter.configure`);
        limits no longer configured go away.
        """
        self._configure(config.ratelimit)

    def _configure(self, config: RateLimitConfig) -> None:
        parsed = [parse_limit(text) for text in config.limits]  # raises before anything changes
        self.addresses.configure(config.address_rate, config.address_burst)
        self.users.configure(config.user_rate, config.user_burst)
        classes: dict[str, RateLimiter] = {}
        tools: dict[str, RateLimiter] = {}
        for kind, name, rate, burst in parsed:
            existing, target = (self._classes, classes) if kind == "endpoint" else (self._tools, tools)
            limiter = existing.get(name) or RateLimiter(self._clock, rate, burst)
            limiter.configure(rate, burst)
            target[name] = limiter
        self._classes, self._tools = classes, tools

    def _take(self, kind: str, limiter: RateLimiter | None, key: str) -> None:
        if limiter is None:
            return
        try:
            limiter.check(key)
        except RateLimited:
            self._on_limited(kind)
            raise

    def check_address(self, address: str) -> None:
        """Count a request from ``address`` (before authentication)."""
        self._take("address", self.addresses, address)

    def check_user(self, user_id: str, endpoint_class: str) -> None:
        """Count an authenticated request of ``user_id`` to ``endpoint_class`` ("mcp", "admin")."""
        self._take("user", self.users, user_id)
        self._take("endpoint", self._classes.get(endpoint_class), user_id)

    def check_tool(self, user_id: str, tool: str) -> None:
        """Count a call of ``tool`` by ``user_id`` where that tool has its own limit."""
        self._take("tool", self._tools.get(tool) or self._tools.get("*"), user_id)
