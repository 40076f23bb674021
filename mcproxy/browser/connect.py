"""Finding and dialling a browser: check its URL, discover its DevTools WebSocket, open it.

Every connect validates the registered URL again (DNS again) and pins the address it
resolved to, so a name that moves to a forbidden network is refused at the next attempt.
Registration uses `probe_browser` to learn which Chrome answers at a URL.
"""

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import attrs

from mcproxy.browser.cdp.connection import CDPConnection
from mcproxy.browser.cdp.discovery import discover
from mcproxy.browser.cdp.websocket import open_websocket
from mcproxy.browser.urls import BrowserURL, browser_id, endpoint_key, validate_browser_url
from mcproxy.config import BrowserConfig
from mcproxy.errors import BrowserUnavailable, InvalidBrowserURL

if TYPE_CHECKING:
    from mcproxy.browser.link import BrowserLink

#: What opens a browser's CDP link for each connection attempt (tests pass an in-memory one).
LinkOpener = Callable[["BrowserLink"], Awaitable[CDPConnection]]


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
    ws = (
        target
        if ws_url == target.url
        else await validate_browser_url(ws_url, config.allowed_networks, reactor=reactor, timeout=timeout)
    )
    return LocatedBrowser(url=target, ws_url=ws_url, ws=ws)


async def open_located(
    reactor, config: BrowserConfig, located: LocatedBrowser, *, description: str = "the browser"
) -> CDPConnection:
    """Open the DevTools WebSocket of a located browser, to its pinned address."""
    ws = located.ws
    if ws.address is None:  # validate_browser_url pins every URL it passes
        raise InvalidBrowserURL(f"{located.ws_url} has no pinned address")
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
    return protocol.connection


async def connect_browser(
    reactor, config: BrowserConfig, http_client, browser_url: str, *, description: str = "the browser"
) -> CDPConnection:
    """Validate ``browser_url`` (resolving again), discover its WebSocket and open it."""
    located = await locate_browser(reactor, config, http_client, browser_url)
    return await open_located(reactor, config, located, description=description)


async def open_cdp_link(browser: "BrowserLink") -> CDPConnection:
    """The real connect of a `BrowserLink` (tests substitute an in-memory one); remembers
    which browser run answered, so registration can tell who holds it."""
    located = await locate_browser(browser.reactor, browser.config, browser.http_client, browser.browser_url)
    if browser.held_elsewhere(located.browser_id):
        # The same Chrome under another address (its LAN address and 127.0.0.1, say).
        raise BrowserUnavailable(
            "this browser is connected for another user, and a browser belongs to one user only;"
            " register a Chrome of your own"
        )
    browser.browser_id = located.browser_id
    return await open_located(browser.reactor, browser.config, located, description=f"the browser of {browser.user_id}")


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
