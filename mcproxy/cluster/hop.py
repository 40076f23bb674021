"""The HTTP/1.1 client of the internal hop: persistent connections to each node, one request
at a time on each, answers parsed just enough to relay them.

Twisted's ``Agent`` was half of what a forward cost the edge: a response object, a body
protocol, a producer proxy and several Deferreds per request, and headers parsed into
`Headers`. Here a request is one ``transport.write`` of bytes the caller formatted, and the
answer is handed to an `Answer` as it is parsed (status and header pairs, then body bytes),
with no Deferred of its own. The owner is trusted (it checked our signature), but its answer
is still bounded: a head over `MAX_HEAD` bytes or one that does not parse ends the
connection.
"""

from typing import Any
from typing import Protocol as Interface

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import BrowserLikePolicyForHTTPS

log = Logger()

#: The largest response head accepted (status line and headers).
MAX_HEAD = 64 * 1024
#: The longest chunk-size or trailer line accepted.
_MAX_LINE = 4096

# Where a connection is in its exchange.
_IDLE, _HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILER, _TO_CLOSE = range(8)


class BadAnswer(Exception):
    """The owner's answer is not HTTP/1.1 we accept (or its head is too big)."""


class Answer(Interface):
    """Whoever takes one answer from a `HopConnection`; called in this order: `head` once,
    `body` for each piece, then `end` once, unless `lost` comes first. A call may abort the
    connection (`HopConnection.abort`); no call follows then."""

    def head(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        """The status and the header pairs as sent (names in their own case)."""

    def body(self, data: bytes) -> None:
        """More of the body, transfer coding removed."""

    def end(self) -> None:
        """The answer is complete."""

    def lost(self, reason: Failure) -> None:
        """The connection ended first (or the answer could not be parsed)."""


class HopConnection(Protocol):
    """One persistent connection to a node, carrying one request at a time."""

    #: A TCP (or TLS) transport: a push producer that can be aborted.
    transport: Any

    def __init__(self, pool: "HopPool", node: "_Node"):
        self._pool = pool
        self._node = node
        self._state = _IDLE
        self._answer: Answer | None = None
        #: The answer completed by the read being parsed.
        self._done: Answer | None = None
        self._buffer = b""
        self._left = 0
        self._no_body = False
        self._reusable = False
        self._paused = False
        #: Fires when the connection is closed, for `HopPool.close` (made on demand).
        self._closed: Deferred[None] | None = None
        #: When the connection last became idle (`HopPool` closes it after a while).
        self.idle_since = 0.0

    def send(self, data: bytes, answer: Answer, *, no_body: bool = False) -> None:
        """Write a request (its head and body, already formatted) and give its answer to
        ``answer``; ``no_body``: the answer has none whatever its head says (``HEAD``)."""
        self._answer = answer
        self._state = _HEAD
        self._no_body = no_body
        self.transport.write(data)

    # IPushProducer, through whoever relays the answer to a slower consumer.

    def pause(self) -> None:
        """Read no more of the answer until `resume`."""
        if not self._paused:
            self._paused = True
            self.transport.pauseProducing()

    def resume(self) -> None:
        if self._paused:
            self._paused = False
            self.transport.resumeProducing()

    def abort(self) -> None:
        """Drop the answer and the connection at once (its reader went away): it is never
        used again, and the owner sees its request's client go."""
        self._answer = None
        self._state = _IDLE
        self._reusable = False
        self._pool.lost(self)  # at once: the pool must not hand it out before it is closed
        self.transport.abortConnection()

    # Protocol

    def dataReceived(self, data: bytes) -> None:
        if self._answer is None:
            self.abort()
            log.warn("Node {node} sent bytes on an idle connection", node=self._node.name)
            return
        try:
            data = self._parse(data)
        except BadAnswer as e:
            answer = self._answer
            self.abort()
            log.warn("Node {node} answered badly: {reason}", node=self._node.name, reason=str(e))
            if answer is not None:
                answer.lost(Failure(e))
            return
        done, self._done = self._done, None
        if done is None:
            return
        if data:
            self.abort()
            log.warn("Node {node} sent bytes after the end of an answer", node=self._node.name)
        elif self._reusable:
            self.resume()
            self._pool.release(self)
        else:
            self.transport.loseConnection()
        done.end()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.connected = False
        self._pool.lost(self)
        answer, self._answer = self._answer, None
        if answer is not None:
            if self._state == _TO_CLOSE:
                answer.end()
            else:
                answer.lost(reason)
        if self._closed is not None:
            self._closed.callback(None)

    def closed(self) -> Deferred[None]:
        """Close the connection; fires once it is closed."""
        self._closed = Deferred()
        self.transport.loseConnection()
        return self._closed

    # The answer

    def _parse(self, data: bytes) -> bytes:
        """Hand ``data`` to the answer, part by part, while it is wanted; what is left once
        it is complete (`_done`) or dropped."""
        if self._buffer:
            data, self._buffer = self._buffer + data, b""
        while data and self._answer is not None:
            state = self._state
            if state == _HEAD:
                data = self._head(data)
            elif state == _LENGTH:
                data = self._length(data)
            elif state == _TO_CLOSE:
                self._answer.body(data)
                return b""
            else:
                data = self._chunked(data, state)
        return data

    def _head(self, data: bytes) -> bytes:
        end = data.find(b"\r\n\r\n")
        if end < 0:
            if len(data) > MAX_HEAD:
                raise BadAnswer(f"a head of more than {MAX_HEAD} bytes")
            self._buffer = data
            return b""
        if end > MAX_HEAD:
            raise BadAnswer(f"a head of more than {MAX_HEAD} bytes")
        lines = data[:end].split(b"\r\n")
        version, _, rest = lines[0].partition(b" ")
        code, _, reason = rest.partition(b" ")
        if version not in (b"HTTP/1.1", b"HTTP/1.0") or len(code) != 3 or not code.isdigit():
            raise BadAnswer("no HTTP/1.x status line")
        status = int(code)
        headers = []
        length = chunked = None
        keep = version == b"HTTP/1.1"
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or not name or name[-1:] in (b" ", b"\t") or line[:1] in (b" ", b"\t"):
                raise BadAnswer("a header line that does not parse")
            value = value.strip(b" \t")
            lower = name.lower()
            if lower == b"content-length":
                if not value.isdigit() or (length is not None and int(value) != length):
                    raise BadAnswer("a bad Content-Length")
                length = int(value)
            elif lower == b"transfer-encoding":
                chunked = value.lower().rsplit(b",", 1)[-1].strip() == b"chunked"
            elif lower == b"connection":
                tokens = {token.strip() for token in value.lower().split(b",")}
                keep = b"close" not in tokens and (keep or b"keep-alive" in tokens)
            headers.append((name, value))
        rest_data = data[end + 4 :]
        if 100 <= status < 200:
            if status == 101:
                raise BadAnswer("an upgrade")
            return rest_data  # an interim answer: the real one follows
        self._reusable = keep
        if self._no_body or status in (204, 304):
            self._state, self._left = _LENGTH, 0
        elif chunked is not None:
            self._state = _CHUNK_SIZE if chunked else _TO_CLOSE
        elif length is not None:
            self._state, self._left = _LENGTH, length
        else:
            self._state = _TO_CLOSE
        if self._state == _TO_CLOSE:
            self._reusable = False
        assert self._answer is not None
        self._answer.head(status, reason, headers)
        if self._state == _LENGTH and self._left == 0 and self._answer is not None:
            self._complete()
        return rest_data

    def _split(self, data: bytes) -> tuple[bytes, bytes]:
        """The body bytes of ``data`` (at most the ``_left`` still due), counted, and the rest."""
        left = self._left
        piece, rest = (data, b"") if len(data) <= left else (data[:left], data[left:])
        self._left = left - len(piece)
        return piece, rest

    def _length(self, data: bytes) -> bytes:
        piece, data = self._split(data)
        assert self._answer is not None
        self._answer.body(piece)
        if self._left == 0 and self._answer is not None:
            self._complete()
        return data

    def _chunked(self, data: bytes, state: int) -> bytes:
        if state == _CHUNK_DATA:
            return self._length_of_chunk(data)
        if state == _CHUNK_END:
            if len(data) < 2:
                self._buffer = data
                return b""
            if data[:2] != b"\r\n":
                raise BadAnswer("a chunk not followed by CRLF")
            self._state = _CHUNK_SIZE
            return data[2:]
        eol = data.find(b"\r\n")
        if eol < 0:
            if len(data) > _MAX_LINE:
                raise BadAnswer("a chunk line that is too long")
            self._buffer = data
            return b""
        line, data = data[:eol], data[eol + 2 :]
        if state == _TRAILER:
            if not line:
                self._complete()
            return data
        size = line.partition(b";")[0].strip()
        try:
            self._left = int(size, 16)
        except ValueError:
            raise BadAnswer("a chunk size that is not hexadecimal") from None
        if self._left < 0 or size[:1] in (b"-", b"+"):
            raise BadAnswer("a chunk size that is not hexadecimal")
        self._state = _CHUNK_DATA if self._left else _TRAILER
        return data

    def _length_of_chunk(self, data: bytes) -> bytes:
        piece, data = self._split(data)
        if not self._left:
            self._state = _CHUNK_END
        assert self._answer is not None
        self._answer.body(piece)
        return data

    def _complete(self) -> None:
        """The answer is whole: it learns so once this read is parsed (`dataReceived`)."""
        self._done, self._answer = self._answer, None
        self._state = _IDLE


class _Node:
    """Where a node is, and its idle connections (the most recently used last)."""

    def __init__(self, name: str, endpoint: Any, host: bytes):
        self.name = name
        self.endpoint = endpoint
        #: The ``Host`` header line of every request to it.
        self.host_line = b"Host: " + host + b"\r\n"
        self.idle: list[HopConnection] = []
        self.sweep = None


class HopPool:
    """Persistent connections to the nodes, by URL (``http://host:port`` or ``https://``).

    A request takes the node's most recently used idle connection, or a new one made within
    ``connect_timeout`` seconds; at the end of a whole answer the connection is kept for the
    next request, up to ``max_idle`` per node, each closed after ``idle_timeout`` seconds
    unused (before the owner's own idle limit, so the edge closes first). How many
    connections may be busy at once is the caller's to bound.
    """

    def __init__(self, reactor, *, connect_timeout: float, max_idle: int = 16, idle_timeout: float = 60.0):
        self._reactor = reactor
        self.connect_timeout = connect_timeout
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self._nodes: dict[str, _Node] = {}
        self._tls = BrowserLikePolicyForHTTPS()
        self._closing = False

    def node(self, url: str) -> _Node:
        """The node at ``url``, made on first use."""
        node = self._nodes.get(url)
        if node is None:
            scheme, _, netloc = url.partition("://")
            host, _, port = netloc.rpartition(":")
            if scheme not in ("http", "https") or not port.isdigit() or not host:
                raise ValueError(f"not a node URL: {url!r}")
            name = host.strip("[]")
            endpoint: Any = HostnameEndpoint(self._reactor, name, int(port), timeout=self.connect_timeout)
            if scheme == "https":
                endpoint = wrapClientTLS(self._tls.creatorForNetloc(name.encode("idna"), int(port)), endpoint)
            node = self._nodes[url] = _Node(url, endpoint, netloc.encode("idna"))
        return node

    def idle_connection(self, node: _Node) -> HopConnection | None:
        """An idle connection to ``node``, if one is open."""
        return node.idle.pop() if node.idle else None

    async def new_connection(self, node: _Node) -> HopConnection:
        """A new connection to ``node``; raises the endpoint's `ConnectError` or a
        `twisted.internet.defer.TimeoutError` after ``connect_timeout`` seconds."""
        connecting = connectProtocol(node.endpoint, HopConnection(self, node))
        return await connecting.addTimeout(self.connect_timeout, self._reactor)

    def release(self, connection: HopConnection) -> None:
        """``connection`` finished an answer and may carry another request."""
        node = connection._node
        if self._closing or len(node.idle) >= self.max_idle:
            connection.transport.loseConnection()
            return
        connection.idle_since = self._reactor.seconds()
        node.idle.append(connection)
        if node.sweep is None:
            node.sweep = self._reactor.callLater(self.idle_timeout, self._sweep, node)

    def lost(self, connection: HopConnection) -> None:
        """``connection`` is closed: forget it."""
        idle = connection._node.idle
        if connection in idle:
            idle.remove(connection)

    def _sweep(self, node: _Node) -> None:
        """Close the connections idle for ``idle_timeout``; look again when the next one will be."""
        node.sweep = None
        expired = self._reactor.seconds() - self.idle_timeout
        while node.idle and node.idle[0].idle_since <= expired:
            node.idle.pop(0).transport.loseConnection()
        if node.idle:
            node.sweep = self._reactor.callLater(node.idle[0].idle_since - expired, self._sweep, node)

    def close(self) -> Deferred:
        """Close the idle connections (the service stops) and keep no more; fires once they are closed."""
        self._closing = True
        closing = []
        for node in self._nodes.values():
            if node.sweep is not None:
                node.sweep.cancel()
                node.sweep = None
            idle, node.idle = node.idle, []
            closing += [connection.closed() for connection in idle if connection.connected]
        return DeferredList(closing)
