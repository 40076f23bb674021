import pytest
from twisted.internet.task import Clock

from mcproxy.auth.ratelimit import RateLimiter
from mcproxy.errors import RateLimited


def test_burst_then_refill():
    clock = Clock()
    limiter = RateLimiter(clock, rate=2, burst=3)
    for _ in range(3):
        limiter.check("alice")
    with pytest.raises(RateLimited) as caught:
        limiter.check("alice")
    assert caught.value.retry_after == 1
    assert caught.value.http_status == 429
    clock.advance(0.5)
    limiter.check("alice")
    with pytest.raises(RateLimited):
        limiter.check("alice")


def test_users_are_independent():
    clock = Clock()
    limiter = RateLimiter(clock, rate=1, burst=1)
    limiter.check("alice")
    with pytest.raises(RateLimited):
        limiter.check("alice")
    limiter.check("bob")


def test_refill_is_capped_at_burst():
    clock = Clock()
    limiter = RateLimiter(clock, rate=10, burst=2)
    clock.advance(3600)
    limiter.check("alice")
    limiter.check("alice")
    with pytest.raises(RateLimited):
        limiter.check("alice")


def test_key_count_is_bounded():
    clock = Clock()
    limiter = RateLimiter(clock, rate=1, burst=1, max_keys=10)
    for i in range(100):
        limiter.check(f"user{i}")
    assert len(limiter._buckets) == 10
