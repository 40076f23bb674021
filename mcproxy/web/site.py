"""The HTTP front door: one Site, one root resource, JSON everywhere.

Every request gets an id, bodies over the limit are refused before they are buffered,
clients outside the address lists or over their address rate are refused; the one root
resource (`mcproxy.web.routes.Router`) answers the rest.

Slow and greedy clients (see `ConnectionLimits`): a request's line and headers must arrive
within ``server.header_timeout`` and its body within ``server.body_timeout`` (else 408 and
the connection is closed); an idle connection is closed after ``server.keepalive_timeout``;
one address holds at most ``server.max_connections_per_address`` connections (503 beyond);
a request not answered within ``server.request_timeout`` gets 504 (see
`mcproxy.web.http.set_deadline`). The deadlines live in the HTTP/1.1 parser (`ProxyChannel`).
"""

import io
import ipaddress
import json
from collections.abc import Callable
from typing import Any

import attrs
from prometheus_client import CollectorRegistry
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, ITransport
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure
from twisted.web import http, server

from mcproxy import logs
from mcproxy.errors import (
    MCProxyError,
    PayloadTooLarge,
    SlowRequest,
    TooManyConnections,
)
from mcproxy.metrics import connections_dropped
from mcproxy.web.http import (
    INTERNAL,
    lift_deadline,
    log_unhandled,
    request_id,
    set_deadline,
    write_error,
)
from mcproxy.web.network import ClientPolicy, Network, networks, parse_address, within

log = Logger()


@attrs.frozen
class ConnectionLimits:
    """Time limits and the per-address connection cap of the HTTP listeners (seconds).

    ``uncapped``: networks whose peers have no connection cap (trusted proxies: one load
    balancer carries the connections of many clients, which the rate limits still tell apart).
    """

    request_timeout: float = 120.0
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keepalive_timeout: float = 60.0
    max_per_address: int = 64
    uncapped: tuple[Network, ...] = ()

    @classmethod
    def from_config(cls, config) -> "ConnectionLimits":
        """The limits a `Config` sets (``server.*``, with ``network.trusted_proxies`` uncapped)."""
        server = config.server
        return cls(
            request_timeout=server.request_timeout,
            header_timeout=server.header_timeout,
            body_timeout=server.body_timeout,
            keepalive_timeout=server.keepalive_timeout,
            max_per_address=server.max_connections_per_address,
            uncapped=networks(config.network.trusted_proxies),
        )


def address_group(host: str | None):
    """What the connection cap counts by: the address, or its /64 for IPv6 (one host's
    share of a network); None for what is no IP address (a Unix socket)."""
    address = parse_address(host) if host else None
    if isinstance(address, ipaddress.IPv6Address):
        return ipaddress.IPv6Network((address, 64), strict=False)
    return address


def _raw_error(error: MCProxyError, extra: bytes = b"") -> bytes:
    """A whole JSON error response, for a connection that has no request to answer through."""
    body = json.dumps(error.to_json(), separators=(",", ":")).encode("utf-8")
    status = error.http_status
    return (
        b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
        b"Cache-Control: no-store\r\nConnection: close\r\n%s\r\n" % (status, http.RESPONSES[status], len(body), extra)
    ) + body


class ProxyChannel(http.HTTPChannel):
    """HTTP/1.1 with deadlines for reading a request, and the per-address connection cap.

    Twisted's idle timeout restarts with every byte, so a client sending one byte now and
    then would hold a connection for ever: the whole head (request line and headers) must
    arrive within ``header_timeout`` of its first byte (or of connecting), and the whole
    body within ``body_timeout`` of the head.

    One timer per connection watches those deadlines: arming and disarming only note what
    is watched, and the timer, when it fires, either cuts the connection or waits on for
    the deadline in force then. A request thus costs no timer of its own to schedule and
    cancel.
    """

    #: Set by `ProxySite.buildProtocol`.
    site: "ProxySite"
    #: Set before `connectionMade`, which every other method follows.
    transport: ITransport
    _timer: IDelayedCall | None = None
    #: The deadline in force: (what is being read, its limit in seconds, when it passes).
    _watching: tuple[str, float, float] | None = None
    _reading_head = True
    _group = None
    _refused = False
    _host = None
    _secure: bool | None = None

    def connectionMade(self):
        super().connectionMade()
        try:
            self._group = self.site.open_connection(getattr(self.transport.getPeer(), "host", None))
        except TooManyConnections as e:
            self._refused = True
            self.transport.write(_raw_error(e, b"Retry-After: 1\r\n"))
            self.loseConnection()
            return
        self._arm("header")

    def dataReceived(self, data):
        if self._refused:
            return
        if self._reading_head and self._watching is None:
            self._arm("header")
        super().dataReceived(data)

    def allHeadersReceived(self):
        self._disarm()
        self._reading_head = False
        if self.length != 0:  # a body follows (None: chunked)
            self._arm("body")
        super().allHeadersReceived()

    def allContentReceived(self):
        self._disarm()
        super().allContentReceived()

    def requestDone(self, request):
        self._reading_head = True  # the next request's head (its first byte starts the clock)
        super().requestDone(request)

    def getHost(self):
        """The local address, asked of the socket once (twisted.web asks for every request)."""
        host = self._host
        if host is None:
            host = self._host = super().getHost()
        return host

    def isSecure(self):
        """Whether the connection is TLS, found once (each look is an interface adaptation)."""
        secure = self._secure
        if secure is None:
            secure = self._secure = super().isSecure()
        return secure

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._disarm()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._group is not None:
            self.site.close_connection(self._group)
            self._group = None
        super().connectionLost(reason)

    def hand_over(self, protocol) -> Callable[[], None]:
        """Give the connection to ``protocol`` (a WebSocket after its upgrade): no HTTP deadline
        or idle timeout applies any more, and nothing more is read as HTTP. It stays counted
        against its address's cap: call the returned ``release`` once ``protocol`` has lost it."""
        self._disarm()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self.setTimeout(None)
        transport: Any = self.transport
        self.transport = None  # type: ignore[assignment]
        transport.unregisterProducer()
        if isinstance(transport, ProtocolWrapper):  # TLS
            transport.wrappedProtocol = protocol
        else:
            transport.protocol = protocol
        protocol.makeConnection(transport)
        transport.resumeProducing()  # the channel paused reading while it handled the request
        group, self._group = self._group, None
        released: list[bool] = []

        def release() -> None:
            if group is not None and not released:
                released.append(True)
                self.site.close_connection(group)

        return release

    def _arm(self, part: str) -> None:
        limits = self.site.limits
        seconds = limits.header_timeout if part == "header" else limits.body_timeout
        at = self.site.reactor.seconds() + seconds
        self._watching = (part, seconds, at)
        if self._timer is None:
            self._timer = self.callLater(seconds, self._check_deadline)
        elif self._timer.getTime() > at:
            self._timer.reset(seconds)

    def _disarm(self) -> None:
        self._watching = None

    def _check_deadline(self) -> None:
        self._timer = None
        if self._watching is None:
            return  # nothing is being read against a limit now; the next `_arm` starts a timer
        part, seconds, at = self._watching
        left = at - self.site.reactor.seconds()
        if left > 0:
            self._timer = self.callLater(left, self._check_deadline)
        else:
            self._too_slow(part, seconds)

    def _too_slow(self, part: str, seconds: float) -> None:
        self._watching = None
        peer = getattr(self.transport.getPeer(), "host", "unix")
        log.info(
            "Closing a connection from {peer}: the request {part} took over {seconds} s",
            peer=peer,
            part=part,
            seconds=seconds,
        )
        self.site.count_dropped(f"{part}_timeout")
        error = SlowRequest(f"the request {part} did not arrive within {seconds:g} s (server.{part}_timeout)")
        self.transport.write(_raw_error(error))
        self._refused = True  # nothing more is read from this connection
        self.timeoutConnection()


class _Discard(io.BytesIO):
    """A body sink that keeps nothing: the body of a request we will refuse with 413."""

    def write(self, data):
        return len(data)


class RequestState:
    """What the proxy learns about a request while answering it, declared once.

    `ProxyRequest` carries it; so does the tests' stand-in request
    (`mcproxy.testing.requests.FakeRequest`).
    """

    #: The request's id (`mcproxy.web.http.request_id`), on the response and every log event.
    request_id: str | None = None
    #: The client address (`mcproxy.web.network.ClientPolicy.client_address`; not twisted's
    #: ``client``, the TCP peer).
    client_address: str | None = None
    #: Who is calling, once authenticated (`mcproxy.web.routes`).
    principal: Any = None
    #: The pending 504 of ``server.request_timeout`` (`mcproxy.web.http.set_deadline`).
    deadline: IDelayedCall | None = None
    #: The work answering the request, cancelled at the time limit.
    work: Deferred | None = None
    #: Called instead of the 504 at the time limit (an answer that says so itself).
    on_deadline: Callable[[float], None] | None = None
    #: Says the RFC 9728 metadata URL the authentication challenges name, when there is one
    #: to send (`mcproxy.auth.chain`): ``resource_metadata(request)``.
    resource_metadata: Callable[[Any], str] | None = None
    #: The Bearer challenge of a 401, and the Basic one when offered.
    challenge: str | None = None
    basic_challenge: str | None = None
    #: Set by twisted.web's Request when the connection is lost before the answer.
    _disconnected: bool

    @property
    def gone(self) -> bool:
        """Whether the client went away before the answer was finished."""
        return self._disconnected


class ProxyRequest(RequestState, server.Request):
    """A request that counts its body against the site's limit and never renders HTML."""

    channel: ProxyChannel
    too_large = False
    _received = 0

    def gotLength(self, length):
        limit = self.channel.site.max_body_bytes
        if length is not None and length > limit:
            self.too_large = True
            self.content = _Discard()
        else:
            super().gotLength(length)

    def handleContentChunk(self, data):
        if self.too_large:
            return
        self._received += len(data)
        if self._received > self.channel.site.max_body_bytes:
            self.too_large = True
            if self.content is not None:
                self.content.close()
            self.content = _Discard()
            return
        super().handleContentChunk(data)

    #: Between `process` and `_end`: the request is being answered.
    _answering = False

    def process(self):
        """Handle the request in a context of its own, so its id is on every event it causes,
        and within the time limit."""
        site = self.channel.site
        self._answering = True
        set_deadline(self, site.reactor, site.limits.request_timeout)
        logs.in_request(request_id(self), self._process)

    def finish(self):
        site = self.channel.site
        super().finish()
        self._end(site)

    def connectionLost(self, reason):
        """The client went away: the work answering it stops (`mcproxy.web.http.cancel_on_deadline`)."""
        site = self.channel.site
        super().connectionLost(reason)
        if not self.finished and self.work is not None:
            self.work.cancel()
        self._end(site)

    def _end(self, site: "ProxySite") -> None:
        """Answered or abandoned, once: the time limit is lifted and the request counted (one
        hook instead of a `notifyFinish` Deferred for each)."""
        if not self._answering:
            return
        self._answering = False
        lift_deadline(self)
        if site.metrics is not None:
            site.metrics.http_request(self.path, self.code)

    def _process(self):
        if self.too_large:
            self.setHeader(b"Connection", b"close")
            limit = self.channel.site.max_body_bytes
            write_error(self, PayloadTooLarge(f"request body is over the limit of {limit} bytes"))
            return
        site = self.channel.site
        if site.hsts_max_age and self.isSecure():
            self.setHeader(b"Strict-Transport-Security", b"max-age=%d" % site.hsts_max_age)
        self.client_address = client = site.client_policy.client_address(self)
        try:
            site.client_policy.admit(client)
            # One IPv6 host usually holds a whole /64: its rate is counted as one client.
            site.check_address(str(address_group(client) or client))
        except MCProxyError as e:
            write_error(self, e)
            return
        super().process()

    def processingFailed(self, reason):
        """A bug escaped a resource: log it, answer a JSON 500, never a traceback."""
        log_unhandled(self, reason)
        if not self.finished and not self.gone:
            if not self.startedWriting:
                write_error(self, INTERNAL)
            else:
                self.finish()
        return reason


class ProxySite(server.Site):
    """The daemon's Site: `ProxyRequest`s over `ProxyChannel`s, no tracebacks, a body limit,
    the client checks, the `ConnectionLimits`, and HSTS on TLS listeners (``hsts_max_age``
    seconds; 0 sends none). ``reactor`` is the clock of every time limit.

    ``check_address(address)`` raises RateLimited for a client over its address limit.
    Connections dropped for being slow or over the cap are counted on ``registry`` as
    ``mcproxy_connections_dropped_total{reason}``.
    """

    requestFactory = ProxyRequest
    displayTracebacks = False

    def __init__(
        self,
        root,
        *,
        max_body_bytes: int,
        client_policy: ClientPolicy | None = None,
        check_address=lambda address: None,
        hsts_max_age: int = 0,
        metrics=None,
        limits: ConnectionLimits = ConnectionLimits(),
        registry: CollectorRegistry | None = None,
        **kwargs,
    ):
        # Bodies are JSON here: twisted.web must not parse form posts itself (it answers a
        # malformed multipart body with a bare, non-JSON 400 before any resource sees it).
        super().__init__(root, parsePOSTFormSubmission=False, **kwargs)
        self.max_body_bytes = max_body_bytes
        self.hsts_max_age = hsts_max_age
        self.metrics = metrics
        self.client_policy = client_policy or ClientPolicy()
        self.check_address = check_address
        self.limits = limits
        #: The access log (``server.access_log``), None when there is none.
        self.access_log: logs.LineFile | None = None
        self.connections: dict = {}  # open connections per address group
        self._crowded: set = set()  # groups refused since they last were under the cap
        self._dropped = connections_dropped(registry)

    @classmethod
    def from_config(cls, root, config, **parts) -> "ProxySite":
        """The site serving ``root`` with the limits and client rules ``config`` sets."""
        site = cls(root, max_body_bytes=config.server.max_body_bytes, **parts)
        site.reconfigure(config)
        return site

    def reconfigure(self, config) -> None:
        """Apply the body limit, HSTS, the client address lists and the `ConnectionLimits`
        (live); open connections keep the limits they started with."""
        network = config.network
        self.client_policy = ClientPolicy(network.ip_allow, network.ip_deny, network.trusted_proxies)
        self.max_body_bytes = config.server.max_body_bytes
        self.hsts_max_age = config.server.hsts_max_age
        self.limits = ConnectionLimits.from_config(config)
        path = config.server.access_log
        if path != (self.access_log.path if self.access_log is not None else ""):
            if self.access_log is not None:
                self.access_log.close()
            self.access_log = logs.LineFile(path, self.reactor, mode=0o640) if path else None
            if self.access_log is not None and self.numPorts:
                self.access_log.open()

    def startFactory(self) -> None:
        super().startFactory()
        if self.access_log is not None and not self.access_log.is_open:
            self.access_log.open()

    def stopFactory(self) -> None:
        super().stopFactory()
        if self.access_log is not None:
            self.access_log.close()

    def log(self, request) -> None:
        """One line per request in the access log, when there is one; none in the daemon's log,
        where a line per tool call would cost more than the call."""
        if self.access_log is not None:
            self.access_log.write((logs.redact(http.combinedLogFormatter(self._logDateTime, request)) + "\n").encode())

    def protocol(self):
        """HTTP/1.1 with read deadlines (no HTTP/2: its streams would bypass them)."""
        return ProxyChannel()

    def buildProtocol(self, addr):
        channel = super().buildProtocol(addr)
        channel.timeOut = self.limits.keepalive_timeout
        return channel

    def open_connection(self, host: str | None):
        """Count a new connection from ``host``: the group to release it from with
        `close_connection` (None: not counted). Raises `TooManyConnections` (counted as
        dropped) when the address is at its cap."""
        limits = self.limits
        group = address_group(host)
        if host is None or group is None or not limits.max_per_address or within(parse_address(host), limits.uncapped):
            return None
        held = self.connections.get(group, 0)
        if held >= limits.max_per_address:
            self.count_dropped("over_address_cap")
            if group not in self._crowded:  # said once while the crowd lasts, not per refusal
                self._crowded.add(group)
                log.warn(
                    "Refusing connections from {group}: it holds {held} (server.max_connections_per_address)",
                    group=str(group),
                    held=held,
                )
            raise TooManyConnections(
                f"your address already holds {held} connections to this server "
                "(server.max_connections_per_address); close some or retry later"
            )
        self.connections[group] = held + 1
        return group

    def close_connection(self, group) -> None:
        """A connection `open_connection` counted has closed."""
        left = self.connections.get(group, 1) - 1
        if left > 0:
            self.connections[group] = left
        else:
            self.connections.pop(group, None)
        if left < self.limits.max_per_address:
            self._crowded.discard(group)

    def count_dropped(self, reason: str) -> None:
        self._dropped.labels(reason).inc()
