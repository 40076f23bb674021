"""The live tunnels of this process, one per user, and the `LinkOpener` of ``tunnel:`` browsers.

A browser registered as ``tunnel:`` is dialled through its user's tunnel: the opener waits
for the tunnel (up to ``browser.connect_timeout``), asks it for a fresh CDP browser
connection, and hands the `BrowserLink` a `CDPConnection` like any other, so health checks,
statuses, reconnects and tools work unchanged. A second tunnel of the same user replaces the
first (closed with 4409), so a user's browser is always the one they connected last.
"""

from collections.abc import Callable
from typing import TYPE_CHECKING

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from mcproxy.browser.cdp.connection import CDPConnection
from mcproxy.browser.connect import LinkOpener
from mcproxy.browser.urls import is_dialled, is_tunnel
from mcproxy.config import BrowserConfig
from mcproxy.errors import BrowserUnavailable
from mcproxy.lifecycle import AsyncService

if TYPE_CHECKING:
    from mcproxy.browser.link import BrowserLink
    from mcproxy.tunnel.endpoint import TunnelServerProtocol

log = Logger()

NOT_CONNECTED = "your browser's tunnel is not connected; run mcproxy-connect next to your Chrome"
REQUIRED = (
    "this proxy connects browsers only through their tunnels (browser.require_tunnel):"
    " run mcproxy-connect next to your Chrome"
)


class Tunnels(AsyncService):
    """The users' live tunnels. ``on_arrival(user_id)`` is told, from a fresh reactor turn,
    when a user's tunnel comes (the service has that user's browser connect at once rather
    than at its next backoff)."""

    def __init__(self, reactor, config: BrowserConfig, on_arrival: Callable[[str], None] = lambda user_id: None):
        super().__init__()
        self.reactor = reactor
        self.config = config
        self._on_arrival = on_arrival
        self._live: dict[str, TunnelServerProtocol] = {}
        self._waiters: dict[str, list[Deferred]] = {}

    def attach(self, user_id: str, tunnel: "TunnelServerProtocol") -> None:
        """``tunnel`` is now the user's; one that was before is closed as replaced."""
        older = self._live.get(user_id)
        self._live[user_id] = tunnel
        if older is not None and older is not tunnel:
            older.replaced()
        for waiter in self._waiters.pop(user_id, []):
            waiter.callback(tunnel)
        log.info(
            "The tunnel of {user_id} from {address} is connected ({product}, {mode})",
            user_id=user_id,
            address=tunnel.client_address,
            product=tunnel.product,
            mode=tunnel.mode,
        )
        self.reactor.callLater(0, self._on_arrival, user_id)

    def detach(self, user_id: str, tunnel: "TunnelServerProtocol") -> None:
        """``tunnel`` has closed (nothing changes when it had been replaced already)."""
        if self._live.get(user_id) is tunnel:
            del self._live[user_id]
            log.info("The tunnel of {user_id} closed", user_id=user_id)

    def unregistered(self, user_id: str) -> None:
        """``user_id`` was unregistered: its tunnel closes for good (a client that came back
        would register the user again)."""
        tunnel = self._live.get(user_id)
        if tunnel is not None:
            tunnel.unregistered()

    def let_go(self, user_id: str) -> None:
        """This process no longer serves ``user_id`` (a cluster moved it): its tunnel closes,
        and the client reconnects to whichever process the balancer picks."""
        tunnel = self._live.get(user_id)
        if tunnel is not None:
            tunnel.moved_away("your user is served by another process of the proxy now; reconnecting")

    def tunnel_of(self, user_id: str) -> "TunnelServerProtocol | None":
        """The user's live tunnel, if there is one."""
        return self._live.get(user_id)

    def source(self, user_id: str) -> str | None:
        """Where the user's tunnel comes from (the client address), None without one."""
        tunnel = self.tunnel_of(user_id)
        return tunnel.client_address if tunnel is not None else None

    async def _wait_for(self, user_id: str) -> "TunnelServerProtocol":
        """The user's tunnel, waiting for it up to ``browser.connect_timeout``."""
        tunnel = self.tunnel_of(user_id)
        if tunnel is not None:
            return tunnel
        waiters = self._waiters.setdefault(user_id, [])

        def forget(waiter: Deferred) -> None:
            if waiter in waiters:
                waiters.remove(waiter)

        waiting: Deferred = Deferred(forget)
        waiters.append(waiting)
        waiting.addTimeout(self.config.connect_timeout, self.reactor)
        try:
            return await waiting
        except defer.TimeoutError:
            raise BrowserUnavailable(NOT_CONNECTED) from None
        finally:
            forget(waiting)
            if not waiters:
                self._waiters.pop(user_id, None)

    async def open_link(self, browser: "BrowserLink") -> CDPConnection:
        """The `LinkOpener` of ``tunnel:`` browsers: a fresh CDP connection through the user's
        tunnel (the browser behind it is the user's by construction: no claim to check)."""
        tunnel = await self._wait_for(browser.user_id)
        browser.browser_id = None
        return await tunnel.open_browser(f"the browser of {browser.user_id} (through its tunnel)")

    def links(self, direct: LinkOpener) -> LinkOpener:
        """A `LinkOpener` that goes through the tunnels for ``tunnel:`` browsers, else ``direct``."""

        async def open_link(browser: "BrowserLink") -> CDPConnection:
            if is_tunnel(browser.browser_url):
                return await self.open_link(browser)
            if self.config.require_tunnel and is_dialled(browser.browser_url):
                raise BrowserUnavailable(REQUIRED)
            return await direct(browser)

        return open_link

    def token_ids(self) -> set[str]:
        """The API tokens the live tunnels were opened with (for `RevocationWatch`)."""
        return {token for token in (t.token_id for t in self._live.values()) if token is not None}

    def close_token(self, token_id: str) -> int:
        """Close the tunnels opened with ``token_id``, revoked or expired; how many there were."""
        closing = [tunnel for tunnel in self._live.values() if tunnel.token_id == token_id]
        for tunnel in closing:
            tunnel.token_gone()
        return len(closing)

    async def stop(self) -> None:
        """Close every tunnel, telling its client to come back once the proxy does."""
        tunnels, self._live = list(self._live.values()), {}
        await defer.gatherResults([tunnel.going_away() for tunnel in tunnels])
