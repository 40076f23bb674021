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

`Forwarder.fetch` uses the same connections and envelope for a request of this process's
own (another process's artifact), its answer read whole.
"""

from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mcproxy import wirejson
from mcproxy.cluster.envelope import HEADER, DuplicateForward, Envelope, new_nonce
from mcproxy.cluster.hop import BadAnswer, HopConnection, HopPool
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
_REQUEST_HEADERS = frozenset(
    name.lower()
    for name in (
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


class Forwarder:
    """Sends requests to their owners over persistent connections (`mcproxy.cluster.hop`).

    ``connect_timeout`` bounds each new connection; at most ``max_connections`` forwards to
    one node are open at once (an event stream holds its connection for as long as it lasts).
    Nothing else is bounded here: the owner's tool timeouts bound calls, and the router
    cancels a forward whose owner changed.
    """

    def __init__(self, reactor, envelope: Envelope, *, connect_timeout: float = 1.0, max_connections: int = 1024):
        self._envelope = envelope
        self._clock = reactor
        self.max_connections = max_connections
        # Idle connections close after 60 s, before the owner's 300 s: the edge closes first.
        self._pool = HopPool(reactor, connect_timeout=connect_timeout, max_idle=16, idle_timeout=60.0)
        self._open: dict[str, int] = {}

    def close(self) -> Deferred:
        """Close the idle connections (the service stops); fires when they are closed."""
        return self._pool.close()

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
        envelope = self._envelope.seal(
            to=to,
            principal=principal,
            client=request.client_address,
            method=method,
            path=path,
            body=body,
            rid=rid,
            nonce=nonce,
            claim=claim,
        )
        node = self._pool.node(url)
        head = [method, b" ", path, b" HTTP/1.1\r\n", node.host_line]
        for name, values in request.requestHeaders.getAllRawHeaders():
            if name.lower() in _REQUEST_HEADERS:
                for value in values:
                    if b"\r" not in value and b"\n" not in value:
                        head += (name, b": ", value, b"\r\n")
        if body or method in (b"POST", b"PUT", b"PATCH"):
            head += (b"Content-Length: ", b"%d" % len(body), b"\r\n")
        head += (b"X-Request-Id: ", rid.encode("ascii"), b"\r\n", HEADER, b": ", envelope, b"\r\n\r\n", body)
        connection = await self._connection(node, to)
        exchange = _Exchange(request, connection, to, rid, nonce, rpc_id)
        connection.send(b"".join(head), exchange, no_body=method == b"HEAD")
        await exchange.done

    async def fetch(
        self,
        *,
        to: str,
        url: str,
        principal: "Principal",
        path: bytes,
        limit: int,
        timeout: float,
        body: bytes | None = None,
    ) -> tuple[int, bytes]:
        """``GET path`` (``POST`` with a JSON ``body``) from node ``to`` at ``url`` for
        ``principal``, signed like a forward: (status, body), the answer read whole within
        ``timeout`` seconds (the caller's own request, not a client's: a paused or cut-off
        node may never answer).

        Raises `OwnerUnreachable` when no connection can be made, `BadAnswer` for a body
        over ``limit`` bytes (the connection is dropped), `defer.TimeoutError` when no whole
        answer came in time, or the reason the connection was lost before the answer ended.
        Cancelling it drops the connection.
        """
        fetching = Deferred.fromCoroutine(self._fetch(to, url, principal, path, limit, body))
        return await fetching.addTimeout(timeout, self._clock)

    async def _fetch(
        self, to: str, url: str, principal: "Principal", path: bytes, limit: int, body: bytes | None
    ) -> tuple[int, bytes]:
        rid = new_nonce()
        method = b"GET" if body is None else b"POST"
        sent = body or b""
        envelope = self._envelope.seal(
            to=to, principal=principal, client=None, method=method, path=path, body=sent, rid=rid
        )
        node = self._pool.node(url)
        head = [method, b" ", path, b" HTTP/1.1\r\n", node.host_line, b"X-Request-Id: ", rid.encode("ascii"), b"\r\n"]
        if body is not None:
            head += (b"Content-Type: application/json\r\nContent-Length: ", b"%d" % len(body), b"\r\n")
        connection = await self._connection(node, to)
        answer = _Collected(connection, limit)
        connection.send(b"".join((*head, HEADER, b": ", envelope, b"\r\n\r\n", sent)), answer)
        return await answer.done

    async def _connection(self, node, to: str) -> HopConnection:
        """An idle connection to ``node`` (node ``to``), or a new one; `OwnerUnreachable`."""
        connection = self._pool.idle_connection(node)
        if connection is None:
            try:
                connection = await self._pool.new_connection(node)
            except (ConnectError, DNSLookupError, defer.TimeoutError) as e:
                raise OwnerUnreachable(f"cannot reach node {to}: {e.__class__.__name__}") from None
        return connection


class _Collected:
    """A whole answer read into memory (a `mcproxy.cluster.hop.Answer`), at most ``limit``
    bytes of body: ``done`` fires with (status, body)."""

    def __init__(self, connection: HopConnection, limit: int):
        self.done: Deferred[tuple[int, bytes]] = Deferred(self._cancel)
        self._connection: HopConnection | None = connection
        self._limit = limit
        self._status = 0
        self._parts: list[bytes] = []
        self._size = 0

    def head(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        self._status = status

    def body(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > self._limit:
            self._cancel(self.done)
            self.done.errback(BadAnswer(f"a body of more than {self._limit} bytes"))
            return
        self._parts.append(data)

    def end(self) -> None:
        self._connection = None
        self.done.callback((self._status, b"".join(self._parts)))

    def lost(self, reason: Failure) -> None:
        self._connection = None
        self.done.errback(reason)

    def _cancel(self, _done: Deferred) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.abort()


#: Answers that may say the owner did not run the request (`_refusal`): read whole first.
_REFUSALS = frozenset({409, 421, 503})
#: The longest such answer held back: the owner's own refusals are short JSON bodies.
MAX_REFUSAL = 64 * 1024


@implementer(IPushProducer)
class _Exchange:
    """The owner's answer to one forward (a `mcproxy.cluster.hop.Answer`).

    A refusal (`_REFUSALS`) is read whole, to raise its outcome before anything is written
    to the client. Any other answer is relayed as it comes: the client's request is the
    consumer and this the producer, pausing the owner's connection while the client's buffer
    is full. ``done`` fires once the answer was relayed (or the client went away); cancelling
    it (the client left, or the time limit passed) drops the owner's connection, which ends
    the request there too.
    """

    def __init__(self, request, connection: HopConnection, to: str, rid: str, nonce: str, rpc_id: Any):
        self.done: Deferred[None] = Deferred(self._cancel)
        self._request = request
        self._connection: HopConnection | None = connection
        self._to = to
        self._rid = rid
        self._nonce = nonce
        self._rpc_id = rpc_id
        #: The refusal being read: its status, reason, headers and body so far.
        self._refusal: tuple[int, bytes, list] | None = None
        self._collected: list[bytes] = []
        self._held = 0
        self._relaying = False
        #: The event that ends a POST's event stream when the owner is lost, None for others.
        self._sse_lost: bytes | None = None
        #: The last bytes relayed, to tell whether a lost stream stopped between two events.
        self._tail = b"\n\n"

    # Answer

    def head(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        if status in _REFUSALS:
            self._refusal = (status, reason, headers)
            return
        self._start_relay(status, reason, headers)

    def _start_relay(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        content_type = _relay_head(self._request, status, reason, headers)
        if self._rpc_id is not None and content_type.startswith(b"text/event-stream"):
            lost = encode(error_message(self._rpc_id, OWNER_LOST, _LOST))
            self._sse_lost = b"event: message\ndata: " + lost + b"\n\n"
        self._relaying = True
        self._request.registerProducer(self, True)

    def body(self, data: bytes) -> None:
        if not self._relaying:
            self._collected.append(data)
            self._held += len(data)
            if self._held > MAX_REFUSAL:  # no refusal of ours is this long: relay it as it comes
                assert self._refusal is not None
                self._start_relay(*self._refusal)
                data, self._collected = b"".join(self._collected), []
            else:
                return
        self._request.write(data)
        if self._sse_lost is not None:
            self._tail = (self._tail + data[-4:])[-4:]

    def end(self) -> None:
        self._connection = None
        request = self._request
        if request.gone:
            self.done.callback(None)
            return
        if self._relaying:
            request.unregisterProducer()
            request.finish()
            self.done.callback(None)
            return
        assert self._refusal is not None
        status, reason, headers = self._refusal
        data = b"".join(self._collected)
        refusal = _refusal(status, data, self._to)
        if refusal is not None:
            self.done.errback(refusal)
            return
        _relay_head(request, status, reason, headers)
        request.write(data)
        request.finish()
        self.done.callback(None)

    def lost(self, reason: Failure) -> None:
        self._connection = None
        if not self._relaying:
            # Sent, but no answer began (or only a refusal did): it may have run.
            self.done.errback(OwnerLost(f"node {self._to} went away before answering", nonce=self._nonce))
            return
        request = self._request
        if request.gone:
            self.done.callback(None)
            return
        request.unregisterProducer()
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

    # IPushProducer, for the client's request

    def pauseProducing(self) -> None:
        if self._connection is not None:
            self._connection.pause()

    def resumeProducing(self) -> None:
        if self._connection is not None:
            self._connection.resume()

    def stopProducing(self) -> None:
        """The client's connection is gone."""
        if not self.done.called:
            self.done.cancel()

    def _cancel(self, _done: Deferred) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.abort()


def _relay_head(request, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    """Set the owner's status and the headers the client may see; the Content-Type. From
    here the owner's time limit governs (an event stream has none); the edge's could only
    cut a relayed answer."""
    lift_deadline(request)
    request.setResponseCode(status, reason)
    relayed: dict[bytes, list[bytes]] = {}
    content_type = b""
    for name, value in headers:
        lower = name.lower()
        if lower in _RESPONSE_HEADERS or lower.startswith(b"access-control-"):
            relayed.setdefault(lower, []).append(value)
            if lower == b"content-type":
                content_type = value
    out = request.responseHeaders
    for name, values in relayed.items():
        out.setRawHeaders(name, values)
    return content_type


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
