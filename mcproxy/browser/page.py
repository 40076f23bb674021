"""One tab of a user's browser, as the tools see it.

A `Page` outlives CDP sessions: after a reconnect the same target gets a new flattened
session id but keeps its ``page_id``, its event subscriptions and its ``state``.
"""

import inspect
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred, DeferredLock
from twisted.logger import Logger

from mcproxy.errors import BrowserUnavailable, ToolError

log = Logger()

EventCallback = Callable[[str, dict], None]


class EventTimeout(ToolError):
    """`Page.wait_for_event` saw no matching event in time."""


class Page:
    """A page target with a flattened CDP session, per-page serialization and state."""

    def __init__(
        self,
        browser,
        page_id: int,
        target_id: str,
        *,
        url: str = "",
        title: str = "",
        browser_context_id: str | None = None,
        opener: str | None = None,
        via_proxy: bool = False,
    ):
        self.browser = browser
        self.page_id = page_id
        self.target_id = target_id
        self.session_id: str | None = None
        self.url = url
        self.title = title
        self.browser_context_id = browser_context_id
        self.opener = opener
        self.via_proxy = via_proxy
        self.closed = False
        self.state: dict[str, Any] = {}
        self._subscribers: dict[str | None, list[EventCallback]] = {}
        self._waiters: set[Deferred] = set()
        self._lock = DeferredLock()

    def __repr__(self) -> str:
        return f"<Page {self.page_id} {self.target_id[:8]} {self.url!r}>"

    def send(self, method: str, params: dict | None = None, *, timeout: float | None = None) -> Deferred:
        """A CDP call in this page's session. Deferred[dict]; fails fast when unusable."""
        connection = self.browser.cdp
        if self.closed:
            return defer.fail(ToolError(f"page {self.page_id} is closed; call list_pages to see open pages"))
        if connection is None or connection.closed:
            return defer.fail(BrowserUnavailable(self.browser.unavailable_message()))
        if self.session_id is None:
            return defer.fail(
                ToolError(f"page {self.page_id} has no DevTools session (the tab may have crashed); call list_pages")
            )
        return connection.send(method, params, session_id=self.session_id, timeout=timeout)

    def subscribe(self, method: str | None, callback: EventCallback) -> Callable[[], None]:
        """Call ``callback(method, params)`` on this page's events (``None``: every event).

        Subscriptions survive reconnects. Returns an unsubscribe callable.
        """
        self._subscribers.setdefault(method, []).append(callback)

        def unsubscribe() -> None:
            callbacks = self._subscribers.get(method, [])
            if callback in callbacks:
                callbacks.remove(callback)

        return unsubscribe

    def wait_for_event(
        self,
        method: str,
        predicate: Callable[[dict], bool] | None = None,
        timeout: float | None = None,
    ) -> Deferred:
        """Deferred[params] of the next ``method`` event matching ``predicate``.

        Bounded by ``timeout`` (default: the browser's call timeout), cancellable, and
        failed at once when the page closes or the connection drops; the subscription
        is removed either way.
        """
        seconds = self.browser.call_timeout if timeout is None else timeout
        waiting: Deferred = Deferred()
        self._waiters.add(waiting)

        def on_event(_: str, params: dict) -> None:
            if waiting.called:
                return
            try:
                matched = predicate is None or predicate(params)
            except Exception as e:
                waiting.errback(e)
                return
            if matched:
                waiting.callback(params)

        unsubscribe = self.subscribe(method, on_event)

        def done(result):
            self._waiters.discard(waiting)
            unsubscribe()
            return result

        def timed_out(failure):
            failure.trap(defer.TimeoutError)
            raise EventTimeout(f"page {self.page_id} did not fire {method} within {seconds:g} s")

        waiting.addTimeout(seconds, self.browser.clock)
        waiting.addErrback(timed_out)
        waiting.addBoth(done)
        return waiting

    def fail_waiters(self, error: Exception) -> None:
        """Fail every pending `wait_for_event` (the page closed or the link dropped)."""
        waiters, self._waiters = self._waiters, set()
        for waiting in waiters:
            if not waiting.called:
                waiting.errback(error)

    def run_exclusive(self, async_fn: Callable[..., Any], *args, **kw) -> Deferred:
        """Run ``async_fn(*args, **kw)`` after earlier calls on this page finish (FIFO).

        Other pages are not blocked. Cancelling a queued call removes it from the queue;
        cancelling a running one cancels what it awaits.
        """

        async def run() -> Any:
            await self._lock.acquire()
            try:
                result = async_fn(*args, **kw)
                if inspect.isawaitable(result):
                    result = await result
                return result
            finally:
                self._lock.release()

        return Deferred.fromCoroutine(run())

    @property
    def busy(self) -> bool:
        """True while a `run_exclusive` call runs on this page."""
        return self._lock.locked

    def dispatch(self, method: str, params: dict) -> None:
        """Deliver one event from this page's CDP session to the subscribers."""
        if method == "Page.frameNavigated" and not params.get("frame", {}).get("parentId"):
            self.url = params["frame"].get("url", self.url)
        for key in (method, None):
            for callback in list(self._subscribers.get(key, ())):
                try:
                    callback(method, params)
                except Exception:
                    log.failure("Page {page_id} handler for {method} failed", page_id=self.page_id, method=method)

    def mark_closed(self) -> None:
        """The target is gone: refuse further calls and drop subscriptions."""
        self.closed = True
        self.session_id = None
        self.fail_waiters(ToolError(f"page {self.page_id} was closed"))
        self._subscribers.clear()
