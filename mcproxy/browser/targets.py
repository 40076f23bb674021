"""The pages of one user's browser: page targets attached, registered and set up.

Chrome attaches every page target to the link (flattened sessions), new ones paused
before they load anything until the page listeners have set them up. A `Page` keeps
its ``page_id`` across reconnects: the same target gets a new session on each link.
Ids and the proxy's records of each page come from the browser's page book
(`mcproxy.interfaces.IPageBook`), so that in a cluster they also survive a change of the
process that holds the browser.
"""

from collections.abc import Callable

from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from mcproxy.browser.cdp.connection import CDPConnection
from mcproxy.browser.page import Page
from mcproxy.errors import CDPError, ToolError
from mcproxy.interfaces import IPageBook

log = Logger()

#: ``listener(page, event)``, told of "attached", "reattached" and "closed" (see
#: `PageTargets.add_listener`); may return a Deferred while it sets the page up.
PageListener = Callable[[Page, str], Deferred | None]


class PageTargets:
    """The page registry of ``browser`` (a `mcproxy.browser.pool.UserBrowser`): which
    target is which `Page`, their sessions on the current link, the page listeners;
    ``book`` numbers and records the pages."""

    def __init__(self, browser, book: IPageBook):
        self._browser = browser
        self._book = book
        self._pages: dict[int | str, Page] = {}
        self._by_target: dict[str, Page] = {}
        self._attaching: dict[str, list[Deferred]] = {}
        self._gone: set[str] = set()
        self._attached_on: dict[str, CDPConnection] = {}
        self._listeners: list[PageListener] = []

    async def attach(self, link: CDPConnection) -> None:
        """Have Chrome attach every page target to a fresh link (flattened sessions) and wait
        until the pages it has now are set up.

        Chrome attaches new targets too (tabs, popups, windows a script opens), paused before
        they load anything until `_take_session` lets them run: the page listeners have
        set each one up before its first request (the browsing guard needs that). The page
        book is loaded first, so pages an earlier owner knew keep their ids and records.
        """
        await self._book.load()
        link.subscribe("Target.attachedToTarget", lambda _, p: self._auto_attached(link, p))
        link.subscribe("Target.targetInfoChanged", lambda _, p: self._target_changed(p["targetInfo"]))
        link.subscribe("Target.targetDestroyed", lambda _, p: self._target_gone(p["targetId"]))
        link.subscribe("Target.detachedFromTarget", lambda _, p: self._detached(p.get("sessionId")))
        timeout = self._browser.config.connect_timeout
        await link.send("Target.setDiscoverTargets", {"discover": True}, timeout=timeout)
        await link.send(
            "Target.setAutoAttach",
            {"autoAttach": True, "waitForDebuggerOnStart": True, "flatten": True, "filter": [{"type": "page"}]},
            timeout=timeout,
        )
        infos = (await link.send("Target.getTargets", timeout=timeout)).get("targetInfos", [])
        alive = {info["targetId"] for info in infos if info.get("type") == "page"}
        for page in list(self._pages.values()):
            if page.target_id not in alive:
                self.drop(page)
        self._book.prune(alive)
        results = await defer.DeferredList(
            [self.ensure_attached(link, target_id, timeout=timeout) for target_id in alive], consumeErrors=True
        )
        for ok, result in results:
            if not ok and not result.check(CDPError, ToolError):
                result.raiseException()

    def _auto_attached(self, link: CDPConnection, params: dict) -> None:
        """Chrome attached a page target to ``link``: take its session (`_take_session`)."""
        info = params["targetInfo"]
        if info.get("type") != "page" or link.closed:
            return
        target_id = info["targetId"]
        taking = self._take_session(link, info, params["sessionId"], bool(params.get("waitingForDebugger")))
        Deferred.fromCoroutine(taking).addBoth(self._settle, link, target_id)

    def _settle(self, result: Page | Failure, link: CDPConnection, target_id: str) -> None:
        """Tell the `ensure_attached` waiters of ``target_id`` how its attach went."""
        if isinstance(result, Failure):
            self._log_attach_failure(result, target_id)
            if link.closed:
                return  # the waiters of this link fail with it; a new link's attach answers the others
        for waiter in self._attaching.pop(target_id, []):
            if waiter.called:
                continue
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

    def _log_attach_failure(self, failure: Failure, target_id: str) -> None:
        log.info(
            "Could not attach to target {target_id} of {user_id}: {error}",
            target_id=target_id,
            user_id=self._browser.user_id,
            error=failure.getErrorMessage(),
        )

    def ensure_attached(self, link: CDPConnection, target_id: str, *, timeout: float) -> Deferred:
        """Deferred[Page] for the target once Chrome attached it to ``link`` and it is set up."""
        page = self._by_target.get(target_id)
        if page is not None and page.session_id is not None and self._attached_on.get(target_id) is link:
            return defer.succeed(page)
        if target_id in self._gone:
            return defer.fail(ToolError(f"target {target_id} closed while attaching"))

        def forget(waiter: Deferred) -> None:
            waiters = self._attaching.get(target_id, [])
            if waiter in waiters:
                waiters.remove(waiter)

        def timed_out(failure: Failure) -> None:
            failure.trap(defer.TimeoutError)
            raise ToolError(f"the browser did not attach target {target_id} within {timeout:g} s")

        waiter: Deferred = Deferred(forget)
        self._attaching.setdefault(target_id, []).append(waiter)
        waiter.addTimeout(timeout, self._browser.clock)
        return waiter.addErrback(timed_out)

    async def _take_session(self, link: CDPConnection, info: dict, session_id: str, waiting: bool) -> Page:
        """Register the page of an attached target, let the page listeners set it up, then let
        it run. A target that waits to run and could not be set up is closed instead: with the
        browsing guard missing, it would load unchecked."""
        target_id = info["targetId"]
        timeout = self._browser.config.call_timeout
        page = self._by_target.get(target_id)
        event = "reattached"
        if page is None:
            page = Page(
                self._browser,
                self._book.page_id(target_id),
                target_id,
                url=info.get("url", ""),
                title=info.get("title", ""),
                browser_context_id=info.get("browserContextId"),
            )
            self._book.restore(page)  # before the listeners: they read the flags
            event = "attached"
        else:
            # Chrome reports a crash again to each session that enables Inspector, so a
            # tab reloaded while the proxy was away is usable again.
            page.crashed = False
        page.session_id = session_id
        link.subscribe(None, page.dispatch, session_id=session_id)
        # Not awaited: Chrome runs a session's commands in order, so later calls see the
        # domains enabled, and a page showing a JavaScript dialog answers Page.enable only
        # after the dialog closes, which must not hold up the whole connection.
        for method, params in (
            ("Page.enable", None),
            ("Page.setLifecycleEventsEnabled", {"enabled": True}),
            # Inspector.targetCrashed: a crashed renderer fails the page's calls at once.
            ("Inspector.enable", None),
        ):
            link.send(method, params, session_id=session_id, timeout=timeout).addErrback(
                self._log_enable_failure, page, method
            )
        if page.closed or target_id in self._gone:
            raise ToolError(f"target {target_id} closed while attaching")
        self._pages[page.page_id] = page
        self._by_target[target_id] = page
        errors = [result for ok, result in await self._notify(page, event) if not ok]
        for error in errors:
            self._log_enable_failure(error, page, "Setting up")
        if errors and waiting:
            link.send("Target.closeTarget", {"targetId": target_id}, timeout=timeout).addErrback(lambda _: None)
            raise ToolError(f"page {page.page_id} could not be set up ({errors[0].getErrorMessage()}); it was closed")
        link.send("Runtime.runIfWaitingForDebugger", session_id=session_id, timeout=timeout).addErrback(
            self._log_enable_failure, page, "Runtime.runIfWaitingForDebugger"
        )
        self._attached_on[target_id] = link
        return page

    def _log_enable_failure(self, failure: Failure, page: Page, method: str) -> None:
        if not failure.check(CancelledError):
            log.info(
                "{method} on page {page_id} of {user_id} failed: {error}",
                method=method,
                page_id=page.page_id,
                user_id=self._browser.user_id,
                error=failure.getErrorMessage(),
            )

    def _target_changed(self, info: dict) -> None:
        page = self._by_target.get(info.get("targetId", ""))
        if page is not None:
            page.url = info.get("url", page.url)
            page.title = info.get("title", page.title)

    def _target_gone(self, target_id: str) -> None:
        self._gone.add(target_id)
        self._book.forget(target_id)
        page = self._by_target.get(target_id)
        if page is not None:
            self.drop(page)

    def _detached(self, session_id: str | None) -> None:
        for page in self._pages.values():
            if page.session_id == session_id:
                page.session_id = None

    def drop(self, page: Page) -> None:
        self._pages.pop(page.page_id, None)
        self._by_target.pop(page.target_id, None)
        self._attached_on.pop(page.target_id, None)
        if not page.closed:
            page.mark_closed()
            self._notify(page, "closed")

    def _notify(self, page: Page, event: str) -> Deferred:
        """Tell the page listeners; Deferred[list] of the outcomes of the Deferreds some
        return (set-up still under way), as `DeferredList` gives them."""
        pending = []
        for listener in list(self._listeners):
            try:
                result = listener(page, event)
            except Exception:
                log.failure("Page listener failed for page {page_id}", page_id=page.page_id)
                pending.append(defer.fail(ToolError("a page listener failed")))
            else:
                if isinstance(result, Deferred):
                    pending.append(result)
        return defer.DeferredList(pending, consumeErrors=True)

    def add_listener(self, callback: PageListener) -> Callable[[], None]:
        """Call ``callback(page, event)`` with event "attached" (a new page has a session),
        "reattached" (a known page got a new session after a reconnect: enable domains
        again) or "closed". Returns a callable that removes the listener.

        On "attached" and "reattached" the listener may return a Deferred: a new tab or popup
        (which Chrome holds before its first request) runs only once it fired, and is closed
        if it failed."""
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback) if callback in self._listeners else None

    def pages(self) -> list[Page]:
        """Open pages in page-id order."""
        return [self._pages[page_id] for page_id in sorted(self._pages)]

    def page(self, page_id: int) -> Page:
        """The page with this id; ToolError when there is none."""
        page = self._pages.get(page_id)
        if page is None:
            raise ToolError(f"No page with id {page_id}; call list_pages to see the open pages")
        return page

    def sessions_lost(self, error: Exception | None) -> None:
        """The link is gone: no page has a session; ``error`` fails their event waits."""
        for page in self._pages.values():
            page.session_id = None
            if error is not None:
                page.fail_waiters(error)

    def drop_all(self) -> None:
        """This process closed the browser for good: every page is closed here. Their
        records stay in the book: the tabs live on in Chrome, maybe for another process."""
        for page in list(self._pages.values()):
            self.drop(page)

    def closed_by_proxy(self, page: Page) -> None:
        """The proxy closed ``page``'s target: forget it now (and if Chrome attaches it still)."""
        self._gone.add(page.target_id)
        self._book.forget(page.target_id)
        self.drop(page)

    def opened_via_proxy(self) -> int:
        """How many open pages the proxy opened (what ``limits.max_pages_per_user`` bounds)."""
        return sum(1 for page in self._pages.values() if page.via_proxy and not page.closed)
