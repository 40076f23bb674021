"""Rate limits shared by the processes of a cluster: the user's token buckets live in Redis.

Behind a round-robin balancer, N processes each limiting on their own would let a user
make N times the configured rate. So the process a request reaches (the edge) takes one
token from every bucket that applies, the user's and the user's bucket of the endpoint
class (``ratelimit.limits`` ``endpoint:mcp``/``endpoint:admin``), in one Lua call: all or
nothing, with the same semantics as `mcproxy.auth.ratelimit.RateLimiter` (buckets start
full; a bucket that expired was full anyway). The rates travel with every call, so a live
reload applies at once on every process that has reloaded.

Not here, on purpose:

- Tool limits (``tool:`` entries) stay in the owner's local `RequestLimits.check_tool`:
  every call of a user's tools runs on that user's one owner, so they are exact already.
- Per-address limits stay per process: they guard against floods before authentication.
- The owner does not count a request forwarded to it again: the internal listener admits
  by envelope alone (`mcproxy.cluster.service.ClusterNode.internal_admission`).

A Redis call per request would cost every request a round trip, so the edge takes up to
`BATCH` tokens at once (an eighth of the smallest burst at most: small bursts stay exact)
and spends them on the user's next requests, for at most `HOLD` seconds. A user can never
exceed the limit this way, since tokens are taken before they are spent; tokens one process
holds are only briefly unavailable to the others.

When Redis does not answer within ``budget`` (50 ms), the request is limited by this
process's own `RequestLimits` instead (fail open: a Redis outage must not refuse every
request), and Redis is left alone for ``pause`` seconds, so an outage costs neither 50 ms
per request nor a pile of waiting calls.
"""

import attrs
from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from mcproxy.auth.ratelimit import RequestLimits, exceeded
from mcproxy.cluster.control import Control
from mcproxy.config import RateLimitConfig, parse_limit

log = Logger()

#: Take up to ``ARGV[1]`` tokens (at least one) from every bucket in KEYS, as many as all of
#: them have, or none. ARGV: that number, then rate and burst of each key in turn. Returns
#: {0, n} when n tokens were taken, else {i, wait}: bucket i (1-based) has not one token, and
#: has one again in ``wait`` whole seconds.
#: A bucket is a hash (tk: tokens left, ts: Redis time of the last take, b: the burst then)
#: that expires once it would be full again, so an idle user costs no memory. A burst that
#: grew since is there to use at once, as in `RateLimiter.configure`. ``%.0f`` keeps
#: PEXPIRE's argument an integer (Lua 5.1 prints large numbers with an exponent).
TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local want, tokens = tonumber(ARGV[1]), {}
for i = 1, #KEYS do
  local rate, burst = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  local v = redis.call('HMGET', KEYS[i], 'tk', 'ts', 'b')
  local tk = burst
  if v[1] then
    tk = tonumber(v[1]) + math.max(0, burst - tonumber(v[3])) + math.max(0, now - tonumber(v[2])) * rate
    tk = math.min(burst, tk)
  end
  if tk < 1 then return {i, math.ceil((1 - tk) / rate)} end
  if tk < want then want = math.floor(tk) end
  tokens[i] = tk
end
for i = 1, #KEYS do
  local rate, burst = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  local left = tokens[i] - want
  redis.call('HSET', KEYS[i], 'tk', left, 'ts', now, 'b', burst)
  redis.call('PEXPIRE', KEYS[i], string.format('%.0f', math.ceil((burst - left) / rate * 1000) + 1000))
end
return {0, want}
"""

#: The most tokens taken from Redis at once, to spend on the next requests locally.
BATCH = 10
#: Seconds an edge keeps tokens it took and has not spent yet.
HOLD = 1.0
#: Users whose unspent tokens are kept before the expired ones are swept.
HELD_SWEEP = 10_000

#: Seconds the edge waits for Redis before it limits locally.
BUDGET = 0.05
#: Seconds the edge limits locally after Redis failed to answer, before it asks again.
PAUSE = 1.0


@attrs.frozen
class _Bucket:
    kind: str  # the ``mcproxy_rate_limited_total`` kind: "user" or "endpoint"
    key: str
    rate: float
    burst: int


class SharedLimits:
    """The per-user limits of a cluster's edge (module docstring): ``check_user`` is an
    `mcproxy.auth.admission.Admission` ``check_user``.

    ``control`` is set once the node is connected to Redis (until then, and whenever Redis
    is slow, ``local`` limits); ``on_limited(kind)`` hears every refusal, as
    `RequestLimits`' does; ``fallbacks`` counts requests limited locally
    (``mcproxy_ratelimit_fallback_total``).
    """

    def __init__(
        self,
        clock: IReactorTime,
        config: RateLimitConfig,
        local: RequestLimits,
        *,
        on_limited=lambda kind: None,
        budget: float = BUDGET,
        pause: float = PAUSE,
    ):
        self.clock = clock
        self.local = local
        self.control: Control | None = None
        self.budget = budget
        self.pause = pause
        self.fallbacks = 0
        self._on_limited = on_limited
        self._paused_until = 0.0
        self._degraded = False
        #: Tokens taken and not spent yet, by the keys of their buckets: (count, until when).
        self._held: dict[tuple[str, ...], tuple[int, float]] = {}
        self._configure(config)

    def reconfigure(self, config) -> None:
        """Apply new ``ratelimit.*`` values (live reload): the next request takes at the new rates."""
        self._configure(config.ratelimit)

    def _configure(self, config: RateLimitConfig) -> None:
        self._user = (config.user_rate, config.user_burst)
        parsed = [parse_limit(text) for text in config.limits]
        self._classes = {name: (rate, burst) for kind, name, rate, burst in parsed if kind == "endpoint"}

    def buckets(self, user_id: str, endpoint_class: str) -> list[_Bucket]:
        """The buckets a request of ``user_id`` to ``endpoint_class`` takes from."""
        control = self.control
        assert control is not None
        buckets = [_Bucket("user", control.key("rl", "u", user_id), *self._user)]
        limit = self._classes.get(endpoint_class)
        if limit is not None:
            buckets.append(_Bucket("endpoint", control.key("rl", "e", endpoint_class, user_id), *limit))
        return buckets

    async def check_user(self, user_id: str, endpoint_class: str) -> None:
        """Take a token from each of the request's buckets in Redis, or raise `RateLimited`
        (with Retry-After) naming the first bucket that is short; limit locally when Redis
        does not answer in time."""
        control = self.control
        if control is None or self.clock.seconds() < self._paused_until:
            self._fall_back(user_id, endpoint_class)
            return
        buckets = self.buckets(user_id, endpoint_class)
        keys = tuple(bucket.key for bucket in buckets)
        now = self.clock.seconds()
        held = self._held.get(keys)
        if held is not None and held[0] > 0 and held[1] > now:
            self._held[keys] = (held[0] - 1, held[1])
            return
        batch = max(1, min(BATCH, min(bucket.burst for bucket in buckets) // 8))
        try:
            short, got = await self._take(control, buckets, batch)
        except CancelledError:
            raise
        except Exception as e:
            self._paused_until = self.clock.seconds() + self.pause
            if not self._degraded:
                self._degraded = True
                log.warn(
                    "Shared rate limits unavailable ({error}); each process limits on its own until Redis answers",
                    error=e,
                )
            self._fall_back(user_id, endpoint_class)
            return
        if self._degraded:
            self._degraded = False
            log.info("Shared rate limits are back")
        if int(short):
            bucket = buckets[int(short) - 1]
            self._on_limited(bucket.kind)
            raise exceeded(bucket.rate, int(got))  # for a refusal, the wait
        if int(got) > 1:
            if len(self._held) >= HELD_SWEEP:
                self._held = {k: v for k, v in self._held.items() if v[1] > now}
            self._held[keys] = (int(got) - 1, now + HOLD)

    def _take(self, control: Control, buckets: list[_Bucket], most: int):
        """One TAKE of up to ``most`` tokens: Deferred[(0, tokens taken) or (short bucket, wait)]."""
        args: list = [most]
        for bucket in buckets:
            args += [bucket.rate, bucket.burst]
        return control.eval(TAKE, [b.key for b in buckets], args, timeout=self.budget)

    def _fall_back(self, user_id: str, endpoint_class: str) -> None:
        self.fallbacks += 1
        self.local.check_user(user_id, endpoint_class)
