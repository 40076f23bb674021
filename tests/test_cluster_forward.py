"""The forwarder over real loopback sockets: an "owner" Site that opens the envelope, an
"edge" Site whose resource forwards every request to it, and clients of the edge."""

import hashlib
import json
import os

import attrs
import pytest
import pytest_twisted
from prometheus_client import CollectorRegistry
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from zope.interface import implementer

from mcproxy.auth.principal import Principal
from mcproxy.cluster.envelope import HEADER, DuplicateForward, Envelope, Forwarded
from mcproxy.cluster.forward import (
    MAX_REFUSAL,
    Forwarder,
    NotOwner,
    OwnerDraining,
    OwnerLost,
    OwnerUnreachable,
    TooManyForwards,
)
from mcproxy.errors import MCProxyError
from mcproxy.mcp.codes import OWNER_LOST
from mcproxy.web.http import cancel_on_deadline
from mcproxy.web.site import ConnectionLimits, ProxySite

SECRET = b"k" * 32
ALICE = Principal("alice", frozenset({"tools:*"}), token_id="tok_1", impersonator="root")
WAIT = 15.0
"""Seconds any single step may take before the test gives up (a generous bound, not a measure)."""


def within(deferred: Deferred, reactor, seconds: float = WAIT) -> Deferred:
    return deferred.addTimeout(seconds, reactor)


async def until(reactor, condition, what: str, seconds: float = WAIT):
    """Poll ``condition`` every 20 ms until it holds; fail naming ``what`` after ``seconds``."""
    from twisted.internet.task import deferLater

    deadline = reactor.seconds() + seconds
    while not condition():
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await deferLater(reactor, 0.02, lambda: None)


async def steady(reactor, probe, what: str, seconds: float = WAIT):
    """Poll ``probe`` every 0.1 s until it gives the same value three times running."""
    from twisted.internet.task import deferLater

    deadline = reactor.seconds() + seconds
    seen = [probe()]
    while len(seen) < 3 or len(set(seen[-3:])) > 1:
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last seen {seen[-3:]}")
        await deferLater(reactor, 0.1, lambda: None)
        seen.append(probe())
    return seen[-1]


@attrs.define
class Seen:
    """A request as the owner received it."""

    forwarded: Forwarded
    headers: dict
    body: bytes
    request: object


class Owner(Resource):
    """Opens the envelope, notes the request, and answers with the handler for its path."""

    isLeaf = True

    def __init__(self, reactor):
        super().__init__()
        self.envelope = Envelope(SECRET, "n1", reactor)
        self.handlers: dict = {}
        self.seen: list[Seen] = []

    def render(self, request):
        body = request.content.read()
        try:
            forwarded = self.envelope.open(
                request.getHeader(HEADER) or b"", method=request.method, path=request.uri, body=body
            )
        except MCProxyError as e:
            request.setResponseCode(e.http_status)
            request.setHeader(b"Content-Type", b"application/json")
            return json.dumps(e.to_json()).encode()
        headers = {name.lower(): values for name, values in request.requestHeaders.getAllRawHeaders()}
        self.seen.append(Seen(forwarded, headers, body, request))
        return self.handlers[request.path](request)


class Edge(Resource):
    """Forwards every request to ``world.target`` and notes how each forward ended."""

    isLeaf = True

    def __init__(self, world):
        super().__init__()
        self.world = world

    def render(self, request):
        world = self.world
        world.edge_requests.append(request)
        work = Deferred.fromCoroutine(
            world.forwarder.forward(
                request,
                to="n1",
                url=world.target,
                principal=ALICE,
                body=request.content.read(),
                rid="rid-1",
                **world.options,
            )
        )
        cancel_on_deadline(request, work)  # as the router does
        work.addCallbacks(world.outcomes.append, lambda failure: self._failed(request, failure))
        return NOT_DONE_YET

    def _failed(self, request, failure):
        self.world.outcomes.append(failure.value)
        if failure.check(MCProxyError) and not request._disconnected:
            assert not request.startedWriting, "an outcome was raised after the answer began"
            request.setResponseCode(599)
            request.write(json.dumps({"outcome": type(failure.value).__name__}).encode())
            request.finish()


class CountingSite(Site):
    """A Site that counts the connections it accepted."""

    accepted = 0

    def buildProtocol(self, addr):
        self.accepted += 1
        return super().buildProtocol(addr)


@attrs.define
class World:
    reactor: object
    owner: Owner
    owner_site: CountingSite
    owner_url: str
    edge_url: str
    forwarder: Forwarder
    target: str
    options: dict = attrs.Factory(dict)
    outcomes: list = attrs.Factory(list)
    edge_requests: list = attrs.Factory(list)
    edge_site: ProxySite | None = None

    def use(self, forwarder: Forwarder) -> None:
        """Forward with ``forwarder`` from now on (the fixture closes it)."""
        self.extra.append(self.forwarder)
        self.forwarder = forwarder

    extra: list = attrs.Factory(list)


@pytest_twisted.async_yield_fixture()
async def world(reactor):
    owner = Owner(reactor)
    owner_site = CountingSite(owner)
    owner_port = reactor.listenTCP(0, owner_site, interface="127.0.0.1")
    owner_url = f"http://127.0.0.1:{owner_port.getHost().port}"
    forwarder = Forwarder(reactor, Envelope(SECRET, "n2", reactor))
    w = World(reactor, owner, owner_site, owner_url, "", forwarder, owner_url)
    edge_site = ProxySite(Edge(w), max_body_bytes=16 * 1024 * 1024, registry=CollectorRegistry())
    w.edge_site = edge_site
    edge_port = reactor.listenTCP(0, edge_site, interface="127.0.0.1")
    w.edge_url = f"http://127.0.0.1:{edge_port.getHost().port}"
    yield w
    for f in [w.forwarder, *w.extra]:
        await f.close()
    for seen in owner.seen:  # whatever a test left hanging
        if not seen.request.finished and not seen.request._disconnected:
            seen.request.channel.transport.abortConnection()
    await edge_port.stopListening()
    await owner_port.stopListening()


def answer_json(request):
    request.setResponseCode(201)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Mcp-Session-Id", b"sess-1")
    request.setHeader(b"X-MCProxy-Node", b"n1")
    request.setHeader(b"Access-Control-Allow-Origin", b"https://app.example")
    request.setHeader(b"Access-Control-Expose-Headers", b"Mcp-Session-Id")
    request.setHeader(b"X-Internal-Only", b"not for clients")
    request.setHeader(b"Set-Cookie", b"owner=1")
    return b'{"ok":true}'


def event_stream(request):
    request.setHeader(b"Content-Type", b"text/event-stream")
    request.setHeader(b"Cache-Control", b"no-cache")
    request.setHeader(b"X-Accel-Buffering", b"no")


def sse_event(n: int) -> bytes:
    return b"event: message\ndata: " + json.dumps({"n": n}).encode() + b"\n\n"


@pytest_twisted.ensureDeferred
async def test_a_json_answer_is_relayed_with_its_status_and_headers(reactor, world, http_client):
    world.owner.handlers[b"/mcp"] = answer_json
    response = await within(
        http_client.post(
            world.edge_url + "/mcp?a=1&b=%2F",
            data=b'{"jsonrpc":"2.0","id":1,"method":"ping"}',
            headers={
                "Content-Type": "application/json",
                "Accept": "application/json, text/event-stream",
                "Authorization": "Bearer tok_1.secret",
                "Cookie": "session=abc",
                "Proxy-Authorization": "Basic eA==",
                "Mcp-Session-Id": "sess-1",
                "MCP-Protocol-Version": "2025-11-25",
                "X-Forwarded-For": "198.51.100.1",
                "Connection": "keep-alive, X-Hop",
                "X-Hop": "1",
                "TE": "trailers",
            },
        ),
        reactor,
    )
    assert response.code == 201
    assert await within(response.content(), reactor) == b'{"ok":true}'
    got = response.headers
    assert got.getRawHeaders(b"Content-Type") == [b"application/json"]
    assert got.getRawHeaders(b"Mcp-Session-Id") == [b"sess-1"]
    assert got.getRawHeaders(b"X-MCProxy-Node") == [b"n1"]
    assert got.getRawHeaders(b"Access-Control-Allow-Origin") == [b"https://app.example"]
    assert got.getRawHeaders(b"Access-Control-Expose-Headers") == [b"Mcp-Session-Id"]
    assert not got.hasHeader(b"X-Internal-Only") and not got.hasHeader(b"Set-Cookie")

    [seen] = world.owner.seen
    assert seen.forwarded.principal == ALICE and seen.forwarded.origin == "n2"
    assert seen.forwarded.rid == "rid-1" and seen.forwarded.client == "127.0.0.1"
    assert seen.request.uri == b"/mcp?a=1&b=%2F"
    sent = seen.headers
    for name in (b"authorization", b"cookie", b"proxy-authorization", b"x-forwarded-for", b"x-hop", b"te"):
        assert name not in sent, name
    assert sent[b"mcp-session-id"] == [b"sess-1"] and sent[b"mcp-protocol-version"] == [b"2025-11-25"]
    assert sent[b"content-type"] == [b"application/json"]
    assert sent[b"x-request-id"] == [b"rid-1"]
    assert world.outcomes == [None]


@pytest_twisted.ensureDeferred
async def test_an_8_mib_body_is_relayed_intact_both_ways(reactor, world, http_client):
    def echo(request):
        request.setHeader(b"Content-Type", b"application/octet-stream")
        return world.owner.seen[-1].body

    world.owner.handlers[b"/echo"] = echo
    body = os.urandom(8 * 1024 * 1024)
    response = await within(http_client.post(world.edge_url + "/echo", data=body), reactor)
    echoed = await within(response.content(), reactor)
    assert response.code == 200
    assert hashlib.sha256(world.owner.seen[0].body).digest() == hashlib.sha256(body).digest()
    assert len(echoed) == len(body) and echoed == body


@pytest_twisted.ensureDeferred
async def test_an_event_stream_is_relayed_as_it_is_produced(reactor, world, http_client):
    import treq

    release = Deferred()

    def stream(request):
        event_stream(request)
        request.write(sse_event(0))

        def rest(_):
            for n in range(1, 500):
                request.write(sse_event(n))
            request.finish()

        release.addCallback(rest)
        return NOT_DONE_YET

    world.owner.handlers[b"/sse"] = stream
    response = await within(http_client.get(world.edge_url + "/sse", unbuffered=True), reactor)
    assert response.headers.getRawHeaders(b"Content-Type") == [b"text/event-stream"]
    assert response.headers.getRawHeaders(b"X-Accel-Buffering") == [b"no"]
    received = []
    first = Deferred()

    def chunk(data):
        received.append(data)
        if not first.called and sse_event(0) in b"".join(received):
            first.callback(None)

    collected = treq.collect(response, chunk)
    await within(first, reactor)
    assert not world.owner.seen[0].request.finished  # the client has it before the owner is done
    assert world.edge_requests[0].deadline is None  # a relayed stream outlives the edge's time limit
    release.callback(None)
    await within(collected, reactor)
    assert b"".join(received) == b"".join(sse_event(n) for n in range(500))
    assert world.outcomes == [None]


@implementer(IPushProducer)
class Flood:
    """An owner's answer that writes as fast as its connection takes it, up to ``limit`` bytes."""

    CHUNK = b"x" * (256 * 1024)

    def __init__(self, reactor, request, limit: int):
        self.reactor = reactor
        self.request = request
        self.limit = limit
        self.written = 0
        self.paused = False
        self._call = None
        request.registerProducer(self, True)
        self._next()

    def _next(self):
        if self._call is None and not self.paused and self.written < self.limit:
            self._call = self.reactor.callLater(0, self._write)

    def _write(self):
        self._call = None
        self.written += len(self.CHUNK)
        self.request.write(self.CHUNK)  # may pause us at once
        self._next()

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False
        self._next()

    def stopProducing(self):
        self.paused = True
        if self._call is not None:
            self._call.cancel()
            self._call = None


class RawClient(Protocol):
    """Sends one request; can stop reading; notes what it received."""

    def __init__(self, request: bytes, stop_reading_at_first_byte: bool = False):
        self.request = request
        self.stop_reading = stop_reading_at_first_byte
        self.received = b""
        self.started: Deferred = Deferred()
        self.closed: Deferred = Deferred()

    def connectionMade(self):
        self.transport.write(self.request)

    def dataReceived(self, data):
        self.received += data
        if not self.started.called:
            if self.stop_reading:
                self.transport.pauseProducing()
            self.started.callback(None)

    def connectionLost(self, reason):
        self.closed.callback(None)


async def raw_client(reactor, url: str, request: bytes, **options) -> RawClient:
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

    port = int(url.rsplit(":", 1)[1])
    client = RawClient(request, **options)
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
    return client


@pytest_twisted.ensureDeferred
async def test_a_client_that_stops_reading_stops_the_owner(reactor, world):
    limit = 192 * 1024 * 1024
    floods = []

    def flood(request):
        event_stream(request)
        floods.append(Flood(reactor, request, limit))
        return NOT_DONE_YET

    world.owner.handlers[b"/flood"] = flood
    client = await raw_client(
        reactor, world.edge_url, b"GET /flood HTTP/1.1\r\nHost: edge\r\n\r\n", stop_reading_at_first_byte=True
    )
    await within(client.started, reactor)
    await until(reactor, lambda: floods, "the owner to answer")
    # Nothing reads: once the buffers on the way are full (a few MiB), the owner stays paused
    # and writes no more. Without back-pressure the edge would read on, resuming the owner
    # until it has written all it has.
    flooded = floods[0]
    await steady(reactor, lambda: (flooded.paused, flooded.written), "the owner to stop writing")
    assert flooded.paused and flooded.written < limit // 3, flooded.written
    client.transport.abortConnection()
    await within(client.closed, reactor)
    await until(reactor, lambda: world.owner.seen[0].request._disconnected, "the owner to see the client go")


@pytest.mark.parametrize("when", ["before the answer", "during the answer"])
@pytest_twisted.ensureDeferred
async def test_a_client_that_leaves_ends_the_request_on_the_owner(reactor, world, when):
    ended = []

    def hang(request):
        request.notifyFinish().addBoth(ended.append)
        if when == "during the answer":
            event_stream(request)
            request.write(sse_event(0))
        return NOT_DONE_YET

    world.owner.handlers[b"/hang"] = hang
    client = await raw_client(reactor, world.edge_url, b"GET /hang HTTP/1.1\r\nHost: edge\r\n\r\n")
    await until(reactor, lambda: world.owner.seen, "the owner to get the request")
    if when == "during the answer":
        await within(client.started, reactor)
        assert sse_event(0) in client.received or b"event" in client.received
    client.transport.loseConnection()
    await until(reactor, lambda: ended, "the owner's request to end")
    assert ended[0] is not None, "the owner's notifyFinish should fail: its client went away"
    await until(reactor, lambda: world.outcomes, "the forward to end")
    assert isinstance(world.outcomes[0], CancelledError)


@pytest_twisted.ensureDeferred
async def test_a_forward_cut_short_by_the_edge_time_limit_ends_the_request_on_the_owner(reactor, world, http_client):
    ended = []

    def hang(request):
        request.notifyFinish().addBoth(ended.append)
        return NOT_DONE_YET

    world.owner.handlers[b"/hang"] = hang
    world.edge_site.limits = ConnectionLimits(request_timeout=0.3)
    response = await within(http_client.post(world.edge_url + "/hang", data=b"{}"), reactor)
    assert response.code == 504 and (await response.json())["error"]["code"] == "request_timeout"
    await until(reactor, lambda: ended, "the owner's request to end")
    assert ended[0] is not None
    await until(reactor, lambda: world.outcomes, "the forward to end")
    assert isinstance(world.outcomes[0], CancelledError)


@pytest_twisted.ensureDeferred
async def test_connect_refused_is_owner_unreachable(reactor, world, http_client):
    port = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
    world.target = f"http://127.0.0.1:{port.getHost().port}"
    await port.stopListening()
    response = await within(http_client.post(world.edge_url + "/mcp", data=b"{}"), reactor)
    assert response.code == 599 and (await response.json()) == {"outcome": "OwnerUnreachable"}
    [outcome] = world.outcomes
    assert isinstance(outcome, OwnerUnreachable) and outcome.executed is False


def refusing(status: int, error: dict, headers=()):
    def handler(request):
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", b"application/json")
        for name, value in headers:
            request.setHeader(name, value)
        return json.dumps({"error": error}).encode()

    return handler


@pytest_twisted.ensureDeferred
async def test_421_is_not_owner_with_the_hint(reactor, world, http_client):
    world.owner.handlers[b"/mcp"] = refusing(421, {"code": "not_owner", "message": "no", "owner": "n3"})
    response = await within(http_client.post(world.edge_url + "/mcp", data=b"{}"), reactor)
    assert (await response.json()) == {"outcome": "NotOwner"}
    [outcome] = world.outcomes
    assert isinstance(outcome, NotOwner) and outcome.owner == "n3" and outcome.executed is False


@pytest_twisted.ensureDeferred
async def test_421_without_a_hint_is_still_not_owner(reactor, world, http_client):
    world.owner.handlers[b"/mcp"] = lambda request: (request.setResponseCode(421), b"misdirected")[1]
    await within(http_client.post(world.edge_url + "/mcp", data=b"{}"), reactor)
    [outcome] = world.outcomes
    assert isinstance(outcome, NotOwner) and outcome.owner is None


@pytest_twisted.ensureDeferred
async def test_503_handing_over_is_owner_draining(reactor, world, http_client):
    world.owner.handlers[b"/mcp"] = refusing(503, {"code": "handing_over", "message": "moving"})
    await within(http_client.post(world.edge_url + "/mcp", data=b"{}"), reactor)
    [outcome] = world.outcomes
    assert isinstance(outcome, OwnerDraining)


@pytest_twisted.ensureDeferred
async def test_other_refusals_are_relayed(reactor, world, http_client):
    world.owner.handlers[b"/full"] = refusing(503, {"code": "server_full", "message": "full"}, [(b"Retry-After", b"1")])
    world.owner.handlers[b"/conflict"] = refusing(409, {"code": "conflict", "message": "no"})
    response = await within(http_client.post(world.edge_url + "/full", data=b"{}"), reactor)
    assert response.code == 503 and response.headers.getRawHeaders(b"Retry-After") == [b"1"]
    assert (await response.json())["error"]["code"] == "server_full"
    response = await within(http_client.post(world.edge_url + "/conflict", data=b"{}"), reactor)
    assert response.code == 409 and (await response.json())["error"]["code"] == "conflict"
    assert world.outcomes == [None, None]
    # A long one is no refusal of ours: relayed as it comes, never held whole.
    long_message = "x" * (3 * MAX_REFUSAL)
    world.owner.handlers[b"/long"] = refusing(503, {"code": "unavailable", "message": long_message})
    response = await within(http_client.post(world.edge_url + "/long", data=b"{}"), reactor)
    assert response.code == 503 and (await response.json())["error"]["message"] == long_message


@pytest_twisted.ensureDeferred
async def test_a_retry_with_the_same_nonce_is_refused_as_a_duplicate(reactor, world, http_client):
    world.owner.handlers[b"/mcp"] = answer_json
    world.options = {"nonce": "AAAAAAAAAAAAAAAAAAAAAA"}
    first = await within(http_client.post(world.edge_url + "/mcp", data=b"{}"), reactor)
    assert first.code == 201
    second = await within(http_client.post(world.edge_url + "/mcp", data=b"{}"), reactor)
    assert (await second.json()) == {"outcome": "DuplicateForward"}
    assert world.outcomes[0] is None and isinstance(world.outcomes[1], DuplicateForward)
    assert len(world.owner.seen) == 1


class HangUpAfterRequest(Protocol):
    """An owner that dies once it has read a request: nothing is ever answered."""

    def dataReceived(self, data):
        if b"\r\n\r\n" in data:
            self.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_an_owner_that_dies_before_answering_is_owner_lost(reactor, world, http_client):
    port = reactor.listenTCP(0, Factory.forProtocol(HangUpAfterRequest), interface="127.0.0.1")
    world.target = f"http://127.0.0.1:{port.getHost().port}"
    world.options = {"nonce": "QUJDREVGR0hJSktMTU5PUA"}
    try:
        response = await within(http_client.post(world.edge_url + "/mcp", data=b"{}"), reactor)
    finally:
        await port.stopListening()
    assert (await response.json()) == {"outcome": "OwnerLost"}
    [outcome] = world.outcomes
    assert isinstance(outcome, OwnerLost) and outcome.executed is None
    assert outcome.nonce == "QUJDREVGR0hJSktMTU5PUA"  # what a retry must send again


class AnswerOnceThenHangUp(Protocol):
    """An owner that answers the first request on its connection and hangs up on the next,
    as when it dies while the connection sits idle in the edge's pool."""

    def __init__(self):
        self.answered = False

    def dataReceived(self, data):
        if b"\r\n\r\n" not in data:
            return
        if self.answered:
            self.transport.loseConnection()
        else:
            self.answered = True
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


@pytest_twisted.ensureDeferred
async def test_a_pooled_connection_lost_before_answering_is_owner_lost_and_never_reused(reactor, world, http_client):
    factory = CountingFactory.forProtocol(AnswerOnceThenHangUp)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    world.target = f"http://127.0.0.1:{port.getHost().port}"
    try:
        first = await within(http_client.post(world.edge_url + "/mcp", data=b"{}"), reactor)
        assert first.code == 200 and await first.content() == b"ok"
        world.options = {"nonce": "QUJDREVGR0hJSktMTU5PUA"}
        second = await within(http_client.post(world.edge_url + "/mcp", data=b"{}"), reactor)
        assert (await second.json()) == {"outcome": "OwnerLost"}
        third = await within(http_client.post(world.edge_url + "/mcp", data=b"{}"), reactor)
        assert third.code == 200
    finally:
        await port.stopListening()
    assert world.outcomes[0] is None and world.outcomes[2] is None
    lost = world.outcomes[1]
    assert isinstance(lost, OwnerLost) and lost.nonce == "QUJDREVGR0hJSktMTU5PUA"
    assert factory.accepted == 2  # the first connection, then a new one after the loss


class CountingFactory(Factory):
    """A Factory that counts the connections it accepted."""

    accepted = 0

    def buildProtocol(self, addr):
        self.accepted += 1
        return super().buildProtocol(addr)


def dies_mid_answer(first: bytes, content_type: bytes, length: bytes | None = None):
    def handler(request):
        request.setHeader(b"Content-Type", content_type)
        if length is not None:
            request.setHeader(b"Content-Length", length)
        request.write(first)
        request.channel.transport.loseConnection()  # after what was written, without the end
        return NOT_DONE_YET

    return handler


@pytest_twisted.ensureDeferred
async def test_an_owner_lost_mid_stream_ends_a_post_stream_with_an_error_for_its_id(reactor, world, http_client):
    world.owner.handlers[b"/mcp"] = dies_mid_answer(sse_event(0), b"text/event-stream")
    world.options = {"rpc_id": 7}
    response = await within(http_client.post(world.edge_url + "/mcp", data=b"{}"), reactor)
    body = await within(response.content(), reactor)  # a complete response
    assert body.startswith(sse_event(0))
    last = body[len(sse_event(0)) :]
    assert last.startswith(b"event: message\ndata: ") and last.endswith(b"\n\n")
    message = json.loads(last[len(b"event: message\ndata: ") :])
    assert message["id"] == 7 and message["error"]["code"] == OWNER_LOST
    assert "owner_lost" in message["error"]["message"]
    assert world.outcomes == [None]


@pytest.mark.parametrize(
    ("first", "content_type", "length", "rpc_id"),
    [
        (b'{"jsonrpc":"2.0",', b"application/json", b"100", 7),  # a JSON answer cut short
        (b'{"jsonrpc":"2.0",', b"application/json", None, 7),
        (b"event: message\ndata: {", b"text/event-stream", None, 7),  # mid-event: no boundary
        (sse_event(0), b"text/event-stream", None, None),  # a GET stream: no request id
    ],
)
@pytest_twisted.ensureDeferred
async def test_an_owner_lost_mid_answer_leaves_the_answer_visibly_unfinished(
    reactor, world, http_client, first, content_type, length, rpc_id
):
    from twisted.web.client import ResponseFailed

    world.owner.handlers[b"/mcp"] = dies_mid_answer(first, content_type, length)
    world.options = {"rpc_id": rpc_id}
    response = await within(http_client.post(world.edge_url + "/mcp", data=b"{}"), reactor)
    assert response.code == 200
    with pytest.raises(ResponseFailed):
        await within(response.content(), reactor)
    assert world.outcomes == [None]


@pytest_twisted.ensureDeferred
async def test_sequential_forwards_reuse_one_connection(reactor, world, http_client):
    world.owner.handlers[b"/mcp"] = answer_json
    for _ in range(5):
        response = await within(http_client.post(world.edge_url + "/mcp", data=b"{}"), reactor)
        assert response.code == 201
        await response.content()
    response = await within(http_client.get(world.edge_url + "/mcp"), reactor)
    await response.content()
    assert len(world.owner.seen) == 6
    assert world.owner_site.accepted == 1


@pytest_twisted.ensureDeferred
async def test_forwards_to_one_node_are_bounded(reactor, world, http_client):
    world.use(Forwarder(reactor, Envelope(SECRET, "n2", reactor), max_connections=1))
    world.owner.handlers[b"/hang"] = lambda request: NOT_DONE_YET
    client = await raw_client(reactor, world.edge_url, b"GET /hang HTTP/1.1\r\nHost: edge\r\n\r\n")
    await until(reactor, lambda: world.owner.seen, "the first forward to arrive")
    response = await within(http_client.post(world.edge_url + "/hang", data=b"{}"), reactor)
    assert (await response.json()) == {"outcome": "TooManyForwards"}
    assert isinstance(world.outcomes[0], TooManyForwards) and world.outcomes[0].http_status == 503
    client.transport.loseConnection()
    await until(reactor, lambda: len(world.outcomes) == 2, "the first forward to end")
    world.owner.handlers[b"/mcp"] = answer_json
    response = await within(http_client.post(world.edge_url + "/mcp", data=b"{}"), reactor)
    assert response.code == 201  # the slot is free again
