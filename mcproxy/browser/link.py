"""One user's link to their browser, kept up by a `ClientService`.

The service's endpoint does the whole connect at every attempt: dial the browser
(`mcproxy.browser.connect`), then have the owner attach to its pages (`BrowserLink._attach`).
Only a fully usable link is handed to the service, so a refused handshake or a failed
attach counts as a failed attempt and backs off. A health check (``Browser.getVersion``)
finds a dead peer; the status (`STATUSES`) tells listeners how the link is doing.
"""

import random
from collections.abc import Callable
from typing import Self

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mcproxy.browser.cdp.connection import CDPConnection
from mcproxy.browser.connect import LinkOpener, open_cdp_link
from mcproxy.config import BrowserConfig
from mcproxy.errors import BrowserUnavailable, MCProxyError

log = Logger()

CONNECTED = "connected"
DISCONNECTED = "disconnected"
RECONNECTING = "reconnecting"
FAILED = "failed"
STATUSES = (CONNECTED, DISCONNECTED, RECONNECTING, FAILED)


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

    def __init__(self, browser: "BrowserLink"):
        self._browser = browser

    def connect(self, factory) -> Deferred:
        return Deferred.fromCoroutine(self._browser._connect(factory))

    def __repr__(self) -> str:
        return f"<browser of {self._browser.user_id} at {self._browser.browser_url}>"


class BrowserLink:
    """Connection management for one user's browser: reconnect with backoff, health, status.

    A subclass (`mcproxy.browser.pool.UserBrowser`) says what a fresh link needs before
    it counts as connected (`_attach`) and what goes when it is lost (`_sessions_lost`).
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
        self._status_listeners: list[Callable[[Self], None]] = []
        self._status_note = None
        self.last_error: str | None = None
        self.cdp: CDPConnection | None = None
        #: Chrome's id of the browser run last connected to (see `BrowserPool.holder_of`).
        self.browser_id: str | None = None
        self._open_link = open_link
        #: Whether another user's connection reached Chrome run ``browser_id`` (one browser, one user).
        self.held_elsewhere = held_elsewhere
        self._attempting = False
        self._waiters: list[Deferred] = []
        self._health = LoopingCall(lambda: Deferred.fromCoroutine(self._check_health()))
        self._health.clock = reactor
        self._policy = backoffPolicy(
            initialDelay=config.backoff_initial,
            maxDelay=config.backoff_max,
            factor=config.backoff_factor,
            jitter=lambda: rng() * self.max_jitter,
        )
        self._service = self._make_service()

    # -- what the owner of the link adds ------------------------------------------------

    async def _attach(self, link: CDPConnection) -> None:
        """Make a fresh ``link`` usable before it counts as connected (nothing to do here)."""

    def _sessions_lost(self, error: Exception | None) -> None:
        """The link is gone: what waits on it fails with ``error`` (None: nothing waited yet)."""

    def _closed(self) -> None:
        """The link was closed for good (`stop`)."""

    def pages(self) -> list:
        """The pages reached through the link (none here)."""
        return []

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
            self._closed()

        return stopping.addCallback(done)

    def retry(self) -> None:
        """Try again after giving up (status "failed"), e.g. when the user comes back."""
        if self.status == FAILED and not self._service.running:
            self.status = RECONNECTING
            self._service = self._make_service()
            self._service.startService()

    def connect_now(self) -> None:
        """Try again at once rather than when the backoff says (the browser's tunnel has just
        come); nothing to do when connected or while an attempt runs."""
        if self.status == FAILED:
            self.retry()
        elif self.status == RECONNECTING and not self._attempting and self._service.running:
            self._service.stopService()
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

    async def connection(self, timeout: float | None = None) -> CDPConnection:
        """The usable connection, once `connected` (BrowserUnavailable when it is lost meanwhile)."""
        await self.connected(timeout)
        link = self.cdp
        if link is None:
            raise BrowserUnavailable(self.unavailable_message())
        return link

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
                self._sessions_lost(None)
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
            pages=len(self.pages()),
        )
        return handle

    def _note_failure(self, error: BaseException) -> None:
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
        self._sessions_lost(BrowserUnavailable(f"the connection to the browser was lost ({reason})"))
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

    def _tell_status(self: Self) -> None:
        self._status_note = None
        for listener in list(self._status_listeners):
            try:
                listener(self)
            except Exception:
                log.failure("Status listener failed for the browser of {user_id}", user_id=self.user_id)

    def add_status_listener(self, callback: Callable[[Self], None]) -> None:
        """Call ``callback(browser)`` after the status changed (several changes in one
        reactor turn are told once)."""
        self._status_listeners.append(callback)

    def send(self, method: str, params: dict | None = None, *, timeout: float | None = None) -> Deferred:
        """A browser-level CDP call; fails fast with BrowserUnavailable when disconnected."""
        link = self.cdp
        if link is None or link.closed:
            return defer.fail(BrowserUnavailable(self.unavailable_message()))
        return link.send(method, params, timeout=timeout)
