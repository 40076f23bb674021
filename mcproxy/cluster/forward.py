"""Forwarding a request to the node that owns its user, and piping the answer back.

The edge sends the whole HTTP request over a persistent connection with a signed envelope
(`mcproxy.cluster.envelope`) and relays the owner's status, a fixed set of headers and the
body as it arrives. The owner's socket is the producer of the client's response: a client
that stops reading stops the edge reading from the owner, so the owner's own flow control
(`mcproxy.web.sse.SseStream`) sees the slow client. A client that goes away closes the
upstream connection, which cancels the work on the owner like any departing client.

Whatever keeps the owner from taking the request is raised before anything is written to
the client, as a `ForwardFailed` saying whether the request ran there, so the router can
re-route, wait or answer.
"""

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    BrowserLikePolicyForHTTPS,
    HTTPConnectionPool,
    RequestNotSent,
    RequestTransmissionFailed,
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, IBodyProducer
from zope.interface import implementer

from mcproxy import wirejson
from mcproxy.cluster.envelope import HEADER, DuplicateForward, Envelope, new_nonce
from mcproxy.errors import MCProxyError, ServerFull
from mcproxy.mcp.codes import OWNER_LOST
from mcproxy.mcp.jsonrpc import encode, error_message
from mcproxy.web.http import lift_deadline

if TYPE_CHECKING:
    from mcproxy.auth.principal import Principal
    from mcproxy.web.site import ProxyRequest

log = Logger()

#: Request headers the owner needs; never credentials (the envelope carries the identity)
#: nor hop-by-hop ones.
_REQUEST_HEADERS = (
    b"Content-Type",
    b"Accept",
    b"Mcp-Session-Id",
    b"MCP-Protocol-Version",
    b"Mcp-Method",
    b"Mcp-Name",
    b"Last-Event-ID",
    b"Origin",
    b"User-Agent",
)

#: Response headers relayed to the client, besides the CORS ones (``Access-Control-*``).
_RESPONSE_HEADERS = frozenset(
    name.lower()
    for name in (
        b"Content-Type",
        b"Content-Length",
        b"Mcp-Session-Id",
        b"Cache-Control",
        b"X-Accel-Buffering",
        b"Retry-After",
        b"WWW-Authenticate",
        b"Allow",
        b"X-MCProxy-Node",
        b"X-MCProxy-Owner-Ms",
    )
)

_LOST = (
    "owner_lost: the proxy process running this request stopped before it finished (your browser "
    "connection is moving to another process). It may or may not have taken effect; check before "
    "repeating it"
)


class ForwardFailed(MCProxyError):
    """The owner did not take the request; nothing was written to the client.

    ``executed`` says whether the request ran on the owner: False, or None when unknown.
    """

    http_status = 503
    executed: bool | None = False


class OwnerUnreachable(ForwardFailed):
    """No connection to the owner (refused, timed out, or gone before the request was sent)."""

    code = "owner_unreachable"


class NotOwner(ForwardFailed):
    """The node answered 421: it does not own the user; ``owner`` is its hint, if any."""

    http_status = 421
    code = "not_owner"

    def __init__(self, message: str, *, owner: str | None):
        super().__init__(message)
        self.owner = owner


class OwnerDraining(ForwardFailed):
    """The owner is handing the user over (503 ``handing_over``); the next owner will serve."""

    code = "handing_over"


class OwnerLost(ForwardFailed):
    """The connection was lost after the request was sent and before the answer began: it may
    have run. A retry sends the same ``nonce``, which the owner refuses if it saw it."""

    http_status = 502
    code = "owner_lost"
    executed = None

    def __init__(self, message: str, *, nonce: str):
        super().__init__(message)
        self.nonce = nonce


class TooManyForwards(ServerFull):
    """``cluster.max_forward_connections`` forwards to one node are open already."""


@implementer(IBodyProducer)
class _Body:
    """A body already in memory, written at once (no cooperator, no extra turn of the reactor)."""

    def __init__(self, data: bytes):
        self._data = data
        self.length = len(data)

    def startProducing(self, consumer) -> Deferred[None]:
        consumer.write(self._data)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


@implementer(IAgentEndpointFactory)
class _Endpoints:
    """Each node's endpoint, made once: the Agent's own factory parses and IDNA-encodes the
    host again for every request, although a new connection is seldom needed."""

    def __init__(self, reactor, connect_timeout: float):
        self._reactor = reactor
        self._timeout = connect_timeout
        self._made: dict[tuple[bytes, bytes, int], Any] = {}
        self._tls = BrowserLikePolicyForHTTPS()

    def endpointForURI(self, uri):
        key = (uri.scheme, uri.host, uri.port)
        endpoint = self._made.get(key)
        if endpoint is None:
            host = uri.host.decode("ascii")
            endpoint = HostnameEndpoint(self._reactor, host, uri.port, timeout=self._timeout)
            if uri.scheme == b"https":
                endpoint = wrapClientTLS(self._tls.creatorForNetloc(uri.host, uri.port), endpoint)
            self._made[key] = endpoint
        return endpoint


class Forwarder:
    """Sends requests to their owners over persistent connections.

    ``connect_timeout`` bounds each new connection; at most ``max_connections`` forwards to
    one node are open at once (an event stream holds its connection for as long as it lasts).
    Nothing else is bounded here: the owner's tool timeouts bound calls, and the router
    cancels a forward whose owner changed.
    """

    def __init__(self, reactor, envelope: Envelope, *, connect_timeout: float = 1.0, max_connections: int = 1024):
        self._envelope = envelope
        self.max_connections = max_connections
        self._pool = pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = 16
        pool.cachedConnectionTimeout = 60  # before the owner's 300 s: the edge closes idle ones
        pool.retryAutomatically = False  # retries are the router's, with the same nonce
        self._agent = Agent.usingEndpointFactory(reactor, _Endpoints(reactor, connect_timeout), pool=pool)
        self._open: dict[str, int] = {}

    def close(self) -> Deferred[None]:
        """Close the idle connections (the service stops); fires when they are closed."""
        return self._pool.closeCachedConnections()

    async def forward(
        self,
        request: "ProxyRequest",
        *,
        to: str,
        url: str,
        principal: "Principal",
        body: bytes,
        rid: str,
        nonce: str | None = None,
        rpc_id: Any = None,
        claim: bool = False,
    ) -> None:
        """Have node ``to`` at ``url`` (``http://host:port``) answer ``request`` for ``principal``;
        ``body`` is the request body, ``rid`` the request id.

        A retry of a lost forward passes its ``nonce``. ``rpc_id`` is the JSON-RPC id of a POST:
        if the owner is lost in the middle of an event stream answering it, the stream ends
        with an error for that id. ``claim`` asks the owner to claim the user.

        Raises a `ForwardFailed` (or `DuplicateForward` when the owner had already seen the
        nonce, or `TooManyForwards`) before writing anything; once the answer has begun, it is
        relayed to its end or until either side goes away. A client that goes away, or a
        cancelled forward (`mcproxy.web.http.cancel_on_deadline`), closes the upstream
        connection and raises CancelledError.
        """
        open_now = self._open.get(url, 0)
        if open_now >= self.max_connections:
            raise TooManyForwards(
                f"{open_now} requests to node {to} are open (cluster.max_forward_connections); try again shortly"
            )
        self._open[url] = open_now + 1
        try:
            await self._forward(request, to, url, principal, body, rid, nonce or new_nonce(), rpc_id, claim)
        finally:
            left = self._open[url] - 1
            if left:
                self._open[url] = left
            else:
                del self._open[url]

    async def _forward(self, request, to, url, principal, body, rid, nonce, rpc_id, claim) -> None:
        method, path = request.method, request.uri
        headers = Headers()
        given = request.requestHeaders
        for name in _REQUEST_HEADERS:
            values = given.getRawHeaders(name)
            if values:
                headers.setRawHeaders(name, values)
        headers.setRawHeaders(b"X-Request-Id", [rid.encode("ascii")])
        envelope = self._envelope.seal(
            to=to,
            principal=principal,
            client=getattr(request, "client_address", None),
            method=method,
            path=path,
            body=body,
            rid=rid,
            nonce=nonce,
            claim=claim,
        )
        headers.setRawHeaders(HEADER, [envelope])
        upstream = _Upstream(request)
        try:
            response = await upstream.wait(
                self._agent.request(method, url.encode("ascii") + path, headers, _Body(body) if body else None)
            )
        except (ConnectError, DNSLookupError, RequestNotSent) as e:
            raise OwnerUnreachable(f"cannot reach node {to}: {e.__class__.__name__}") from None
        except (ResponseNeverReceived, RequestTransmissionFailed):
            raise OwnerLost(f"node {to} went away before answering", nonce=nonce) from None
        if response.code in (409, 421, 503):
            collect = _Collect()
            response.deliverBody(collect)
            try:
                data = await upstream.wait(collect.done)
            except ResponseFailed:
                raise OwnerLost(f"node {to} went away while refusing", nonce=nonce) from None
            refusal = _refusal(response.code, data, to)
            if refusal is not None:
                raise refusal
            _relay_head(request, response)
            request.write(data)
            request.finish()
            return
        _relay_head(request, response)
        sse_lost = None
        if rpc_id is not None and response.headers.getRawHeaders(b"Content-Type", [b""])[0].startswith(
            b"text/event-stream"
        ):
            sse_lost = b"event: message\ndata: " + encode(error_message(rpc_id, OWNER_LOST, _LOST)) + b"\n\n"
        pipe = _Pipe(request, to, rid, sse_lost)
        response.deliverBody(pipe)
        await upstream.wait(pipe.done)


class _Upstream:
    """What the forward waits on. It is cancelled when the client goes away (or the caller
    cancels the forward), which closes the upstream connection and so ends the request on
    the owner; the forward then raises CancelledError, whatever the closed connection said."""

    def __init__(self, request):
        self._cancelled = False
        self._inner: Deferred | None = None
        self._waiting: Deferred | None = None
        request.notifyFinish().addErrback(self._client_gone)

    async def wait(self, deferred: Deferred) -> Any:
        self._inner = deferred
        waiting = self._waiting = Deferred(self._cancel)
        deferred.chainDeferred(waiting)
        try:
            return await waiting
        except Exception:
            if self._cancelled:
                raise CancelledError() from None
            raise
        finally:
            self._inner = self._waiting = None

    def _cancel(self, _waiting: Deferred) -> None:
        self._cancelled = True
        if self._inner is not None:
            self._inner.cancel()

    def _client_gone(self, _failure) -> None:
        if self._waiting is not None:
            self._waiting.cancel()


class _Reader(Protocol):
    """Reads the body of the owner's answer; cancelling ``done`` closes the upstream connection."""

    def __init__(self) -> None:
        self.done: Deferred = Deferred(self._cancel)

    def _cancel(self, _done: Deferred) -> None:
        upstream: Any = self.transport  # a `TransportProxyProducer`, idle once the answer is complete
        upstream.stopProducing()


class _Collect(_Reader):
    """Reads a short answer whole: the body of a refusal, to see its code."""

    def __init__(self) -> None:
        super().__init__()
        self._data: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self._data.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self._data))
        else:
            self.done.errback(reason)


class _Pipe(_Reader):
    """Writes the owner's answer into the client's response as it arrives. The owner's
    connection is the response's producer: it is paused while the client's buffer is full."""

    def __init__(self, request, to: str, rid: str, sse_lost: bytes | None):
        super().__init__()
        self._request = request
        self._to = to
        self._rid = rid
        #: The event that ends a POST's event stream when the owner is lost, None for others.
        self._sse_lost = sse_lost
        #: The last bytes relayed, to tell whether a lost stream stopped between two events.
        self._tail = b"\n\n"

    def connectionMade(self) -> None:
        self._request.registerProducer(self.transport, True)

    def dataReceived(self, data: bytes) -> None:
        self._request.write(data)
        if self._sse_lost is not None:
            self._tail = (self._tail + data[-4:])[-4:]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        request = self._request
        if request._disconnected:
            self.done.callback(None)
            return
        request.unregisterProducer()
        if reason.check(ResponseDone, PotentialDataLoss):
            request.finish()
        else:
            log.warn(
                "Lost node {node} in the middle of its answer to request {request_id}: {reason}",
                node=self._to,
                request_id=self._rid,
                reason=reason.getErrorMessage(),
            )
            if self._sse_lost is not None and self._tail.endswith((b"\n\n", b"\r\n\r\n", b"\r\r")):
                request.write(self._sse_lost)
                request.finish()
            else:
                request.loseConnection()  # unfinished: the client must not take it as complete
        self.done.callback(None)


def _relay_head(request, response) -> None:
    """The owner's status and the headers the client may see. From here the owner's time
    limit governs (an event stream has none); the edge's could only cut a relayed answer."""
    lift_deadline(request)
    request.setResponseCode(response.code, response.phrase)
    out = request.responseHeaders
    for name, values in response.headers.getAllRawHeaders():
        lower = name.lower()
        if lower in _RESPONSE_HEADERS or lower.startswith(b"access-control-"):
            out.setRawHeaders(name, values)


def _refusal(status: int, data: bytes, to: str) -> Exception | None:
    """The outcome of a 409, 421 or 503 answer that means the owner did not run the request
    (or had run it already), None for one to relay."""
    error: Any = None
    try:
        value = wirejson.loads(data)
    except (ValueError, RecursionError):
        value = None
    if isinstance(value, dict):
        error = value.get("error")
    if not isinstance(error, dict):
        error = {}
    code = error.get("code")
    if status == 421:
        owner = error.get("owner")
        return NotOwner(f"node {to} does not own this user", owner=owner if isinstance(owner, str) else None)
    if status == 503 and code in ("handing_over", "draining"):
        return OwnerDraining(f"node {to} is handing this user over")
    if status == 409 and code == "duplicate":
        return DuplicateForward()
    return None
