"""The control connection: a Redis pool for leases and claims alone.

Control traffic must not wait behind slow store calls (txredisapi's ``replyTimeout``
fails every reply waiting on a connection), and it must reconnect faster than a lease
expires, so it gets its own pool with a short backoff. txredisapi imports the global
reactor, so it is imported inside the functions.
"""

from collections.abc import Sequence
from typing import Any

import attrs
from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.error import ConnectionClosed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from mcproxy.errors import MCProxyError
from mcproxy.storage.redis import DEFAULT_PREFIX, parse_redis_url, redis_factory

log = Logger()


class CoordinationUnavailable(MCProxyError):
    """Redis did not answer in time, or this node holds no valid lease: cluster
    coordination cannot be trusted right now; retrying later may work."""

    http_status = 503
    code = "coordination_unavailable"
    retry_after = 2


def _unavailable(failure: Failure, timeout: float) -> Failure:
    """Turn a timeout or a lost connection into `CoordinationUnavailable`; errors that
    Redis itself answered (a script bug) and cancellations pass unchanged."""
    import txredisapi

    if failure.check(TimeoutError):
        raise CoordinationUnavailable(f"Redis did not answer within {timeout:g} s") from failure.value
    if failure.check(txredisapi.ConnectionError, ConnectionClosed):
        raise CoordinationUnavailable(f"Redis did not answer: {failure.getErrorMessage()}") from failure.value
    return failure


@attrs.define
class Control:
    """A txredisapi handler for control traffic whose every call ends within ``timeout``
    seconds on ``clock``, and the key prefix shared with the store."""

    redis: Any
    clock: IReactorTime
    prefix: str = DEFAULT_PREFIX
    timeout: float = 2.0

    def key(self, *parts: str) -> str:
        """The prefixed key made of ``parts`` (``key("node", "n1")`` is ``mcproxy:node:n1``)."""
        return self.prefix + ":".join(parts)

    def eval(self, script: str, keys: Sequence[str], args: Sequence[Any], *, timeout: float | None = None) -> Deferred:
        """Run a Lua script (EVALSHA, loading it when Redis lost it); fails with
        `CoordinationUnavailable` when Redis does not answer within ``timeout`` (by
        default the control's own: a caller on a request's path may wait less)."""
        limit = self.timeout if timeout is None else timeout
        d = self.redis.eval(script, list(keys), [str(a) for a in args])
        return d.addTimeout(limit, self.clock).addErrback(_unavailable, limit)

    async def time(self) -> float:
        """Redis's clock (TIME), in seconds since the epoch: the one clock all nodes share."""
        d = self.redis.time().addTimeout(self.timeout, self.clock).addErrback(_unavailable, self.timeout)
        seconds, micros = await d
        return int(seconds) + int(micros) / 1e6

    async def close(self) -> None:
        """Stop reconnecting and close the connections."""
        await self.redis.disconnect()


async def open_control(
    reactor, store_url: str, *, prefix: str = DEFAULT_PREFIX, timeout: float = 2.0, pool_size: int = 2
) -> Control:
    """A `Control` on the Redis of ``store_url``, once it answered (at most ``timeout``).

    A Redis that does not answer is logged, not fatal: the pool keeps reconnecting (within a
    second: `mcproxy.storage.redis.redis_factory`) and every call fails within ``timeout``
    until Redis is back.
    """
    host, port, db, username, password = parse_redis_url(store_url)
    factory = redis_factory(host, port, db, pool_size, username, password, timeout)
    factory.startConnecting(HostnameEndpoint(reactor, host, port, timeout=timeout))
    where = f"{host}:{port}"
    control = Control(factory.handler, reactor, prefix=prefix, timeout=timeout)
    try:
        await control.time()
    except CancelledError:
        await control.close()
        raise
    except CoordinationUnavailable as e:
        log.warn("Cluster control connection to Redis at {where}: {error}; still trying", where=where, error=e)
    return control
