"""Shared rate limits against a real Redis: one TAKE over the user's buckets, all or
nothing, the local limiter when Redis does not answer. Each test has a key prefix of its own."""

import pytest
import pytest_twisted

from mcproxy.auth.ratelimit import RequestLimits
from mcproxy.cluster.limits import SharedLimits
from mcproxy.config import RateLimitConfig
from mcproxy.errors import RateLimited
from mcproxy.testing.coordination import Link, open_unreachable_control


def shared(reactor, control, limited=None, **config):
    """A `SharedLimits` on ``control`` with ``ratelimit.*`` = ``config``; refusals go to ``limited``."""
    settings = RateLimitConfig(**config)
    limits = SharedLimits(
        reactor,
        settings,
        RequestLimits(reactor, settings),
        on_limited=(limited.append if limited is not None else lambda kind: None),
    )
    limits.control = control
    return limits


async def accepted(limits, count: int, user: str = "alice", endpoint_class: str = "mcp") -> int:
    """How many of ``count`` requests in a row the limits let through."""
    taken = 0
    for _ in range(count):
        try:
            await limits.check_user(user, endpoint_class)
        except RateLimited:
            continue
        taken += 1
    return taken


async def rewind(control, key: str, seconds: float) -> None:
    """Make a bucket's last take ``seconds`` older, as if that much time had passed."""
    stamp = float(await control.redis.hget(key, "ts"))
    await control.redis.hset(key, "ts", repr(stamp - seconds))


@pytest_twisted.ensureDeferred
async def test_a_burst_then_a_refusal_that_says_when_to_retry(reactor, control):
    limited = []
    limits = shared(reactor, control, limited, user_rate=0.5, user_burst=3)
    assert await accepted(limits, 3) == 3
    with pytest.raises(RateLimited) as refused:
        await limits.check_user("alice", "mcp")
    assert refused.value.retry_after == 2  # one token at 0.5 a second
    assert refused.value.http_status == 429
    assert limited == ["user"]
    assert await accepted(limits, 1, user="bob") == 1  # buckets are per user
    assert limits.fallbacks == 0


@pytest_twisted.ensureDeferred
async def test_two_processes_share_one_bucket(reactor, control):
    one = shared(reactor, control, user_rate=0.01, user_burst=4)
    other = shared(reactor, control, user_rate=0.01, user_burst=4)
    assert await accepted(one, 3) == 3
    assert await accepted(other, 3) == 1  # the fourth of four, whichever process takes it


@pytest_twisted.ensureDeferred
async def test_buckets_refill_at_their_rate(reactor, control):
    limits = shared(reactor, control, user_rate=2, user_burst=5)
    assert await accepted(limits, 6) == 5
    (bucket,) = limits.buckets("alice", "mcp")
    await rewind(control, bucket.key, 1.0)
    assert await accepted(limits, 3) == 2  # 2 tokens a second
    await rewind(control, bucket.key, 60.0)
    assert await accepted(limits, 7) == 5  # never more than the burst


@pytest_twisted.ensureDeferred
async def test_all_buckets_or_none(reactor, control):
    limited = []
    limits = shared(reactor, control, limited, user_rate=0.001, user_burst=10, limits=("endpoint:admin=0.001/1",))
    user, admin = limits.buckets("alice", "admin")
    await limits.check_user("alice", "admin")
    assert float(await control.redis.hget(admin.key, "tk")) < 0.01  # one request took from both
    with pytest.raises(RateLimited) as refused:
        await limits.check_user("alice", "admin")
    assert limited == ["endpoint"]
    assert refused.value.retry_after == 1000
    assert round(float(await control.redis.hget(user.key, "tk"))) == 9  # the refusal took nothing
    assert await accepted(limits, 1, endpoint_class="mcp") == 1  # no limit of its own for mcp
    assert round(float(await control.redis.hget(user.key, "tk"))) == 8
    assert len(limits.buckets("alice", "mcp")) == 1


@pytest_twisted.ensureDeferred
async def test_a_reload_applies_to_the_next_request(reactor, control):
    limits = shared(reactor, control, user_rate=0.001, user_burst=2)
    assert await accepted(limits, 3) == 2

    class Reloaded:
        ratelimit = RateLimitConfig(user_rate=0.001, user_burst=4)

    limits.reconfigure(Reloaded)
    assert await accepted(limits, 3) == 2  # a bigger burst is there at once, as in one process
    Reloaded.ratelimit = RateLimitConfig(user_rate=0.001, user_burst=1)
    limits.reconfigure(Reloaded)
    with pytest.raises(RateLimited) as refused:
        await limits.check_user("alice", "mcp")
    assert refused.value.retry_after == 1000


@pytest_twisted.ensureDeferred
async def test_idle_buckets_expire_once_full_again(reactor, control):
    limits = shared(reactor, control, user_rate=10, user_burst=5)
    await limits.check_user("alice", "mcp")
    (bucket,) = limits.buckets("alice", "mcp")
    ttl = await control.eval("return redis.call('PTTL', KEYS[1])", [bucket.key], [])
    assert 1000 < int(ttl) <= 1100  # 0.1 s to refill one token, then a second to spare


@pytest_twisted.ensureDeferred
async def test_without_redis_each_process_limits_on_its_own(reactor):
    dead = await open_unreachable_control(reactor, timeout=0.3)
    link = Link(dead)
    try:
        limits = shared(reactor, link, user_rate=0.001, user_burst=2)
        assert await accepted(limits, 3) == 2  # the local limiter's burst
        assert limits.fallbacks == 3
        assert link.calls == 1  # after one unanswered call, Redis is left alone for a while
        limits._paused_until = 0.0  # the pause is over
        with pytest.raises(RateLimited):
            await limits.check_user("alice", "mcp")
        assert link.calls == 2 and limits.fallbacks == 4
    finally:
        await dead.close()


@pytest_twisted.ensureDeferred
async def test_before_the_node_connects_the_local_limiter_counts(reactor):
    limits = shared(reactor, None, user_rate=0.001, user_burst=1)
    assert await accepted(limits, 2) == 1
    assert limits.fallbacks == 2


@pytest_twisted.ensureDeferred
async def test_a_large_burst_is_taken_in_batches_and_never_overspent_across_processes(reactor, control):
    # Burst 80: each process takes 10 tokens per Redis call and spends them locally.
    first, second = Link(control), Link(control)
    one = shared(reactor, first, user_rate=0.01, user_burst=80)
    two = shared(reactor, second, user_rate=0.01, user_burst=80)
    taken = 0
    for _ in range(60):  # the two processes take turns, as behind round robin
        taken += await accepted(one, 1) + await accepted(two, 1)
    # Never more than the burst (and the refill of 0.01/s the run may add), and the tokens one
    # process holds unspent are at most one batch.
    assert 80 - 10 <= taken <= 81
    # Far fewer Redis calls than requests: about one per batch, one per refusal.
    assert first.calls + second.calls <= taken / 10 + 2 + (120 - taken)
    # Small bursts stay exact: one token per call.
    exact = Link(control)
    limits = shared(reactor, exact, user_rate=0.01, user_burst=5)
    assert await accepted(limits, 8, user="bob") == 5
    assert exact.calls == 8
