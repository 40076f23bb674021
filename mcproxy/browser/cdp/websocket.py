"""The DevTools WebSocket: autobahn glue that feeds a `CDPConnection`, and opening one.

`open_websocket` connects to a pinned address, waits for the opening handshake and
explains Chrome's refusals.
"""

from typing import Protocol, cast

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.ssl import optionsForClientTLS

from mcproxy.browser.cdp.connection import CDPConnection
from mcproxy.errors import BrowserUnavailable, InvalidBrowserURL
from mcproxy.threads import thread_runner


class _StreamTransport(Protocol):
    """The TCP (or TLS) transport under the WebSocket: it pauses, resumes and aborts."""

    def pauseProducing(self) -> None: ...

    def resumeProducing(self) -> None: ...

    def abortConnection(self) -> None: ...


class CDPClientProtocol(WebSocketClientProtocol):
    """Autobahn glue: feeds a `CDPConnection` and fires ``opened`` after the handshake."""

    def __init__(self) -> None:
        super().__init__()
        self.opened: Deferred[CDPClientProtocol] | None = Deferred()
        self.cdp: CDPConnection | None = None

    @property
    def connection(self) -> CDPConnection:
        """The CDP connection the opening handshake made (`open_websocket` returns after it)."""
        if self.cdp is None:
            raise BrowserUnavailable("the DevTools WebSocket is not open")
        return self.cdp

    @property
    def _stream(self) -> "_StreamTransport":
        return cast(_StreamTransport, self.transport)

    def onOpen(self) -> None:
        factory = self.factory
        self.cdp = CDPConnection(
            factory.clock,
            lambda payload: self.sendMessage(payload, isBinary=False),
            self._abort,
            default_timeout=factory.call_timeout,
            description=factory.description,
            run_in_thread=thread_runner(factory.clock),
            pause_reading=lambda: self._stream.pauseProducing(),
            resume_reading=lambda: self._stream.resumeProducing(),
        )
        opened, self.opened = self.opened, None
        if opened is not None:
            opened.callback(self)

    def _abort(self) -> None:
        if self.transport is not None:
            self._stream.abortConnection()

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self.cdp is None:
            return
        if isBinary:
            self.cdp.drop("a binary frame; CDP sends text")
        else:
            self.cdp.message_received(payload)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        text = reason or getattr(self, "wasNotCleanReason", None) or f"closed with code {code}"
        if "exceeds payload limit" in text:
            text += "; the proxy accepts messages up to browser.max_message_bytes"
        if self.cdp is not None:
            self.cdp.connection_lost(text)
        if self.opened is not None:
            opened, self.opened = self.opened, None
            opened.errback(self._handshake_error(text))

    def _handshake_error(self, text: str) -> Exception:
        status = (getattr(self, "http_status_line", "") or "").split()
        url = self.factory.url
        if len(status) >= 2 and status[1] == "403":
            return InvalidBrowserURL(
                f"Chrome refused the DevTools WebSocket {url} (403 Forbidden); it only accepts "
                "connections from allowed origins: start Chrome with "
                "--remote-allow-origins=* (or the proxy's origin)"
            )
        if len(status) >= 2 and status[1] in ("404", "400"):
            return BrowserUnavailable(
                f"Chrome has no DevTools WebSocket at {url} ({' '.join(status[1:])}); "
                "it probably restarted: register its http://host:port URL instead"
            )
        return BrowserUnavailable(f"the DevTools WebSocket handshake with {url} failed: {text}")


class CDPClientFactory(WebSocketClientFactory):
    """A factory with CDP's options: explicit size caps, no Origin header, optional auto-ping."""

    protocol = CDPClientProtocol

    def __init__(
        self,
        url: str,
        *,
        reactor,
        host_header: str | None = None,
        max_message_bytes: int = 64 * 1024 * 1024,
        call_timeout: float = 30.0,
        ping_interval: float = 0.0,
        ping_timeout: float = 0.0,
        handshake_timeout: float = 10.0,
        description: str = "the browser",
    ):
        super().__init__(url, origin=None, reactor=reactor)
        self.clock = reactor
        self.call_timeout = call_timeout
        self.description = description
        if host_header is not None:
            # autobahn writes "Host: {host}:{port}"; Chrome wants an IP literal or localhost.
            self.host = host_header.rsplit(":", 1)[0]
        self.setProtocolOptions(
            maxFramePayloadSize=max_message_bytes,
            maxMessagePayloadSize=max_message_bytes,
            autoPingInterval=ping_interval,
            autoPingTimeout=ping_timeout,
            openHandshakeTimeout=handshake_timeout,
            closeHandshakeTimeout=1,
            perMessageCompressionOffers=[],
            # parse_message decodes UTF-8 strictly (a broken message is dropped), so autobahn's
            # check is redundant, and its two C calls per frame let go of the GIL: with a thread
            # decoding a big message meanwhile, each costs the reactor a wait for it.
            utf8validateIncoming=False,
        )


async def open_websocket(
    reactor,
    ws_url: str,
    *,
    address: str,
    port: int,
    secure: bool = False,
    tls_hostname: str | None = None,
    host_header: str | None = None,
    timeout: float = 10.0,
    max_message_bytes: int = 64 * 1024 * 1024,
    call_timeout: float = 30.0,
    ping_interval: float = 0.0,
    description: str = "the browser",
) -> CDPClientProtocol:
    """Connect to ``address:port`` and open the DevTools WebSocket ``ws_url``.

    The TCP connection goes to the pinned ``address`` (never re-resolved). Fails with
    BrowserUnavailable / InvalidBrowserURL carrying advice; the whole wait is bounded.
    ``ping_interval`` stays 0 for Chrome: its DevTools server never answers WebSocket
    pings (tests/test_browser_chromium.py proves it), so dead peers are found by the
    pool's ``Browser.getVersion`` health check instead.
    """
    factory = CDPClientFactory(
        ws_url,
        reactor=reactor,
        host_header=host_header,
        max_message_bytes=max_message_bytes,
        call_timeout=call_timeout,
        ping_interval=ping_interval,
        ping_timeout=ping_interval,
        handshake_timeout=timeout,
        description=description,
    )
    endpoint: IStreamClientEndpoint
    if ":" in address:
        endpoint = TCP6ClientEndpoint(reactor, address, port, timeout=timeout)
    else:
        endpoint = TCP4ClientEndpoint(reactor, address, port, timeout=timeout)
    if secure:
        endpoint = wrapClientTLS(optionsForClientTLS(tls_hostname or address), endpoint)

    async def connect() -> CDPClientProtocol:
        protocol = cast(CDPClientProtocol, await endpoint.connect(factory))  # what the factory builds
        opened = protocol.opened
        if opened is None:  # settled already: open, or closed (then `connection` says so)
            return protocol
        try:
            return await opened
        except BaseException:
            protocol._abort()
            raise

    attempt = Deferred.fromCoroutine(connect())
    attempt.addTimeout(timeout, reactor)
    try:
        return await attempt
    except CancelledError:
        raise
    except defer.TimeoutError:
        raise BrowserUnavailable(f"opening the DevTools WebSocket {ws_url} took more than {timeout:g} s") from None
    except (BrowserUnavailable, InvalidBrowserURL):
        raise
    except Exception as e:
        raise BrowserUnavailable(f"cannot open the DevTools WebSocket {ws_url}: {e}") from None
