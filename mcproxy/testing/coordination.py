"""Test tools for cluster coordination: a control per test, a link that can be cut,
and a clock that can be paused like a stopped process.

Nothing here imports txredisapi at module level (it imports the reactor).
"""

import secrets
import socket

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, LoopingCall

from mcproxy.cluster.control import Control, open_control
from mcproxy.testing.stores import delete_prefixed_keys, redis_test_url


async def open_test_control(reactor, *, timeout: float = 1.0) -> Control:
    """A `Control` on the test Redis under a prefix of its own (`discard_test_control`)."""
    return await open_control(
        reactor, redis_test_url(), prefix=f"mcproxy:test-{secrets.token_hex(6)}:", timeout=timeout
    )


async def discard_test_control(control: Control) -> None:
    """Delete a test control's keys and close it."""
    await delete_prefixed_keys(control)
    await control.close()


async def open_unreachable_control(reactor, *, timeout: float = 0.3) -> Control:
    """A `Control` pointed at a closed local port: Redis down."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return await open_control(reactor, f"redis://127.0.0.1:{port}/15", timeout=timeout)


class Link:
    """A `Control` seen through a link the test can reroute (``target``), e.g. to an
    unreachable Redis to cut a node off; counts calls and answers."""

    def __init__(self, target: Control):
        self.target = target
        self.calls = 0
        self.answers = 0

    @property
    def prefix(self) -> str:
        return self.target.prefix

    def key(self, *parts: str) -> str:
        return self.target.key(*parts)

    def eval(self, script, keys, args, *, timeout: float | None = None) -> Deferred:
        self.calls += 1
        d = self.target.eval(script, keys, args, timeout=timeout)

        def answered(result):
            self.answers += 1
            return result

        return d.addBoth(answered)


class PausableClock(Clock):
    """A `Clock` that follows the reactor's time in small steps until `pause`, then
    stands still (the timers of a stopped process) until `resume` jumps it forward."""

    def __init__(self, reactor, step: float = 0.02):
        super().__init__()
        self.rightNow = reactor.seconds()
        self._reactor = reactor
        self._step = step
        self._follow = LoopingCall(lambda: self.advance(max(0.0, reactor.seconds() - self.rightNow)))
        self._follow.clock = reactor
        self.resume()

    def pause(self) -> None:
        """Stand still, as the timers of a stopped process."""
        self._follow.stop()

    def resume(self) -> None:
        """Catch up with the reactor at once (overdue timers run in order), then follow it."""
        if not self._follow.running:
            self._follow.start(self._step, now=True)

    def stop(self) -> None:
        """Stop following for good (test teardown)."""
        if self._follow.running:
            self._follow.stop()
