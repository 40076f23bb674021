"""One tab of a user's browser, as the tools see it.

A `Page` outlives CDP sessions: after a reconnect the same target gets a new flattened
session id but keeps its ``page_id``, its event subscriptions and its ``state`` (a
`PageState`).

When the tab goes away (closed by the human, by a script, or its renderer crashed) the
calls a tool is waiting on would never be answered; Chrome keeps silent about them. So
the page fails them at once, and while crashed it refuses every call but those that
bring it back (a reload or a navigation recreates the renderer in the same target).
Likewise a JavaScript dialog that nobody answers within `DIALOG_GRACE` (tools that
answer dialogs themselves do so at once) fails the calls it blocks, with advice, instead
of letting them run into the CDP timeout.
"""

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred, DeferredLock
from twisted.logger import Logger

from mcproxy.browser.dialogs import DialogState
from mcproxy.errors import BrowserUnavailable, ToolError

if TYPE_CHECKING:
    from mcproxy.browser.collect import Collector, PageRecords
    from mcproxy.browser.emulation import Emulation

log = Logger()

EventCallback = Callable[[str, dict], None]


class EventTimeout(ToolError):
    """`Page.wait_for_event` saw no matching event in time."""


#: Calls that load a new renderer. The browser process answers them, so a crash that
#: arrives while one is on its way does not fail it: it is how the page recovers.
RELOADS = frozenset({"Page.reload", "Page.navigate", "Page.navigateToHistoryEntry"})

#: Calls a crashed page still accepts: the reloads, and the set-up a fresh session sends.
CRASH_SAFE = RELOADS | frozenset(
    {
        "Page.getNavigationHistory",
        "Page.addScriptToEvaluateOnNewDocument",
        "Page.removeScriptToEvaluateOnNewDocument",
        "Page.enable",
        "Page.setLifecycleEventsEnabled",
        "Page.bringToFront",
        "Inspector.enable",
        "Runtime.runIfWaitingForDebugger",
    }
)

#: Domains and methods a JavaScript dialog blocks (measured): they need the renderer's main
#: thread. Browser-side calls (navigation, Target, Tracing, IO, Fetch...) still answer.
DIALOG_BLOCKED = frozenset(
    {
        *("Runtime", "DOM", "DOMSnapshot", "DOMStorage", "Accessibility", "CSS", "Input", "Overlay"),
        *("Emulation", "Performance", "Log", "HeapProfiler", "Profiler", "Debugger", "Animation", "LayerTree"),
        *("Page.captureScreenshot", "Page.getLayoutMetrics", "Page.printToPDF"),
    }
)
#: How long an open dialog may stay unanswered before the calls it blocks fail.
DIALOG_GRACE = 0.3


def blocked_by_dialog(method: str) -> bool:
    """Whether an open JavaScript dialog holds up ``method``."""
    return method in DIALOG_BLOCKED or method.split(".", 1)[0] in DIALOG_BLOCKED


@attrs.define
class PageState:
    """What the page listeners and the tools keep of one page; it outlives DevTools sessions.

    A part left None has not started: its owner creates it on first use.
    """

    #: Console and network collection (`mcproxy.browser.collect`).
    records: "PageRecords | None" = None
    #: The collector that starts once a caller may see the page (`make_visible`).
    pending_collector: "Collector | None" = None
    #: The JavaScript dialog that blocks the page (`mcproxy.browser.dialogs`).
    dialog: DialogState = attrs.Factory(DialogState)
    #: The emulation in force, restored after a reconnect (`mcproxy.browser.emulation`).
    emulation: "Emulation | None" = None
    #: What the tools keep of the page (`mcproxy.tools.page_state`); the browser never reads it.
    tools: Any = None


class Page:
    """A page target with a flattened CDP session, per-page serialization and state."""

    def __init__(
        self,
        browser,
        page_id: int | str,
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
        #: The renderer crashed (Inspector.targetCrashed) and has not been reloaded since.
        self.crashed = False
        self.state = PageState()
        self._subscribers: dict[str | None, list[EventCallback]] = {}
        self._waiters: set[Deferred] = set()
        #: Calls awaiting Chrome's answer: the caller's Deferred -> (the CDP call, its method).
        self._calls: dict[Deferred, tuple[Deferred, str]] = {}
        self._dialog_timer = None
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
        if self.crashed and method not in CRASH_SAFE:
            return defer.fail(ToolError(self.crash_message()))
        if self.session_id is None:
            return defer.fail(
                ToolError(f"page {self.page_id} has no DevTools session (the tab may have crashed); call list_pages")
            )
        return self._track(connection.send(method, params, session_id=self.session_id, timeout=timeout), method)

    def _track(self, call: Deferred, method: str) -> Deferred:
        """The caller's view of ``call``, which `_fail_calls` can fail before Chrome answers."""
        tracked: Deferred = Deferred(lambda _: call.cancel())
        self._calls[tracked] = (call, method)

        def answered(result):
            self._calls.pop(tracked, None)
            if not tracked.called:
                tracked.callback(result)  # a Failure goes down the errback chain
            # Otherwise the caller was told already (`_fail_calls`): drop the late outcome.

        call.addBoth(answered)
        return tracked

    def _fail_calls(self, error: Exception, affected: Callable[[str], bool] = lambda method: True) -> None:
        """Fail the calls (of the ``affected`` methods) awaiting an answer that will not come."""
        for tracked, (call, method) in list(self._calls.items()):
            if not affected(method):
                continue
            del self._calls[tracked]
            if not tracked.called:
                tracked.errback(error)
            call.cancel()

    def _dialog_opened(self, params: dict) -> None:
        self._dialog_closed()
        self._dialog_timer = self.browser.clock.callLater(DIALOG_GRACE, self._dialog_unanswered, params)

    def _dialog_closed(self) -> None:
        if self._dialog_timer is not None and self._dialog_timer.active():
            self._dialog_timer.cancel()
        self._dialog_timer = None

    def _dialog_unanswered(self, params: dict) -> None:
        self._dialog_timer = None
        kind = params.get("type") or "alert"
        article = "an" if kind[0] in "aeiou" else "a"
        self._fail_calls(
            ToolError(
                f'Page {self.page_id} opened {article} {kind} dialog ("{params.get("message", "")}") while the '
                'tool ran, and it blocks the page. Call handle_dialog with action "accept" or "dismiss", '
                "then try again."
            ),
            affected=blocked_by_dialog,
        )

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
        return self._lock.run(async_fn, *args, **kw)

    @property
    def busy(self) -> bool:
        """True while a `run_exclusive` call runs on this page."""
        return self._lock.locked

    def crash_message(self) -> str:
        """What tools on a crashed page answer."""
        return f"Page {self.page_id} crashed; reload it with navigate_page type=reload or close it."

    def mark_crashed(self) -> None:
        """The renderer died: fail what waits on it; refuse calls until a reload."""
        self.crashed = True
        self._dialog_closed()
        error = ToolError(self.crash_message())
        self.fail_waiters(error)
        self._fail_calls(error, affected=lambda method: method not in RELOADS)

    def dispatch(self, method: str, params: dict) -> None:
        """Deliver one event from this page's CDP session to the subscribers."""
        if method == "Inspector.targetCrashed":
            self.mark_crashed()
        elif method in ("Inspector.targetReloadedAfterCrash", "Page.loadEventFired"):
            # A session attached mid-reload hears of the crash but not of the recovery.
            self.crashed = False
        elif method == "Page.javascriptDialogOpening":
            self._dialog_opened(params)
        elif method == "Page.javascriptDialogClosed":
            self._dialog_closed()
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
        self._dialog_closed()
        error = ToolError(
            f"page {self.page_id} was closed (in the browser or by a script); call list_pages to see the open pages"
        )
        self.fail_waiters(error)
        self._fail_calls(error)
        self._subscribers.clear()
