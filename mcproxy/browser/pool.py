"""One CDP connection per user, kept healthy, shared by all of that user's sessions.

Each `UserBrowser` runs a `ClientService` whose endpoint does the whole connect at
every attempt: validate the URL (DNS again), discover the WebSocket, open it, attach
to the page targets. Only a fully usable connection is handed to the service, so a
refused handshake or a failed attach counts as a failed attempt and backs off.
"""

import random
from collections.abc import Awaitable, Callable, Iterable

import attrs
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred, DeferredLock
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mcproxy.browser.cdp.connection import CDPConnection, open_websocket
from mcproxy.browser.cdp.discovery import discover
from mcproxy.browser.page import EventTimeout, Page
from mcproxy.browser.urls import BrowserURL, browser_id, endpoint_key, parse_browser_url, validate_browser_url
from mcproxy.config import BrowserConfig
from mcproxy.errors import BrowserUnavailable, CDPError, MCProxyError, ServerFull, ToolError
from mcproxy.interfaces import IBrowserPool, IUserBrowser

log = Logger()

CONNECTED = "connected"
DISCONNECTED = "disconnected"
RECONNECTING = "reconnecting"
FAILED = "failed"
STATUSES = (CONNECTED, DISCONNECTED, RECONNECTING, FAILED)

PageListener = Callable[[Page, str], Deferred | None]
LinkOpener = Callable[["UserBrowser"], Awaitable[CDPConnection]]


class PageLoadError(ToolError):
    """A page opened by `UserBrowser.new_page` did not load; the tab stays open as ``page``."""

    def __init__(self, message: str, page: Page):
        super().__init__(message)
        self.page = page


def default_http_client(reactor):
    """A treq client without persistent connections, for /json/version requests."""
    from treq.client import HTTPClient
    from twisted.web.client import Agent, HTTPConnectionPool

    return HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))


@attrs.frozen
class LocatedBrowser:
    """A browser URL checked, resolved and discovered: where its DevTools WebSocket is."""

    url: BrowserURL
    ws_url: str
    ws: BrowserURL

    @property
    def browser_id(self) -> str | None:
        """Chrome's id for this browser run (from the WebSocket path)."""
        return browser_id(self.ws.path)

    @property
    def endpoint(self) -> tuple[str, int]:
        """The listening socket behind the WebSocket, the same whatever URL form named it."""
        return endpoint_key(self.ws.address or self.ws.host, self.ws.port)


@attrs.frozen
class BrowserIdentity:
    """What registration learns of a browser: its product and what tells it apart from others."""

    product: str
    browser_id: str | None
    endpoint: tuple[str, int]


async def locate_browser(reactor, config: BrowserConfig, http_client, browser_url: str) -> LocatedBrowser:
    """Validate ``browser_url`` (resolving again) and discover its WebSocket (validated too)."""
    timeout = config.connect_timeout
    target = await validate_browser_url(browser_url, config.allowed_networks, reactor=reactor, timeout=timeout)
    ws_url = await discover(http_client, target, timeout=timeout, clock=reactor)
    ws = target if ws_url == target.url else await validate_browser_url(
        ws_url, config.allowed_networks, reactor=reactor, timeout=timeout
    )
    return LocatedBrowser(url=target, ws_url=ws_url, ws=ws)


async def open_located(
    reactor, config: BrowserConfig, located: LocatedBrowser, *, description: str = "the browser"
) -> CDPConnection:
    """Open the DevTools WebSocket of a located browser, to its pinned address."""
    ws = located.ws
    protocol = await open_websocket(
        reactor,
        located.ws_url,
        address=ws.address,
        port=ws.port,
        secure=ws.secure,
        tls_hostname=ws.host,
        host_header=None if ws.secure else ws.host_header,
        timeout=config.connect_timeout,
        max_message_bytes=config.max_message_bytes,
        call_timeout=config.call_timeout,
        description=description,
    )
    return protocol.cdp


async def connect_browser(
    reactor, config: BrowserConfig, http_client, browser_url: str, *, description: str = "the browser"
) -> CDPConnection:
    """Validate ``browser_url`` (resolving again), discover its WebSocket and open it."""
    located = await locate_browser(reactor, config, http_client, browser_url)
    return await open_located(reactor, config, located, description=description)


async def open_cdp_link(browser: "UserBrowser") -> CDPConnection:
    """The real connect of a `UserBrowser` (tests substitute an in-memory one); remembers
    which browser run answered, so registration can tell who holds it."""
    located = await locate_browser(browser.reactor, browser.config, browser.http_client, browser.browser_url)
    if browser.held_elsewhere(located.browser_id):
        # The same Chrome under another address (its LAN address and 127.0.0.1, say).
        raise BrowserUnavailable(
            "this browser is connected for another user, and a browser belongs to one user only;"
            " register a Chrome of your own"
        )
    browser.browser_id = located.browser_id
    return await open_located(
        browser.reactor, browser.config, located, description=f"the browser of {browser.user_id}"
    )


async def probe_browser(reactor, config: BrowserConfig, browser_url: str, http_client=None) -> BrowserIdentity:
    """Check that ``browser_url`` is an allowed, live Chrome, and say which one it is.

    For registration: raises InvalidBrowserURL / BrowserUnavailable with advice.
    """
    located = await locate_browser(reactor, config, http_client or default_http_client(reactor), browser_url)
    link = await open_located(reactor, config, located)
    try:
        version = await link.send("Browser.getVersion", timeout=config.connect_timeout)
    finally:
        link.abort()
    product = version.get("product") if isinstance(version, dict) else None
    return BrowserIdentity(
        product=product if isinstance(product, str) and product else "Chrome",
        browser_id=located.browser_id,
        endpoint=located.endpoint,
    )


class _Lifeline(Protocol):
    """What `ClientService` holds for a live link: it learns of the loss through it."""


class _LinkTransport:
    """The transport `ClientService` closes on stop: it aborts the CDP link."""

    def __init__(self, link: CDPConnection):
        self._link = link

    def loseConnection(self) -> None:
        self._link.abort()


@implementer(IStreamClientEndpoint)
class _BrowserEndpoint:
    """Each connect runs the browser's full connect-and-attach procedure."""

    def __init__(self, browser: "UserBrowser"):
        self._browser = browser

    def connect(self, factory) -> Deferred:
        return Deferred.fromCoroutine(self._browser._connect(factory))

    def __repr__(self) -> str:
        return f"<browser of {self._browser.user_id} at {self._browser.browser_url}>"


@implementer(IUserBrowser)
class UserBrowser:
    """One user's browser: connection management, the page registry, browser-level calls."""

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
    ):
        self.reactor = reactor
        self.clock = reactor
        self.config = config
        self.http_client = http_client
        self.user_id = user_id
        self.browser_url = browser_url
        self.call_timeout = config.call_timeout
        self._status = DISCONNECTED
        self._status_listeners: list[Callable[["UserBrowser"], None]] = []
        self._status_note = None
        self.last_error: str | None = None
        self.cdp: CDPConnection | None = None
        #: Chrome's id of the browser run last connected to (see `BrowserPool.holder_of`).
        self.browser_id: str | None = None
        self._open_link = open_link
        self.max_pages = max_pages
        #: Whether another user's connection reached Chrome run ``browser_id`` (one browser, one user).
        self.held_elsewhere = held_elsewhere
        self._attempting = False
        self._pages: dict[int, Page] = {}
        self._by_target: dict[str, Page] = {}
        self._next_page_id = 1
        self._attaching: dict[str, list[Deferred]] = {}
        self._gone: set[str] = set()
        self._attached_on: dict[str, CDPConnection] = {}
        self._listeners: list[PageListener] = []
        self._waiters: list[Deferred] = []
        #: Isolated browser contexts opened by new_page, by name -> browserContextId.
        self.contexts: dict[str, str] = {}
        self._contexts_lock = DeferredLock()
        self._health = LoopingCall(lambda: Deferred.fromCoroutine(self._check_health()))
        self._health.clock = reactor
        policy = backoffPolicy(
            initialDelay=config.backoff_initial,
            maxDelay=config.backoff_max,
            factor=config.backoff_factor,
            jitter=lambda: rng() * self.max_jitter,
        )
        self._policy = policy
        self._service = self._make_service()

    @property
    def max_jitter(self) -> float:
        """Upper bound of the random part added to each reconnect delay (seconds)."""
        return min(1.0, self.config.backoff_initial / 4)

    def _make_service(self) -> ClientService:
        return ClientService(
            _BrowserEndpoint(self), Factory.forProtocol(_Lifeline), self._retry_delay, clock=self.reactor
        )

    def retry_delay(self, attempt: int) -> float:
        """Seconds before retry number ``attempt`` (1-based): initial, then times factor, capped."""
        return self._policy(attempt - 1)

    def _retry_delay(self, attempt: int) -> float:
        delay = self.retry_delay(attempt)
        limit = self.config.max_attempts
        if limit and attempt >= limit:
            self.status = FAILED
            log.warn(
                "Giving up on the browser of {user_id} at {url} after {attempts} attempts: {error}",
                user_id=self.user_id,
                url=self.browser_url,
                attempts=attempt,
                error=self.last_error,
            )
            self.reactor.callLater(0, self._service.stopService)
        else:
            self.status = RECONNECTING
        return delay

    # -- life cycle -------------------------------------------------------------------

    def start(self) -> None:
        """Start connecting (and reconnecting) in the background."""
        if not self._service.running:
            self._service.startService()

    def stop(self) -> Deferred:
        """Close the connection and stop reconnecting. Deferred[None]."""
        self._health_stop()
        self._wake(BrowserUnavailable(f"the connection to the browser of {self.user_id} was closed"))
        stopping = self._service.stopService() if self._service.running else defer.succeed(None)

        def done(_):
            self.status = DISCONNECTED
            for page in list(self._pages.values()):
                self._drop_page(page)

        return stopping.addCallback(done)

    def retry(self) -> None:
        """Try again after giving up (status "failed"), e.g. when the user comes back."""
        if self.status == FAILED and not self._service.running:
            self.status = RECONNECTING
            self._service = self._make_service()
            self._service.startService()

    async def connected(self, timeout: float | None = None) -> None:
        """Wait for a usable connection, bounded by ``timeout``.

        Fails at once with BrowserUnavailable when the browser is known to be away (a
        retry is pending or we gave up); waits when an attempt is under way.
        """
        if self.status == CONNECTED and self.cdp is not None and not self.cdp.closed:
            return
        if self.status == FAILED or not self._service.running:
            raise BrowserUnavailable(self.unavailable_message())
        if self.last_error is not None and not self._attempting:
            raise BrowserUnavailable(self.unavailable_message())
        seconds = self.config.connect_timeout if timeout is None else timeout
        waiting: Deferred = Deferred(lambda d: self._waiters.remove(d) if d in self._waiters else None)
        self._waiters.append(waiting)
        waiting.addTimeout(seconds, self.clock)
        try:
            await waiting
        except defer.TimeoutError:
            raise BrowserUnavailable(
                f"the browser of {self.user_id} at {self.browser_url} did not connect within {seconds:g} s"
            ) from None

    def _wake(self, error: Exception | None) -> None:
        """Settle the `connected` waiters of this attempt, from a fresh reactor turn
        (never from inside ClientService's state machine, which must not be re-entered)."""
        waiters, self._waiters = self._waiters, []

        def settle() -> None:
            for waiter in waiters:
                if waiter.called:
                    continue
                if error is None:
                    waiter.callback(None)
                else:
                    waiter.errback(error)

        if waiters:
            self.clock.callLater(0, settle)

    def unavailable_message(self) -> str:
        """Why the browser cannot be used now, and what happens next."""
        where = f"the browser of {self.user_id} at {self.browser_url}"
        error = f"; last error: {self.last_error}" if self.last_error else ""
        if self.status == FAILED:
            return (
                f"{where} is unreachable and the proxy gave up after {self.config.max_attempts} "
                f"attempts{error}. Start Chrome with remote debugging and register it again"
            )
        if self.status == RECONNECTING:
            return f"{where} is not reachable right now; reconnecting in the background{error}"
        return f"{where} is not connected{error}"

    async def _connect(self, factory) -> Protocol:
        """One connection attempt, run by ClientService through `_BrowserEndpoint`."""
        self._attempting = True
        try:
            try:
                link = await self._open_link(self)
            except CancelledError:
                raise
            except Exception as e:
                self._note_failure(e)
                raise
            # Page listeners run during the attach and may already call page.send().
            self.cdp = link
            try:
                await self._attach(link)
                if link.closed:
                    raise BrowserUnavailable(f"the connection was lost while attaching: {link.close_reason}")
            except BaseException as e:
                link.abort()
                self.cdp = None
                for page in self._pages.values():
                    page.session_id = None
                if not isinstance(e, CancelledError):
                    self._note_failure(e)
                raise
        finally:
            self._attempting = False
        handle = factory.buildProtocol(None)
        handle.makeConnection(_LinkTransport(link))
        self.status = CONNECTED
        self.last_error = None
        link.add_close_listener(self._lost)
        link.add_close_listener(lambda reason: handle.connectionLost(Failure(ConnectionLost(reason))))
        self._health.start(self.config.health_interval, now=False)
        self._wake(None)
        log.info(
            "Connected to the browser of {user_id} at {url} ({pages} pages)",
            user_id=self.user_id,
            url=self.browser_url,
            pages=len(self._pages),
        )
        return handle

    def _note_failure(self, error: Exception) -> None:
        self.last_error = error.message if isinstance(error, MCProxyError) else str(error) or repr(error)
        if self.status == DISCONNECTED:
            self.status = RECONNECTING
        log.info(
            "Connecting to the browser of {user_id} at {url} failed: {error}",
            user_id=self.user_id,
            url=self.browser_url,
            error=self.last_error,
        )
        self._wake(BrowserUnavailable(self.unavailable_message()))

    def _lost(self, reason: str) -> None:
        self._health_stop()
        self.cdp = None
        self.last_error = f"connection lost: {reason}"
        if self.status != FAILED:
            self.status = RECONNECTING if self._service.running else DISCONNECTED
        for page in self._pages.values():
            page.session_id = None
            page.fail_waiters(BrowserUnavailable(f"the connection to the browser was lost ({reason})"))
        log.info("Lost the browser of {user_id}: {reason}", user_id=self.user_id, reason=reason)

    def _health_stop(self) -> None:
        if self._health.running:
            self._health.stop()

    async def _check_health(self) -> None:
        link = self.cdp
        if link is None or link.closed:
            return
        timeout = min(self.config.call_timeout, self.config.health_interval)
        try:
            await link.send("Browser.getVersion", timeout=timeout)
        except CancelledError:
            raise
        except Exception as e:
            log.warn(
                "Health check of the browser of {user_id} failed ({error}); reconnecting",
                user_id=self.user_id,
                error=e,
            )
            link.abort()

    # -- targets and pages ------------------------------------------------------------

    async def _attach(self, link: CDPConnection) -> None:
        """Have Chrome attach every page target to a fresh link (flattened sessions) and wait
        until the pages it has now are set up.

        Chrome attaches new targets too (tabs, popups, windows a script opens), paused before
        they load anything until `_take_session` lets them run: the page listeners have
        set each one up before its first request (the browsing guard needs that).
        """
        link.subscribe("Target.attachedToTarget", lambda _, p: self._auto_attached(link, p))
        link.subscribe("Target.targetInfoChanged", lambda _, p: self._target_changed(p["targetInfo"]))
        link.subscribe("Target.targetDestroyed", lambda _, p: self._target_gone(p["targetId"]))
        link.subscribe("Target.detachedFromTarget", lambda _, p: self._detached(p.get("sessionId")))
        timeout = self.config.connect_timeout
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
                self._drop_page(page)
        results = await defer.DeferredList(
            [self._ensure_attached(link, target_id, timeout=timeout) for target_id in alive], consumeErrors=True
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
        """Tell the `_ensure_attached` waiters of ``target_id`` how its attach went."""
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
            user_id=self.user_id,
            error=failure.getErrorMessage(),
        )

    def _ensure_attached(self, link: CDPConnection, target_id: str, *, timeout: float) -> Deferred:
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
        waiter.addTimeout(timeout, self.clock)
        return waiter.addErrback(timed_out)

    async def _take_session(self, link: CDPConnection, info: dict, session_id: str, waiting: bool) -> Page:
        """Register the page of an attached target, let the page listeners set it up, then let
        it run. A target that waits to run and could not be set up is closed instead: with the
        browsing guard missing, it would load unchecked."""
        target_id = info["targetId"]
        timeout = self.config.call_timeout
        page = self._by_target.get(target_id)
        event = "reattached"
        if page is None:
            page = Page(
                self,
                self._next_page_id,
                target_id,
                url=info.get("url", ""),
                title=info.get("title", ""),
                browser_context_id=info.get("browserContextId"),
            )
            self._next_page_id += 1
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
                user_id=self.user_id,
                error=failure.getErrorMessage(),
            )

    def _target_changed(self, info: dict) -> None:
        page = self._by_target.get(info.get("targetId"))
        if page is not None:
            page.url = info.get("url", page.url)
            page.title = info.get("title", page.title)

    def _target_gone(self, target_id: str) -> None:
        self._gone.add(target_id)
        page = self._by_target.get(target_id)
        if page is not None:
            self._drop_page(page)

    def _detached(self, session_id: str | None) -> None:
        for page in self._pages.values():
            if page.session_id == session_id:
                page.session_id = None

    def _drop_page(self, page: Page) -> None:
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

    @property
    def status(self) -> str:
        """One of `STATUSES`; status listeners hear of each change."""
        return self._status

    @status.setter
    def status(self, value: str) -> None:
        if value == self._status:
            return
        self._status = value
        # Told from a fresh reactor turn, when last_error has been updated along with it.
        if self._status_listeners and self._status_note is None:
            self._status_note = self.clock.callLater(0, self._tell_status)

    def _tell_status(self) -> None:
        self._status_note = None
        for listener in list(self._status_listeners):
            try:
                listener(self)
            except Exception:
                log.failure("Status listener failed for the browser of {user_id}", user_id=self.user_id)

    def add_status_listener(self, callback: Callable[["UserBrowser"], None]) -> None:
        """Call ``callback(browser)`` after the status changed (several changes in one
        reactor turn are told once)."""
        self._status_listeners.append(callback)

    def add_page_listener(self, callback: PageListener) -> Callable[[], None]:
        """Call ``callback(page, event)`` with event "attached" (a new page has a session),
        "reattached" (a known page got a new session after a reconnect: enable domains
        again) or "closed". Returns a callable that removes the listener.

        On "attached" and "reattached" the listener may return a Deferred: a new tab or popup
        (which Chrome holds before its first request) runs only once it fired, and is closed
        if it failed."""
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback) if callback in self._listeners else None

    # -- IUserBrowser -----------------------------------------------------------------

    def pages(self) -> list[Page]:
        """Open pages in page-id order."""
        return [self._pages[page_id] for page_id in sorted(self._pages)]

    def page(self, page_id: int) -> Page:
        """The page with this id; ToolError when there is none."""
        page = self._pages.get(page_id)
        if page is None:
            raise ToolError(f"No page with id {page_id}; call list_pages to see the open pages")
        return page

    def send(self, method: str, params: dict | None = None, *, timeout: float | None = None) -> Deferred:
        """A browser-level CDP call; fails fast with BrowserUnavailable when disconnected."""
        link = self.cdp
        if link is None or link.closed:
            return defer.fail(BrowserUnavailable(self.unavailable_message()))
        return link.send(method, params, timeout=timeout)

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
        opened = sum(1 for page in self._pages.values() if page.via_proxy and not page.closed)
        if self.max_pages and opened >= self.max_pages:
            raise ToolError(
                f"You have {opened} pages open through the proxy, the most allowed (limits.max_pages_per_user). "
                "Close some with close_page first."
            )
        await self.connected(seconds)
        link = self.cdp
        params: dict = {"url": "about:blank", "background": background}
        if isolated_context is not None:
            params["browserContextId"] = await self._browser_context(isolated_context, seconds)
        reply = await link.send("Target.createTarget", params, timeout=seconds)
        page = await self._ensure_attached(link, reply["targetId"], timeout=seconds)
        page.via_proxy = True
        page.opener = opener
        if isolated_context is not None:
            page.browser_context_id = params["browserContextId"]
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
            self.contexts[name] = created["browserContextId"]
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
        self._gone.add(page.target_id)
        self._drop_page(page)


@implementer(IBrowserPool)
class BrowserPool:
    """All users' browsers of this process.

    ``page_listeners`` are added to every browser the pool creates (see
    `UserBrowser.add_page_listener`), ``status_listeners`` likewise (see
    `UserBrowser.add_status_listener`); ``max_users`` and ``max_pages_per_user`` are the
    ``limits.*`` bounds (0: none).
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
        self._browsers: dict[str, UserBrowser] = {}

    def browser_for(self, user_id: str, browser_url: str) -> UserBrowser:
        """The user's browser, created and connecting on first use; a new URL replaces it."""
        browser = self._browsers.get(user_id)
        if browser is not None and browser.browser_url == browser_url:
            browser.retry()
            return browser
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
        )
        # Before the first attach, so watchers (dialogs, console, network) see every page
        # from the moment the proxy knows it.
        for listener in self._page_listeners:
            browser.add_page_listener(listener)
        for listener in self._status_listeners:
            browser.add_status_listener(listener)
        self._browsers[user_id] = browser
        browser.start()
        return browser

    def set_limits(self, max_users: int, max_pages_per_user: int) -> None:
        """New ``limits.max_users`` / ``limits.max_pages_per_user`` (live reload); browsers
        already held are kept even when there are now more than the new maximum."""
        self._max_users = max_users
        self._max_pages = max_pages_per_user
        for browser in self._browsers.values():
            browser.max_pages = max_pages_per_user

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
