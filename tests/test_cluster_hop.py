"""The internal hop's HTTP/1.1 client over real loopback sockets, against owners that write
their answers byte for byte: framing, pieces split anywhere, bounds, reuse and idle expiry."""

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol

from mcproxy.cluster.hop import MAX_HEAD, BadAnswer, HopPool

WAIT = 15.0
"""Seconds any single step may take before the test gives up (a generous bound, not a measure)."""

REQUEST = b"GET /x HTTP/1.1\r\nHost: owner\r\n\r\n"


async def until(reactor, condition, what: str, seconds: float = WAIT):
    """Poll ``condition`` every 20 ms until it holds; fail naming ``what`` after ``seconds``."""
    from twisted.internet.task import deferLater

    deadline = reactor.seconds() + seconds
    while not condition():
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await deferLater(reactor, 0.02, lambda: None)


class Recorder:
    """An `Answer` that notes what it is given; ``finished`` fires at `end` or `lost`."""

    def __init__(self, on_body=None):
        self.status = None
        self.headers: list = []
        self.data = b""
        self.outcome: str | None = None
        self.reason = None
        self.finished: Deferred = Deferred()
        self._on_body = on_body

    def head(self, status, reason, headers):
        self.status, self.headers = status, headers

    def body(self, data):
        self.data += data
        if self._on_body is not None:
            self._on_body(self)

    def end(self):
        self.outcome = "end"
        self.finished.callback(None)

    def lost(self, reason):
        self.outcome, self.reason = "lost", reason
        self.finished.callback(None)


class ScriptedOwner(Protocol):
    """Answers the n-th request on its connection with ``answers[n]``, a list of pieces each
    written in a turn of its own (so the client reads them separately); None hangs up."""

    def __init__(self, owner):
        self.owner = owner
        self.received = b""
        self.answered = 0

    def connectionMade(self):
        self.owner.connections.append(self)

    def dataReceived(self, data):
        self.received += data
        while b"\r\n\r\n" in self.received:
            _, self.received = self.received.split(b"\r\n\r\n", 1)
            answer = self.owner.answers[self.answered]
            self.answered += 1
            if answer is None:
                self.transport.loseConnection()
                return
            self._write(list(answer))

    def _write(self, pieces):
        if pieces:
            self.transport.write(pieces.pop(0))
            self.owner.reactor.callLater(0.01, self._write, pieces)
        elif self.owner.close_after:
            self.transport.loseConnection()

    def connectionLost(self, reason):
        self.owner.closed += 1


class Owner(Factory):
    def __init__(self, reactor, answers, close_after=False):
        self.reactor = reactor
        self.answers = answers
        self.close_after = close_after
        self.connections: list[ScriptedOwner] = []
        self.closed = 0

    def buildProtocol(self, addr):
        return ScriptedOwner(self)


@pytest_twisted.async_yield_fixture()
async def owner(reactor):
    """``(owner factory, pool, url)``: set ``factory.answers`` before sending."""
    factory = Owner(reactor, [])
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    pool = HopPool(reactor, connect_timeout=5.0, max_idle=2, idle_timeout=0.3)
    yield factory, pool, f"http://127.0.0.1:{port.getHost().port}"
    await pool.close()
    for connection in factory.connections:
        connection.transport.abortConnection()
    await port.stopListening()


async def exchange(reactor, pool, url, answer=None):
    """Send `REQUEST` on an idle or new connection; the Recorder once its answer ended."""
    node = pool.node(url)
    connection = pool.idle_connection(node) or await pool.new_connection(node)
    answer = answer or Recorder()
    connection.send(REQUEST, answer)
    await answer.finished.addTimeout(WAIT, reactor)
    return answer


CHUNKED = [
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-",
    b"Encoding: chunked\r\nX-Two: a\r\nX-Two: b\r\n\r\n5\r",
    b"\nhello\r\n1",
    b"4;ext=1\r\n" + b"x" * 20 + b"\r",
    b"\n",
    b"0\r\nTrailer: t\r\n",
    b"\r\n",
]


@pytest_twisted.ensureDeferred
async def test_a_chunked_answer_split_anywhere_is_whole_and_the_connection_is_reused(reactor, owner):
    factory, pool, url = owner
    factory.answers = [CHUNKED, [b"HTTP/1.1 204 No Content\r\n\r\n"]]
    first = await exchange(reactor, pool, url)
    assert (first.outcome, first.status, first.data) == ("end", 200, b"hello" + b"x" * 20)
    assert (b"X-Two", b"a") in first.headers and (b"X-Two", b"b") in first.headers
    second = await exchange(reactor, pool, url)
    assert (second.outcome, second.status, second.data) == ("end", 204, b"")
    assert len(factory.connections) == 1 and factory.connections[0].answered == 2


@pytest_twisted.ensureDeferred
async def test_a_content_length_answer_read_in_pieces(reactor, owner):
    factory, pool, url = owner
    interim = b"HTTP/1.1 100 Continue\r\n\r\n"
    factory.answers = [[interim + b"HTTP/1.1 201 Created\r\nContent-Length: 10\r\n\r\n12345", b"67890"]]
    answer = await exchange(reactor, pool, url)
    assert (answer.outcome, answer.status, answer.data) == ("end", 201, b"1234567890")
    assert len(pool.node(url).idle) == 1


@pytest_twisted.ensureDeferred
async def test_an_answer_without_length_ends_with_its_connection(reactor, owner):
    factory, pool, url = owner
    factory.answers = [[b"HTTP/1.1 200 OK\r\n\r\nall of ", b"it"]]
    factory.close_after = True
    answer = await exchange(reactor, pool, url)
    assert (answer.outcome, answer.data) == ("end", b"all of it")
    assert not pool.node(url).idle


@pytest.mark.parametrize(
    "pieces",
    [
        [b"HTTP/1.1 200 OK\r\nX-Big: " + b"y" * MAX_HEAD],  # no end of head in sight
        [b"HTTP/1.1 200 OK\r\n" + b"X-Big: y\r\n" * (MAX_HEAD // 8) + b"\r\n"],
        [b"SSH-2.0-OpenSSH\r\n\r\n"],
        [b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n"],
        [b"HTTP/1.1 200 OK\r\n folded: no\r\n\r\n"],
        [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"],
        [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXY"],
    ],
)
@pytest_twisted.ensureDeferred
async def test_an_answer_that_does_not_parse_ends_the_connection(reactor, owner, pieces):
    factory, pool, url = owner
    factory.answers = [pieces]
    answer = await exchange(reactor, pool, url)
    assert answer.outcome == "lost" and answer.reason.check(BadAnswer)
    await until(reactor, lambda: factory.closed == 1, "the connection to close")
    assert not pool.node(url).idle


@pytest_twisted.ensureDeferred
async def test_bytes_after_the_end_of_an_answer_retire_its_connection(reactor, owner):
    factory, pool, url = owner
    factory.answers = [[b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA"]]
    answer = await exchange(reactor, pool, url)
    assert (answer.outcome, answer.data) == ("end", b"ok")
    await until(reactor, lambda: factory.closed == 1, "the connection to close")
    assert not pool.node(url).idle


@pytest_twisted.ensureDeferred
async def test_bytes_on_an_idle_connection_retire_it_at_once(reactor, owner):
    factory, _, url = owner
    factory.answers = [[b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", b"junk"]]
    pool = HopPool(reactor, connect_timeout=5.0, idle_timeout=WAIT * 4)  # no expiry meanwhile
    try:
        await exchange(reactor, pool, url)
        node = pool.node(url)
        await until(reactor, lambda: not node.idle, "the idle connection to be dropped")
        await until(reactor, lambda: factory.closed == 1, "the connection to close")
    finally:
        await pool.close()


@pytest_twisted.ensureDeferred
async def test_an_owner_that_hangs_up_is_lost_and_its_connection_forgotten(reactor, owner):
    factory, pool, url = owner
    factory.answers = [[b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"], None]
    await exchange(reactor, pool, url)
    answer = await exchange(reactor, pool, url)  # on the idle connection, which the owner drops
    assert answer.outcome == "lost" and answer.status is None
    assert not pool.node(url).idle


@pytest_twisted.ensureDeferred
async def test_a_connection_paused_as_its_answer_ends_is_resumed_for_the_next(reactor, owner):
    factory, pool, url = owner
    factory.answers = [[b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab", b"cd"]] * 2
    node = pool.node(url)
    connection = await pool.new_connection(node)
    # A consumer that fills up on the last piece pauses the connection and never resumes it.
    first = Recorder(on_body=lambda answer: connection.pause() if answer.data.endswith(b"cd") else None)
    connection.send(REQUEST, first)
    await first.finished.addTimeout(WAIT, reactor)
    second = await exchange(reactor, pool, url)
    assert second.data == b"abcd" and len(factory.connections) == 1


@pytest_twisted.ensureDeferred
async def test_idle_connections_are_bounded_and_closed_when_unused(reactor, owner):
    factory, pool, url = owner
    factory.answers = [[b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"]]
    node = pool.node(url)
    connections = [await pool.new_connection(node) for _ in range(3)]
    answers = [Recorder() for _ in connections]
    for connection, answer in zip(connections, answers, strict=True):
        connection.send(REQUEST, answer)
    for answer in answers:
        await answer.finished.addTimeout(WAIT, reactor)
    assert len(node.idle) == 2  # max_idle: the third was closed
    await until(reactor, lambda: factory.closed == 1, "the connection over max_idle to close")
    await until(reactor, lambda: factory.closed == 3, "the idle connections to time out")
    assert not node.idle and node.sweep is None


@pytest_twisted.ensureDeferred
async def test_close_closes_the_idle_connections_and_keeps_no_more(reactor, owner):
    factory, pool, url = owner
    factory.answers = [[b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"]]
    node = pool.node(url)
    await exchange(reactor, pool, url)
    busy = await pool.new_connection(node)
    await pool.close().addTimeout(WAIT, reactor)
    await until(reactor, lambda: factory.closed == 1, "the owner to see the idle connection close")
    answer = Recorder()
    busy.send(REQUEST, answer)
    await answer.finished.addTimeout(WAIT, reactor)
    assert answer.outcome == "end" and not node.idle
    await until(reactor, lambda: factory.closed == 2, "the busy connection to close once done")
