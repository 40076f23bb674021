"""Slow and greedy clients lose their connection: read deadlines, idle keep-alive, the per-address cap.

The socket tests use small configured limits and only assert that the server acts within
the limit plus a generous slack; the deadline bookkeeping itself runs on a `Clock`.
"""

import json

import pytest
import pytest_twisted
from prometheus_client import CollectorRegistry
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock, LoopingCall, deferLater
from twisted.internet.testing import StringTransport

from mcproxy.errors import TooManyConnections
from mcproxy.web.network import networks
from mcproxy.web.routes import Area, Route, Router
from mcproxy.web.site import ConnectionLimits, ProxySite, address_group

SLACK = 5.0
"""Seconds granted beyond a configured limit before a test calls the server too late."""


async def echo(request):
    return 200, {"size": len(request.content.read())}


_ECHO = Router({b"echo": Area(tuple(Route(method, "/echo", echo) for method in (b"GET", b"POST")))})


def _site(limits: ConnectionLimits, clock=None, registry=None) -> ProxySite:
    kwargs = {"reactor": clock} if clock is not None else {}
    return ProxySite(_ECHO, max_body_bytes=1000, limits=limits, registry=registry, **kwargs)


def _dropped(registry: CollectorRegistry, reason: str) -> float:
    return registry.get_sample_value("mcproxy_connections_dropped_total", {"reason": reason}) or 0.0


class RawClient(Protocol):
    """A TCP client that sends what the test says and keeps all it receives."""

    def __init__(self):
        self.received = b""
        self.closed: Deferred = Deferred()

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.closed.callback(self.received)


@pytest_twisted.async_yield_fixture
async def serve():
    """``await serve(limits)`` -> (site, port number, its registry); stopped after the test."""
    from twisted.internet import reactor

    ports = []

    async def start(limits: ConnectionLimits):
        registry = CollectorRegistry()
        site = _site(limits, registry=registry)
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        ports.append(port)
        return site, port.getHost().port, registry

    yield start
    for port in ports:
        await port.stopListening()


async def _connect(port: int) -> RawClient:
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

    client = RawClient()
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
    return client


async def _closed_within(client: RawClient, seconds: float) -> bytes:
    """What the client received until the server closed the connection (TimeoutError if it did not)."""
    from twisted.internet import reactor

    return await client.closed.addTimeout(seconds, reactor)


def _json_body(response: bytes) -> dict:
    return json.loads(response.split(b"\r\n\r\n", 1)[1])


@pytest_twisted.ensureDeferred
async def test_a_client_dribbling_its_headers_is_cut_off(serve):
    _site, port, registry = await serve(ConnectionLimits(header_timeout=1.0, keepalive_timeout=60.0))
    client = await _connect(port)
    # One byte every 0.1 s: each byte restarts Twisted's idle timer, never the head deadline.
    head = iter(b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Filler: " + b"a" * 10_000)
    dribble = LoopingCall(lambda: client.transport.write(bytes([next(head)])))
    dribble.start(0.1)
    try:
        received = await _closed_within(client, 1.0 + SLACK)
    finally:
        dribble.stop()
    assert received.startswith(b"HTTP/1.1 408 ")
    error = _json_body(received)["error"]
    assert error["code"] == "request_too_slow" and "server.header_timeout" in error["message"]
    assert _dropped(registry, "header_timeout") == 1


@pytest_twisted.ensureDeferred
async def test_a_body_that_never_completes_is_cut_off(serve):
    _site, port, registry = await serve(ConnectionLimits(header_timeout=60.0, body_timeout=1.0))
    client = await _connect(port)
    client.transport.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
    received = await _closed_within(client, 1.0 + SLACK)
    assert received.startswith(b"HTTP/1.1 408 ")
    assert "server.body_timeout" in _json_body(received)["error"]["message"]
    assert _dropped(registry, "body_timeout") == 1


@pytest_twisted.ensureDeferred
async def test_an_idle_keepalive_connection_is_closed(serve):
    _site, port, _ = await serve(ConnectionLimits(keepalive_timeout=0.5))
    client = await _connect(port)
    client.transport.write(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
    received = await _closed_within(client, 0.5 + SLACK)
    assert received.startswith(b"HTTP/1.1 200 ") and received.endswith(b'{"size":0}')


@pytest_twisted.ensureDeferred
async def test_the_65th_connection_from_one_address_is_refused(serve):
    from twisted.internet import reactor

    site, port, registry = await serve(ConnectionLimits(header_timeout=60.0, max_per_address=64))
    clients = [await _connect(port) for _ in range(64)]
    extra = await _connect(port)
    received = await _closed_within(extra, SLACK)
    assert received.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"\r\nRetry-After: 1\r\n" in received
    error = _json_body(received)["error"]
    assert error["code"] == "too_many_connections" and "server.max_connections_per_address" in error["message"]
    assert _dropped(registry, "over_address_cap") == 1
    assert not any(c.closed.called for c in clients)

    # One goes away: there is room for one more again.
    clients.pop().transport.loseConnection()
    for _ in range(int(SLACK / 0.05)):
        if site.connections[address_group("127.0.0.1")] < 64:
            break
        await deferLater(reactor, 0.05, lambda: None)
    again = await _connect(port)
    again.transport.write(b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert (await _closed_within(again, SLACK)).startswith(b"HTTP/1.1 200 ")
    for client in clients:
        client.transport.loseConnection()


def test_the_cap_counts_ipv6_per_64_and_exempts_trusted_proxies():
    site = _site(ConnectionLimits(max_per_address=2, uncapped=networks(["10.0.0.0/8"])), clock=Clock())
    assert site.open_connection("2001:db8::1") == site.open_connection("2001:db8::ffff:2")
    with pytest.raises(TooManyConnections):
        site.open_connection("2001:db8::3")  # the same /64
    assert site.open_connection("2001:db8:0:1::1") is not None  # the next /64
    v4 = site.open_connection("192.0.2.1")
    assert site.open_connection("::ffff:192.0.2.1") == v4  # IPv4-mapped is the IPv4 address
    with pytest.raises(TooManyConnections):
        site.open_connection("192.0.2.1")
    for _ in range(10):
        assert site.open_connection("10.1.2.3") is None  # a trusted proxy: not counted at all
    assert site.open_connection(None) is None  # a Unix socket
    site.close_connection(v4)
    assert site.open_connection("192.0.2.1") == v4


_PEER = IPv4Address("TCP", "192.0.2.7", 40000)


def _channel(site: ProxySite, peer=_PEER):
    channel = site.buildProtocol(peer)
    transport = StringTransport(peerAddress=peer)
    channel.makeConnection(transport)
    return channel, transport


def test_the_head_deadline_runs_from_the_first_byte_not_from_each_byte():
    clock = Clock()
    site = _site(ConnectionLimits(header_timeout=10.0, body_timeout=30.0, keepalive_timeout=60.0), clock=clock)
    channel, transport = _channel(site)
    for byte in b"GET /echo HTTP/1.1\r\nHost: x\r\n":
        channel.dataReceived(bytes([byte]))
        clock.advance(0.25)  # 31 bytes in 7.75 s: in time
    channel.dataReceived(b"\r\n")
    assert transport.value().startswith(b"HTTP/1.1 200 ") and not transport.disconnecting
    transport.clear()

    clock.advance(50)  # idle between requests: the keep-alive limit applies, not the head's
    assert not transport.disconnecting
    channel.dataReceived(b"G")  # the next request's first byte starts its clock
    clock.advance(9.9)
    channel.dataReceived(b"ET /echo HTTP/1.1\r\n")
    assert not transport.disconnecting
    clock.advance(0.1)
    assert transport.value().startswith(b"HTTP/1.1 408 ") and transport.disconnecting


def test_a_new_connection_must_send_its_head_in_time():
    clock = Clock()
    site = _site(ConnectionLimits(header_timeout=10.0, keepalive_timeout=60.0), clock=clock)
    channel, transport = _channel(site, IPv6Address("TCP", "2001:db8::5", 40000))
    clock.advance(10)
    assert transport.value().startswith(b"HTTP/1.1 408 ") and transport.disconnecting
    channel.connectionLost(None)
    assert site.connections == {}


def test_the_body_deadline_runs_from_the_end_of_the_head():
    clock = Clock()
    site = _site(ConnectionLimits(header_timeout=10.0, body_timeout=30.0, keepalive_timeout=60.0), clock=clock)
    channel, transport = _channel(site)
    channel.dataReceived(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\n")
    clock.advance(20)  # past the head's limit, inside the body's
    channel.dataReceived(b"ab")
    clock.advance(9)
    channel.dataReceived(b"cd")
    assert transport.value().startswith(b"HTTP/1.1 200 ") and transport.value().endswith(b'{"size":4}')

    transport.clear()
    channel.dataReceived(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n")
    clock.advance(30)
    assert transport.value().startswith(b"HTTP/1.1 408 ") and transport.disconnecting
