"""The browsers of this process: one per user, within the ``limits.*``, each held by one user.

A `UserBrowser` is one user's `BrowserLink` with its pages (`PageTargets`) and the page
operations the tools use; `BrowserPool` creates them on first use and tells which user
holds which Chrome.
"""

import random
from collections.abc import Callable, Iterable

from twisted.internet import defer
from twisted.internet.defer import Deferred, DeferredLock
from twisted.logger import Logger
from zope.interface import implementer

from mcproxy.browser.book import MemoryPageBook
from mcproxy.browser.cdp.connection import CDPConnection
from mcproxy.browser.connect import LinkOpener, default_http_client, open_cdp_link
from mcproxy.browser.link import CONNECTED, STATUSES, BrowserLink
from mcproxy.browser.page import EventTimeout, Page
from mcproxy.browser.targets import PageListener, PageTargets
from mcproxy.browser.urls import is_dialled, parse_browser_url
from mcproxy.config import BrowserConfig
from mcproxy.errors import CDPError, ServerFull, ToolError
from mcproxy.interfaces import IBrowserPool, IPageBook, IUserBrowser

log = Logger()


class PageLoadError(ToolError):
    """A page opened by `UserBrowser.new_page` did not load; the tab stays open as ``page``."""

    def __init__(self, message: str, page: Page):
        super().__init__(message)
        self.page = page


@implementer(IUserBrowser)
class UserBrowser(BrowserLink):
    """One user's browser: its link, its pages, and the page operations the tools use.

    ``book`` numbers the pages and keeps the proxy's records of them (a fresh
    `MemoryPageBook` unless given).
    """

    def __init__(
        self,
        reactor,
        config: BrowserConfig,
        http_client,
        user_id: str,
        browser_url: str,
        *,
        open_link: LinkOpener = open_cdp_link,
        rng: Callable[[], float] = random.random,
        max_pages: int = 0,
        held_elsewhere: Callable[[str | None], bool] = lambda browser_id: False,
        book: IPageBook | None = None,
    ):
        super().__init__(
            reactor,
            config,
            http_client,
            user_id,
            browser_url,
            open_link=open_link,
            rng=rng,
            held_elsewhere=held_elsewhere,
        )
        self.max_pages = max_pages
        self._book = book if book is not None else MemoryPageBook()
        self._targets = PageTargets(self, self._book)
        self._contexts_lock = DeferredLock()

    @property
    def contexts(self) -> dict[str, str]:
        """Isolated browser contexts opened by new_page, by name -> browserContextId."""
        return self._book.contexts

    def remember(self, page: Page) -> None:
        """Keep ``page``'s flags and emulation in the page book (after a tool changed them)."""
        self._book.record(page)

    async def _attach(self, link: CDPConnection) -> None:
        await self._targets.attach(link)

    def _sessions_lost(self, error: Exception | None) -> None:
        self._targets.sessions_lost(error)

    def _closed(self) -> None:
        self._targets.drop_all()

    def add_page_listener(self, callback: PageListener) -> Callable[[], None]:
        """Call ``callback(page, event)`` for every page (see `PageTargets.add_listener`).
        Returns a callable that removes the listener."""
        return self._targets.add_listener(callback)

    # -- IUserBrowser -----------------------------------------------------------------

    def pages(self) -> list[Page]:
        """Open pages in page-id order."""
        return self._targets.pages()

    def page(self, page_id: int) -> Page:
        """The page with this id; ToolError when there is none."""
        return self._targets.page(page_id)

    def new_page(
        self,
        url: str,
        *,
        background: bool = False,
        opener: str | None = None,
        timeout: float | None = None,
        isolated_context: str | None = None,
    ) -> Deferred:
        """Open a tab at ``url`` and wait for its load event. Deferred[Page].

        With ``isolated_context``, the tab opens in that named browser context (its own
        cookies and storage), created on first use and kept for later tabs of that name.
        """
        return Deferred.fromCoroutine(self._new_page(url, background, opener, timeout, isolated_context))

    async def _new_page(
        self, url: str, background: bool, opener: str | None, timeout: float | None, isolated_context: str | None
    ) -> Page:
        seconds = self.call_timeout if timeout is None else timeout
        opened = self._targets.opened_via_proxy()
        if self.max_pages and opened >= self.max_pages:
            raise ToolError(
                f"You have {opened} pages open through the proxy, the most allowed (limits.max_pages_per_user). "
                "Close some with close_page first."
            )
        link = await self.connection(seconds)
        params: dict = {"url": "about:blank", "background": background}
        if isolated_context is not None:
            params["browserContextId"] = await self._browser_context(isolated_context, seconds)
        reply = await link.send("Target.createTarget", params, timeout=seconds)
        page = await self._targets.ensure_attached(link, reply["targetId"], timeout=seconds)
        page.via_proxy = True
        page.opener = opener
        if isolated_context is not None:
            page.browser_context_id = params["browserContextId"]
        self._book.record(page)
        # The attach does not wait for Page.enable; the load event below needs it done.
        await page.send("Page.enable", timeout=seconds)
        if url and url != "about:blank":
            await self.navigate(page, url, timeout=seconds)
        return page

    async def _browser_context(self, name: str, seconds: float) -> str:
        """The id of the isolated context ``name``: the one made before if Chrome still has
        it (it outlives our connection, not a Chrome restart), else a new one."""
        await self._contexts_lock.acquire()
        try:
            known = self.contexts.get(name)
            if known is not None:
                alive = await self.send("Target.getBrowserContexts", timeout=seconds)
                if known in alive.get("browserContextIds", ()):
                    return known
            created = await self.send("Target.createBrowserContext", {"disposeOnDetach": False}, timeout=seconds)
            self._book.context_made(name, created["browserContextId"])
            return created["browserContextId"]
        finally:
            self._contexts_lock.release()

    def context_name(self, page: Page) -> str | None:
        """The name of the isolated context ``page`` is in; None for the default context."""
        for name, context_id in self.contexts.items():
            if context_id == page.browser_context_id:
                return name
        return None

    async def navigate(self, page: Page, url: str, *, timeout: float | None = None) -> None:
        """Navigate ``page`` to ``url`` and wait for its load event (PageLoadError otherwise)."""
        seconds = self.call_timeout if timeout is None else timeout
        loaded = page.wait_for_event("Page.loadEventFired", timeout=seconds)
        try:
            try:
                reply = await page.send("Page.navigate", {"url": url}, timeout=seconds)
            except CDPError as e:
                raise PageLoadError(f"Could not load {url}: {e.message}", page) from None
            if reply.get("errorText"):
                raise PageLoadError(f"Could not load {url}: {reply['errorText']}", page)
            try:
                await loaded
            except EventTimeout:
                raise PageLoadError(f"{url} did not finish loading within {seconds:g} s", page) from None
        finally:
            loaded.cancel()
            loaded.addErrback(lambda _: None)  # its outcome, if any, was reported above

    def close_page(self, page_id: int) -> Deferred:
        """Close a tab. Deferred[None]."""
        return Deferred.fromCoroutine(self._close_page(page_id))

    async def _close_page(self, page_id: int) -> None:
        page = self.page(page_id)
        await self.send("Target.closeTarget", {"targetId": page.target_id})
        self._targets.closed_by_proxy(page)


@implementer(IBrowserPool)
class BrowserPool:
    """All users' browsers of this process.

    ``page_listeners`` are added to every browser the pool creates (see
    `UserBrowser.add_page_listener`), ``status_listeners`` likewise (see
    `UserBrowser.add_status_listener`); ``max_users`` and ``max_pages_per_user`` are the
    ``limits.*`` bounds (0: none); ``page_books(user_id)`` gives each new browser its
    page book (a `MemoryPageBook` each unless given).
    """

    def __init__(
        self,
        reactor,
        config: BrowserConfig,
        http_client=None,
        *,
        open_link: LinkOpener = open_cdp_link,
        rng: Callable[[], float] = random.random,
        page_listeners: Iterable[PageListener] = (),
        status_listeners: Iterable[Callable[[UserBrowser], None]] = (),
        max_users: int = 0,
        max_pages_per_user: int = 0,
        page_books: Callable[[str], IPageBook] | None = None,
    ):
        self.reactor = reactor
        self.config = config
        self.http_client = http_client or default_http_client(reactor)
        self._open_link = open_link
        self._rng = rng
        self._page_listeners = tuple(page_listeners)
        self._status_listeners = tuple(status_listeners)
        self._max_users = max_users
        self._max_pages = max_pages_per_user
        self._page_books = page_books
        self._browsers: dict[str, UserBrowser] = {}

    def browser_for(self, user_id: str, browser_url: str) -> UserBrowser:
        """The user's browser, created and connecting on first use; a new URL replaces it."""
        browser = self._browsers.get(user_id)
        if browser is not None and browser.browser_url == browser_url:
            browser.retry()
            return browser
        if is_dialled(browser_url):
            parse_browser_url(browser_url)
        self.check_room(user_id)
        if browser is not None:
            self._stop_quietly(browser)
        browser = UserBrowser(
            self.reactor,
            self.config,
            self.http_client,
            user_id,
            browser_url,
            open_link=self._open_link,
            rng=self._rng,
            max_pages=self._max_pages,
            held_elsewhere=lambda browser_id: self.holder_of(browser_id, besides=user_id) is not None,
            book=self._page_books(user_id) if self._page_books is not None else None,
        )
        # Before the first attach, so watchers (dialogs, console, network) see every page
        # from the moment the proxy knows it.
        for listener in self._page_listeners:
            browser.add_page_listener(listener)
        for on_status in self._status_listeners:
            browser.add_status_listener(on_status)
        self._browsers[user_id] = browser
        browser.start()
        return browser

    def reconfigure(self, config) -> None:
        """New ``limits.max_users`` / ``limits.max_pages_per_user`` (live reload); browsers
        already held are kept even when there are now more than the new maximum."""
        self._max_users = config.limits.max_users
        self._max_pages = config.limits.max_pages_per_user
        for browser in self._browsers.values():
            browser.max_pages = self._max_pages

    def check_room(self, user_id: str) -> None:
        """Raise ServerFull when a new user would pass ``limits.max_users``."""
        if user_id not in self._browsers and self._max_users and len(self._browsers) >= self._max_users:
            raise ServerFull(
                f"this proxy process already keeps the browsers of {self._max_users} users (limits.max_users); "
                "try another instance or ask the operator to raise the limit"
            )

    def existing(self, user_id: str) -> UserBrowser | None:
        """The user's browser if one exists, without creating it."""
        return self._browsers.get(user_id)

    def _stop_quietly(self, browser: UserBrowser) -> Deferred:
        return browser.stop().addErrback(
            lambda f: log.failure("Stopping the browser of {user_id} failed", f, user_id=browser.user_id)
        )

    def connect_now(self, user_id: str) -> None:
        """Have the user's browser, if the pool holds it, try to connect at once."""
        browser = self._browsers.get(user_id)
        if browser is not None:
            browser.connect_now()

    def forget(self, user_id: str) -> Deferred:
        """Close and drop the user's connection. Deferred[None]."""
        browser = self._browsers.pop(user_id, None)
        if browser is None:
            return defer.succeed(None)
        return self._stop_quietly(browser)

    def holder_of(self, browser_id: str | None, *, besides: str) -> str | None:
        """The user other than ``besides`` whose connection reached Chrome run ``browser_id``."""
        if browser_id is None:
            return None
        for user_id, browser in self._browsers.items():
            if user_id != besides and browser.browser_id == browser_id:
                return user_id
        return None

    def connection_count(self) -> int:
        """How many users' browsers are connected now."""
        return sum(1 for b in self._browsers.values() if b.status == CONNECTED)

    def status_counts(self) -> dict[str, int]:
        """Browsers per status, every status present (for the connections gauge)."""
        counts = dict.fromkeys(STATUSES, 0)
        for browser in self._browsers.values():
            counts[browser.status] += 1
        return counts

    def close(self) -> Deferred:
        """Stop every ClientService and close every socket. Deferred[None]."""
        browsers, self._browsers = list(self._browsers.values()), {}
        stopping = [self._stop_quietly(b) for b in browsers]
        return defer.gatherResults(stopping).addCallback(lambda _: None)
