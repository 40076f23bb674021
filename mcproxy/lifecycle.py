"""Services that start one after the other and stop in reverse, waiting for each.

Twisted's `MultiService` starts its children all at once and cannot wait for one that
needs time (a store opening, a plugin connecting). The daemon's parts depend on each
other in a fixed order (the store before the browsers it lists, everything before the
listeners), so `StartInOrder` starts each child once the one before it is ready, and
stops them in reverse order; a child that fails to stop is logged and the others still
stop (error isolation).
"""

from twisted.application.service import MultiService, Service
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.logger import Logger

log = Logger()


class AsyncService(Service):
    """A service whose start and stop are coroutines (`start`, `stop`).

    ``started`` fires once `start` is done; a `StartInOrder` parent waits for it before
    it starts the next child. Stopping while `start` still runs cancels it.
    """

    started: Deferred | None = None

    async def start(self) -> None:
        """Become ready (open, connect, load); raising fails the daemon's start."""

    async def stop(self) -> None:
        """Release what `start` acquired."""

    def startService(self) -> None:
        super().startService()
        self.started = Deferred.fromCoroutine(self.start())

    def stopService(self) -> Deferred:
        super().stopService()
        if self.started is not None and not self.started.called:
            self.started.cancel()
        return Deferred.fromCoroutine(self.stop())


class StartInOrder(MultiService):
    """A `MultiService` whose children start in the order they were added, each once the
    one before is ready (its ``started`` Deferred, when it has one), and stop in reverse.

    ``started`` fires when every child has started, or fails with the first failure.
    """

    started: Deferred | None = None

    def privilegedStartService(self) -> None:
        """Nothing starts early: a listener bound before the parts it serves were ready
        would take requests they cannot answer yet."""
        Service.privilegedStartService(self)

    def startService(self) -> None:
        Service.startService(self)
        self.started = Deferred.fromCoroutine(self._start_children())

    async def _start_children(self) -> None:
        for child in list(self):
            if not self.running:
                raise CancelledError()
            child.startService()
            ready = getattr(child, "started", None)
            if ready is not None:
                await ready

    def stopService(self) -> Deferred:
        Service.stopService(self)
        if self.started is not None and not self.started.called:
            self.started.cancel()
        return Deferred.fromCoroutine(self._stop_children())

    async def _stop_children(self) -> None:
        for child in reversed(list(self)):
            if not child.running:
                continue
            try:
                await maybeDeferred(child.stopService)
            except Exception:
                log.failure("{service} did not stop cleanly; stopping the others", service=child.name or child)
