"""``GET /tunnel``: the WebSocket ``mcproxy-connect`` dials, and the proxy's end of a tunnel.

The route authenticates the caller like any API call, then hands the connection over to
a `TunnelServerProtocol` (`mcproxy.web.site.ProxyChannel.hand_over`), which completes the
WebSocket handshake. A refused credential is told after the handshake, with a close code
(4401, 4403) and a message, so a client that cannot see HTTP statuses learns why too.

What the peer sends is untrusted: a frame over ``browser.max_message_bytes`` fails the
connection (autobahn), and a malformed control message, a text frame before the hello or a
hello that does not come within ``browser.connect_timeout`` closes that tunnel (4400); CDP
text frames go to the `CDPConnection`, which drops what is malformed.
"""

from collections.abc import Awaitable, Callable
from typing import Any, cast

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionRequest
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from mcproxy.auth.principal import REGISTER, Principal
from mcproxy.browser.cdp.connection import CDPConnection
from mcproxy.browser.urls import TUNNEL_URL, is_tunnel
from mcproxy.config import BrowserConfig
from mcproxy.errors import BadRequest, BrowserUnavailable, Forbidden, MCProxyError, Unauthorized
from mcproxy.storage.records import UserRecord
from mcproxy.threads import thread_runner
from mcproxy.tunnel import wire
from mcproxy.tunnel.registry import Tunnels
from mcproxy.web.http import lift_deadline
from mcproxy.web.routes import API_ORIGINS, Area, Route

log = Logger()


class TunnelServerProtocol(WebSocketServerProtocol):
    """The proxy's end of one tunnel (set up by `TunnelEndpoint` before the handshake)."""

    #: Who dialled (None: refused, see ``refusal``), and from where.
    principal: Principal | None = None
    client_address: str | None = None
    #: (close code, message) to close with right after the handshake.
    refusal: tuple[int, str] | None = None
    #: Releases the connection's place in its address's count, once it is gone.
    release: Callable[[], None] = staticmethod(lambda: None)
    #: What the hello said.
    product = "Chrome"
    mode: str | None = None

    def __init__(self) -> None:
        super().__init__()
        self.cdp: CDPConnection | None = None
        self._welcomed = False
        self._opening: Deferred | None = None
        self._description = "the browser"
        self._hello_due = None
        self._gone = False
        self._on_gone: list[Deferred] = []

    @property
    def _home(self) -> "TunnelServerFactory":
        """The factory that built this protocol: the settings and the registry."""
        return cast(TunnelServerFactory, self.factory)

    @property
    def token_id(self) -> str | None:
        """The API token the tunnel was opened with (None: another credential)."""
        return self.principal.token_id if self.principal is not None else None

    @property
    def user_id(self) -> str:
        return self.principal.user_id if self.principal is not None else "(refused)"

    # -- the WebSocket --------------------------------------------------------------

    def onConnect(self, request: ConnectionRequest) -> str:
        return wire.SUBPROTOCOL

    def onOpen(self) -> None:
        if self.refusal is not None:
            code, message = self.refusal
            self.sendClose(code, message[:120])
            return
        clock = self._home.clock
        self._hello_due = clock.callLater(self._home.config.connect_timeout, self._broken, "no hello in time")

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self._gone or self.refusal is not None:
            return
        if not isBinary:
            if not self._welcomed:
                self._broken("a CDP message before the hello")
            elif self.cdp is not None:
                self.cdp.message_received(payload)
            return  # late messages of a browser connection already closed
        try:
            message = wire.decode(payload)
        except wire.BadControl as e:
            self._broken(str(e))
            return
        self._control(message)

    def _control(self, message: dict) -> None:
        kind = message["t"]
        if not self._welcomed:
            if kind != "hello":
                self._broken(f"a {kind!r} message before the hello")
            elif message.get("v") != wire.VERSION or message.get("mode") not in wire.MODES:
                self._broken(f"this proxy speaks version {wire.VERSION} with mode pipe or port")
            else:
                self._hello(message)
        elif kind == "opened" and self._opening is not None:
            opening, self._opening = self._opening, None
            opening.callback(self._new_cdp())
        elif kind == "error" and self._opening is not None:
            opening, self._opening = self._opening, None
            opening.errback(BrowserUnavailable(f"your tunnel could not reach your browser: {message.get('msg')}"))
        elif kind == "closed":
            self._drop_cdp(f"your browser went away ({message.get('reason') or 'no reason given'})", tell=False)
        elif kind not in ("opened", "error"):  # those two may come late, after a timeout
            self._broken(f"a {kind!r} message from the client")

    def _hello(self, message: dict) -> None:
        if self._hello_due is not None and self._hello_due.active():
            self._hello_due.cancel()
        self._welcomed = True
        self.product = message.get("product") or "Chrome"
        self.mode = message["mode"]
        wire.send(self, wire.encode("welcome", user=self.user_id), binary=True)
        self._home.tunnels.attach(self.user_id, self)
        if self.principal is not None:
            self._home.arrived(self.principal, self)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self._gone = True
        if self._hello_due is not None and self._hello_due.active():
            self._hello_due.cancel()
        why = reason or getattr(self, "wasNotCleanReason", None) or f"closed with code {code}"
        self._drop_cdp(f"the tunnel closed: {why}", tell=False)
        if self._opening is not None:
            opening, self._opening = self._opening, None
            opening.errback(BrowserUnavailable(f"the tunnel closed: {why}"))
        if self._welcomed:
            self._home.tunnels.detach(self.user_id, self)
        self.release()
        for waiter in self._on_gone:
            waiter.callback(None)

    def _broken(self, why: str) -> None:
        """The peer broke the protocol: close this tunnel, and only this one."""
        if self._gone:
            return
        log.warn(
            "Closing the tunnel of {user_id} from {address}: {why}",
            user_id=self.user_id,
            address=self.client_address,
            why=why,
        )
        self.sendClose(wire.CLOSE_PROTOCOL, why[:120])

    def replaced(self) -> None:
        """A newer tunnel of the same user took over."""
        self._drop_cdp("a newer tunnel of the same user replaced this one", tell=False)
        self.sendClose(wire.CLOSE_REPLACED, "replaced by a newer tunnel of the same user")

    def token_gone(self) -> None:
        """The token it was opened with is revoked or expired: the client must not come back with it."""
        self.sendClose(wire.CLOSE_UNAUTHORIZED, "the token was revoked or expired")

    def unregistered(self) -> None:
        """Its user was unregistered: closed for good."""
        self._drop_cdp("the user was unregistered", tell=False)
        self.sendClose(wire.CLOSE_UNREGISTERED, "the user was unregistered")

    def moved_away(self, why: str) -> None:
        """Its user is served by another process now (or cannot be served here): the client
        reconnects through the balancer, and the process it reaches pulls the user there."""
        self._drop_cdp(why, tell=False)
        self.sendClose(wire.CLOSE_GOING_AWAY, why)

    def going_away(self) -> Deferred:
        """The proxy stops: close, so the client knows to come back. Deferred[None], fired once
        the tunnel is closed (autobahn drops it if the client does not answer within 1 s)."""
        if self._gone:
            return defer.succeed(None)
        gone: Deferred = Deferred()
        self._on_gone.append(gone)
        self.sendClose(wire.CLOSE_GOING_AWAY, "the proxy is stopping")
        return gone

    # -- the browser connection it carries --------------------------------------------

    async def open_browser(self, description: str) -> CDPConnection:
        """Ask the client for a fresh CDP browser connection; a `CDPConnection` over it."""
        self._drop_cdp("a fresh browser connection was asked for", tell=True)
        if self._opening is not None:
            self._opening.cancel()
        if not wire.send(self, wire.encode("open"), binary=True):
            raise BrowserUnavailable("your browser's tunnel closed; mcproxy-connect reconnects by itself")
        opening: Deferred = Deferred()
        self._opening = opening
        self._description = description
        seconds = self._home.config.connect_timeout
        opening.addTimeout(seconds, self._home.clock)
        try:
            return await opening
        except defer.TimeoutError:
            raise BrowserUnavailable(
                f"your browser's tunnel did not open a browser connection within {seconds:g} s"
            ) from None
        finally:
            if self._opening is opening:
                self._opening = None

    def _new_cdp(self) -> CDPConnection:
        factory = self._home
        transport: Any = self.transport
        self.cdp = CDPConnection(
            factory.clock,
            lambda data: self.sendMessage(data, isBinary=False),
            lambda: self._drop_cdp("closed by the proxy", tell=True),
            default_timeout=factory.config.call_timeout,
            description=self._description,
            run_in_thread=thread_runner(factory.clock),
            pause_reading=transport.pauseProducing,
            resume_reading=transport.resumeProducing,
        )
        return self.cdp

    def _drop_cdp(self, reason: str, *, tell: bool) -> None:
        """The browser connection ends (``tell``: the client is asked to close it)."""
        cdp, self.cdp = self.cdp, None
        if cdp is None:
            return
        if tell:
            wire.send(self, wire.encode("close"), binary=True)
        cdp.connection_lost(reason)
        if not self._gone:
            # The connection may have held reading (a big message in decoding, a flood's turn):
            # the tunnel outlives it and reads on.
            cast(Any, self.transport).resumeProducing()


class TunnelServerFactory(WebSocketServerFactory):
    """Builds the proxy's ends of tunnels, with the size cap and keepalive pings."""

    protocol = TunnelServerProtocol

    def __init__(
        self,
        reactor,
        config: BrowserConfig,
        tunnels: Tunnels,
        arrived: Callable[[Principal, TunnelServerProtocol], None],
    ):
        super().__init__(reactor=reactor)
        self.clock = reactor
        self.config = config
        self.tunnels = tunnels
        self.arrived = arrived
        self.setProtocolOptions(
            maxFramePayloadSize=config.max_message_bytes,
            maxMessagePayloadSize=config.max_message_bytes,
            autoPingInterval=wire.PING_INTERVAL,
            autoPingTimeout=wire.PING_INTERVAL,
            openHandshakeTimeout=config.connect_timeout,
            closeHandshakeTimeout=1,
            # A frame over the cap is refused with a close frame saying so (1009), not a bare drop.
            failByDrop=False,
            perMessageCompressionAccept=lambda offers: None,
        )


def _offers_tunnel(request) -> bool:
    """Whether ``request`` asks for a WebSocket speaking the tunnel protocol."""
    upgrade = (request.getHeader(b"upgrade") or b"").lower()
    offered = (request.getHeader(b"sec-websocket-protocol") or b"").decode("latin-1")
    return (
        upgrade == b"websocket"
        and request.getHeader(b"sec-websocket-version") == b"13"
        and request.getHeader(b"sec-websocket-key") is not None
        and wire.SUBPROTOCOL in (p.strip() for p in offered.split(","))
    )


class TunnelEndpoint:
    """The ``/tunnel`` route. ``authenticate(request, endpoint_class)`` is the admission of
    every API call; ``store`` and ``pool`` register the caller's browser as ``tunnel:`` on
    its first tunnel, when its credential may register. In a cluster, ``pull(user_id,
    principal)`` first makes this process the user's owner (its browser can be reached from
    here alone); a tunnel whose user cannot be pulled here is closed, and its client comes back."""

    def __init__(
        self,
        reactor,
        config: BrowserConfig,
        tunnels: Tunnels,
        *,
        authenticate: Callable[[Any, str], Awaitable[Principal]],
        store,
        pool,
        pull: Callable[[str, Principal], Awaitable[None]] | None = None,
    ):
        self.reactor = reactor
        self._authenticate = authenticate
        self._store = store
        self._pool = pool
        self._pull = pull
        self._factory = TunnelServerFactory(reactor, config, tunnels, self._arrived)

    def area(self) -> Area:
        return Area((Route(b"GET", r"/tunnel/?", self.connect),), origins=API_ORIGINS)

    async def connect(self, request) -> None:
        if not _offers_tunnel(request):
            raise BadRequest(
                f"/tunnel is a WebSocket speaking {wire.SUBPROTOCOL}: connect with mcproxy-connect",
                code="websocket_expected",
            )
        protocol = cast(TunnelServerProtocol, self._factory.buildProtocol(None))
        protocol.client_address = request.client_address
        try:
            principal = await self._authenticate(request, "admin")
        except Unauthorized as e:
            protocol.refusal = (wire.CLOSE_UNAUTHORIZED, f"the proxy refused this token: {e.message}")
        except Forbidden as e:
            protocol.refusal = (wire.CLOSE_FORBIDDEN, e.message)
        else:
            if principal.may_tunnel:
                protocol.principal = principal
            else:
                protocol.refusal = (wire.CLOSE_FORBIDDEN, "this token lacks the 'tunnel' permission")
        lift_deadline(request)
        protocol.release = request.channel.hand_over(protocol)
        head = [request.method + b" " + request.uri + b" HTTP/1.1"]
        head += [name + b": " + b",".join(values) for name, values in request.requestHeaders.getAllRawHeaders()]
        protocol.dataReceived(b"\r\n".join(head) + b"\r\n\r\n")

    def _arrived(self, principal: Principal, tunnel: TunnelServerProtocol) -> None:
        user_id = principal.user_id
        defer.Deferred.fromCoroutine(self._settle(principal, tunnel)).addErrback(
            lambda failure: log.failure("Registering the tunnel of {user_id} failed", failure, user_id=user_id)
        )

    async def _settle(self, principal: Principal, tunnel: TunnelServerProtocol) -> None:
        if self._pull is not None:
            try:
                await self._pull(principal.user_id, principal)
            except MCProxyError as e:
                log.warn("The tunnel of {user_id} is closed: {reason}", user_id=principal.user_id, reason=e.message)
                tunnel.moved_away(f"this proxy process cannot serve your user now ({e.message}); reconnecting")
                return
        await self._register(principal)

    async def _register(self, principal: Principal) -> None:
        """Register ``tunnel:`` as the caller's browser on its first tunnel (a credential that
        may register), so running mcproxy-connect is all a user does."""
        if not principal.has(REGISTER):
            return
        user_id = principal.user_id
        existing = await self._store.get_user(user_id)
        if existing is not None and is_tunnel(existing.browser_url):
            return
        try:
            self._pool.check_room(user_id)
        except MCProxyError as e:
            log.warn("Not registering the tunnel of {user_id}: {reason}", user_id=user_id, reason=e.message)
            return
        now = self.reactor.seconds()
        await self._store.save_user(
            UserRecord(
                user_id=user_id,
                browser_url=TUNNEL_URL,
                metadata=existing.metadata if existing else {},
                registered_at=existing.registered_at if existing else now,
                last_activity=existing.last_activity if existing else None,
            )
        )
        self._pool.browser_for(user_id, TUNNEL_URL)
        log.info("User {user_id} registered its browser's tunnel", user_id=user_id)
