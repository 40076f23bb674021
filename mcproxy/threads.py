"""Work that would hold the reactor too long (decoding, rendering or encoding megabytes) runs
in the reactor's thread pool through one helper."""

from collections.abc import Callable
from functools import partial

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool


def thread_runner(reactor) -> Callable[..., Deferred] | None:
    """``run(f, *args)``: Deferred of ``f(*args)`` in the reactor's thread pool; None for a
    clock without threads (deterministic tests then do the work inline)."""
    if not hasattr(reactor, "getThreadPool"):
        return None
    return partial(deferToThreadPool, reactor, reactor.getThreadPool())
