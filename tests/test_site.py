"""The HTTP front door: request ids, body limits, JSON errors, never HTML."""

import json

import pytest_twisted
import treq
from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from mcproxy.web.routes import Area, Route, Router
from mcproxy.web.site import ProxySite


async def boom(request):
    raise RuntimeError("a bug")


async def echo(request):
    return 200, {"size": len(request.content.read())}


def _router(handlers: dict) -> Router:
    """Each handler at ``/<name>``, for GET and POST."""
    return Router(
        {
            name.encode(): Area(tuple(Route(method, f"/{name}", handler) for method in (b"GET", b"POST")))
            for name, handler in handlers.items()
        }
    )


@pytest_twisted.async_yield_fixture
async def site_url():
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ServerEndpoint

    root = _router({"boom": boom, "echo": echo})
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(ProxySite(root, max_body_bytes=1000))
    yield f"http://127.0.0.1:{port.getHost().port}"
    await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_unknown_path_is_json_404_with_request_id(site_url):
    response = await treq.get(site_url + "/nowhere", persistent=False)
    assert response.code == 404
    assert response.headers.getRawHeaders("content-type") == ["application/json"]
    body = await response.json()
    assert body["error"]["code"] == "not_found" and "/nowhere" in body["error"]["message"]
    assert len(response.headers.getRawHeaders("x-request-id")[0]) == 32


@pytest_twisted.ensureDeferred
async def test_client_request_id_is_kept_when_sane(site_url):
    response = await treq.get(site_url + "/x", headers={"X-Request-Id": "abc-123"}, persistent=False)
    assert response.headers.getRawHeaders("x-request-id") == ["abc-123"]
    await response.content()
    response = await treq.get(site_url + "/x", headers={"X-Request-Id": "bad id\x01"}, persistent=False)
    assert response.headers.getRawHeaders("x-request-id") != ["bad id\x01"]
    await response.content()


@pytest_twisted.ensureDeferred
async def test_oversized_body_is_413_json(site_url):
    response = await treq.post(site_url + "/echo", data=b"x" * 5000, persistent=False)
    assert response.code == 413
    body = await response.json()
    assert body["error"]["code"] == "payload_too_large"


@pytest_twisted.ensureDeferred
async def test_body_within_limit_is_delivered(site_url):
    response = await treq.post(site_url + "/echo", data=b"x" * 1000, persistent=False)
    assert response.code == 200
    assert (await response.json()) == {"size": 1000}


@pytest_twisted.ensureDeferred
async def test_chunked_oversized_body_is_413(site_url):
    response = await treq.post(site_url + "/echo", data=_Producer([b"y" * 600, b"y" * 600]), persistent=False)
    assert response.code == 413


@pytest_twisted.ensureDeferred
async def test_bug_in_resource_is_json_500_without_traceback(site_url):
    response = await treq.get(site_url + "/boom", persistent=False)
    assert response.code == 500
    text = (await response.content()).decode()
    assert "Traceback" not in text and "<html" not in text.lower()
    assert json.loads(text)["error"]["code"] == "internal_error"


@implementer(IBodyProducer)
class _Producer:
    """A body producer of unknown length, so the request is sent chunked."""

    length = UNKNOWN_LENGTH

    def __init__(self, parts):
        self._parts = parts

    def startProducing(self, consumer):
        for part in self._parts:
            consumer.write(part)
        return succeed(None)

    def stopProducing(self):
        pass

    def pauseProducing(self):
        pass

    def resumeProducing(self):
        pass


class Hang:
    """Never answers; notes whether its work was cancelled."""

    def __init__(self):
        self.cancelled = False

    async def __call__(self, request):
        from twisted.internet.defer import CancelledError, Deferred

        try:
            await Deferred()
        except CancelledError:
            self.cancelled = True
            raise


class LateAnswer:
    """Answers when the test says so, through a Deferred of its own (as the admin API does)."""

    def __init__(self):
        self.release = None

    async def __call__(self, request):
        from twisted.internet.defer import Deferred

        from mcproxy.web.http import write_json

        self.release = Deferred()
        self.release.addCallback(lambda _: write_json(request, 200, {"late": True}))


class Stream:
    """An event stream, like ``GET /sse``."""

    def __init__(self, clock):
        self.clock = clock

    async def __call__(self, request):
        from mcproxy.web.sse import KeepAliveTimers, SseStream

        SseStream(request, KeepAliveTimers(self.clock), keepalive=15).start()


def _clocked_site(handlers, clock):
    """A site whose requests have 5 s to be answered on ``clock``."""
    from mcproxy.web.site import ConnectionLimits

    limits = ConnectionLimits(request_timeout=5.0, keepalive_timeout=3600.0, header_timeout=3600.0)
    return ProxySite(_router(handlers), max_body_bytes=1000, limits=limits, reactor=clock)


def _get(site, path: bytes):
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import StringTransport

    peer = IPv4Address("TCP", "127.0.0.1", 40000)
    channel = site.buildProtocol(peer)
    transport = StringTransport(peerAddress=peer)
    channel.makeConnection(transport)
    channel.dataReceived(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    return transport


def test_unanswered_request_is_504_json_and_its_work_cancelled():
    hang, clock = Hang(), Clock()
    site = _clocked_site({"hang": hang}, clock)
    transport = _get(site, b"/hang")
    clock.advance(4.9)
    assert transport.value() == b"" and not hang.cancelled
    clock.advance(0.1)
    head, body = transport.value().split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 504 ") and b"Content-Type: application/json" in head
    error = json.loads(body)["error"]
    assert error["code"] == "request_timeout" and "server.request_timeout" in error["message"]
    assert hang.cancelled


def test_a_late_answer_after_the_504_is_dropped_quietly():
    late, clock = LateAnswer(), Clock()
    site = _clocked_site({"late": late}, clock)
    transport = _get(site, b"/late")
    clock.advance(5)
    assert transport.value().startswith(b"HTTP/1.1 504 ")
    late.release.callback(None)
    assert b"late" not in transport.value()
    assert late.release.result is None  # no error in the answering chain


def test_an_event_stream_outlives_the_request_time_limit():
    clock = Clock()
    site = _clocked_site({"events": Stream(clock)}, clock)
    transport = _get(site, b"/events")
    for _ in range(4):  # a LoopingCall skips the beats a single long jump would miss
        clock.advance(15)
    written = transport.value()
    assert written.startswith(b"HTTP/1.1 200 ") and written.count(b"HTTP/1.1 ") == 1
    assert written.count(b": keep-alive") == 4 and not transport.disconnecting
