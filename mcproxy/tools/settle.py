"""Waiting for a page to settle after an input action, driven by events (see ``docs/architecture.rst``).

chrome-devtools-mcp sleeps up to 100 ms for a navigation to start, then waits for a 100 ms
quiet DOM window, one after the other. Here both windows start when the action is
dispatched and run side by side:

- navigation: the main frame's ``Page.frameStartedLoading`` within `NAVIGATION_WINDOW`
  means the action navigated; we then wait for it to finish loading (bounded by the
  navigation timeout) and for the new document to be quiet;
- DOM: a MutationObserver installed in the page just before the action counts mutations;
  every `DOM_POLL` of the proxy's own clock we read the count, and return once it has not
  changed for `DOM_QUIET` (page timers are not used, so throttled background tabs do not
  slow it down). The wait is capped by `SETTLE_CAP`, on the same clock.

The page only ever tells us *that* something changed, never *when*: a page is untrusted (it
can redefine ``performance.now``, ``MutationObserver``, or mutate forever), and whatever it
does, the page lock is released by `SETTLE_CAP` (plus one navigation wait when the action
navigated).

A JavaScript dialog blocks the page; when one opens the action returns at once with its
parameters instead of hanging (`mcproxy.tools.dialogs` words it and tracks it).
"""

from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet.defer import Deferred, TimeoutError, succeed
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from mcproxy.errors import CDPError

log = Logger()

NAVIGATION_WINDOW = 0.05
DOM_QUIET = 0.1
DOM_POLL = 0.025
SETTLE_CAP = 3.0

_INSTALL_OBSERVER = """(() => {
  const watch = {count: 0};
  watch.observer = new MutationObserver(() => { watch.count += 1; });
  watch.observer.observe(document, {childList: true, subtree: true, attributes: true, characterData: true});
  return watch;
})()"""
_MUTATIONS = "function () { return this.count; }"
_DISCONNECT = "function () { this.observer.disconnect(); }"


_MAIN_FRAME_EVENTS = {
    "Page.frameStartedLoading": "navigation_started",
    "Page.frameStoppedLoading": "navigation_done",
    "Page.navigatedWithinDocument": "navigation_done",
}


class PageEvents:
    """Deferreds for the page events an action waits on, for as long as it is open.

    ``when(kind)`` returns a new Deferred for each waiter, fired by the next (or an
    earlier) ``navigation_started`` / ``navigation_done`` / ``dialog`` event, so that
    cancelling one waiter never disturbs another.
    """

    def __init__(self, page):
        self._page = page
        self._seen: dict[str, dict] = {}
        self._waiters: dict[str, list[Deferred]] = {}
        self._unsubscribe = [page.subscribe(method, self._on_main) for method in _MAIN_FRAME_EVENTS]
        self._unsubscribe += [
            page.subscribe("Page.loadEventFired", lambda _, params: self._fire("navigation_done", params)),
            page.subscribe("Page.javascriptDialogOpening", lambda _, params: self._fire("dialog", params)),
        ]

    def _on_main(self, method: str, params: dict) -> None:
        if params.get("frameId") == self._page.target_id:
            self._fire(_MAIN_FRAME_EVENTS[method], params)

    def _fire(self, kind: str, params: dict) -> None:
        if kind == "navigation_started":
            self._seen.pop("navigation_done", None)
        self._seen[kind] = params
        for waiter in self._waiters.pop(kind, []):
            if not waiter.called:
                waiter.callback(params)

    def when(self, kind: str) -> Deferred:
        if kind in self._seen:
            return succeed(self._seen[kind])
        waiter: Deferred = Deferred()
        self._waiters.setdefault(kind, []).append(waiter)
        return waiter

    def close(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []
        self._waiters.clear()


def first(ds: list[Deferred]) -> Deferred:
    """Deferred[(index, result)] of whichever of ``ds`` fires first, success or failure.

    The others are cancelled; cancelling the result cancels them all. (`defer.race`
    waits for a success, which would hang on a failed action racing an event.)
    """

    def cancel_all(_: Deferred) -> None:
        for d in ds:
            d.cancel()

    done: Deferred = Deferred(cancel_all)
    winner: list[int] = []

    def fired(result, index: int) -> None:
        if winner:
            return
        winner.append(index)
        for other, d in enumerate(ds):
            if other != index:
                d.cancel()
        if isinstance(result, Failure):
            done.errback(result)
        else:
            done.callback((index, result))
        return

    for index, d in enumerate(ds):
        d.addBoth(fired, index)
    return done


async def _with_timeout(d: Deferred, seconds: float, clock) -> Any:
    d.addTimeout(seconds, clock)
    return await d


async def _install_observer(page) -> str | None:
    """The page-side mutation counter's object id; None when the page broke the means to
    make one (then only the quiet window itself is waited)."""
    result = await page.send("Runtime.evaluate", {"expression": _INSTALL_OBSERVER, "objectGroup": "mcproxy-settle"})
    return result.get("result", {}).get("objectId")


async def _dom_quiet(page, clock, watch_id: str | None, started: float) -> None:
    """Return once the mutation count has not changed for `DOM_QUIET` of our clock, or at
    `SETTLE_CAP` after ``started`` (a page that never answers is given up on then too).

    The count is read once at once, so the action's own mutations (made while it was
    dispatched) start the quiet window then, not a poll later."""
    seen: Any = None
    changed = started
    while True:
        now = clock.seconds()
        left = started + SETTLE_CAP - now
        if left <= 0:
            return
        if seen is not None:
            await deferLater(clock, min(DOM_POLL, left, max(0.0, changed + DOM_QUIET - now)), lambda: None)
        if watch_id is None:
            count = 0
        else:
            reading = page.send(
                "Runtime.callFunctionOn",
                {"objectId": watch_id, "functionDeclaration": _MUTATIONS, "returnByValue": True},
            )
            try:
                reply = await _with_timeout(reading, max(0.0, started + SETTLE_CAP - clock.seconds()), clock)
            except TimeoutError:
                return
            count = reply.get("result", {}).get("value")
        now = clock.seconds()
        if seen is None:
            seen = count
        elif count != seen:
            seen, changed = count, now
        elif now - changed >= DOM_QUIET:
            return


def _release(page, object_id: str | None) -> None:
    """Best-effort cleanup of the page-side observer; failures (page gone) do not matter."""
    if object_id is None:
        return
    page.send("Runtime.callFunctionOn", {"objectId": object_id, "functionDeclaration": _DISCONNECT}).addErrback(
        lambda _: None
    )
    page.send("Runtime.releaseObject", {"objectId": object_id}).addErrback(lambda _: None)


async def _settle(
    page, clock, events: PageEvents, watch_id: str | None, dispatched: float, navigation_timeout: float
) -> None:
    remaining = max(0.0, NAVIGATION_WINDOW - (clock.seconds() - dispatched))
    quiet = Deferred.fromCoroutine(_dom_quiet(page, clock, watch_id, clock.seconds()))
    try:
        index, _ = await first([events.when("navigation_started"), deferLater(clock, remaining, lambda: None)])
        if index == 1:
            try:
                await quiet
                return
            except CDPError:
                pass  # the observed document went away: the action navigated after the window
    finally:
        _discard(quiet)
    try:
        await _with_timeout(events.when("navigation_done"), navigation_timeout, clock)
    except TimeoutError:
        log.info(
            "page {page_id}: navigation started by an action still loading after {timeout}s",
            page_id=page.page_id,
            timeout=navigation_timeout,
        )
        return
    new_watch = await _install_observer(page)
    try:
        await _dom_quiet(page, clock, new_watch, clock.seconds())
    finally:
        _release(page, new_watch)


def _discard(d: Deferred) -> None:
    """Stop a helper Deferred we no longer need, without leaving an unhandled failure."""
    if not d.called:
        d.cancel()
    d.addErrback(lambda _: None)


async def act_and_settle(
    page, clock, action: Callable[[], Awaitable[Any]], *, navigation_timeout: float, stop_on_dialog: bool = True
) -> dict | None:
    """Run ``action`` on ``page`` and wait until the page has settled.

    Returns None, or (with ``stop_on_dialog``) the ``Page.javascriptDialogOpening``
    parameters when a dialog opened: the page is then blocked until the dialog is
    handled, so waiting longer would only hang. Callers that answer dialogs themselves
    pass ``stop_on_dialog=False``.
    """
    events = PageEvents(page)
    watch_id = None
    try:
        watch_id = await _install_observer(page)

        async def act_then_settle() -> None:
            dispatched = clock.seconds()
            await action()
            await _settle(page, clock, events, watch_id, dispatched, navigation_timeout)

        work = Deferred.fromCoroutine(act_then_settle())
        if not stop_on_dialog:
            await work
            return None
        index, value = await first([work, events.when("dialog")])
        return value if index == 1 else None
    finally:
        events.close()
        _release(page, watch_id)
