"""The routing layer itself: 404, 405 with Allow, preflights, cancel on disconnect, request state."""

import json

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.http import _DataLoss

from mcproxy.auth.admission import Admission
from mcproxy.auth.principal import Principal
from mcproxy.config import Config
from mcproxy.web.origins import OriginPolicy
from mcproxy.web.routes import MCP_ORIGINS, Area, Route, Router
from mcproxy.web.site import ProxyRequest, ProxySite, RequestState


class Handlers:
    def __init__(self):
        self.cancelled = False
        self.audited = []

    async def hello(self, request, name):
        return 200, {"hello": name, "user": request.principal.user_id if request.principal else None}

    async def hang(self, request):
        try:
            await Deferred()
        except CancelledError:
            self.cancelled = True
            raise


async def _alice(request):
    return Principal("alice", frozenset({"tools:*"}))


@pytest.fixture
def served():
    handlers, clock = Handlers(), Clock()
    config = Config().replace(cors={"allowed_origins": ["https://ide.example"]})
    router = Router(
        {
            b"hello": Area(
                (
                    Route(b"GET", r"/hello/(?P<name>[^/]+)", handlers.hello, auth="mcp"),
                    Route(b"PUT", r"/hello/(?P<name>[^/]+)", handlers.hello, auth="admin", permission="admin"),
                ),
                origins=MCP_ORIGINS,
                method_separator=" or ",
            ),
            b"hang": Area((Route(b"GET", "/hang", handlers.hang),)),
        },
        origins=OriginPolicy(config, allow_loopback=True),
        authenticate=Admission(_alice).authenticate,
        audit=lambda *record: handlers.audited.append(record),
    )
    site = ProxySite(router, max_body_bytes=1000, reactor=clock)
    return site, handlers


def _send(site, head: bytes):
    peer = IPv4Address("TCP", "127.0.0.1", 40000)
    channel = site.buildProtocol(peer)
    transport = StringTransport(peerAddress=peer)
    channel.makeConnection(transport)
    channel.dataReceived(head)
    return channel, transport


def _answer(transport) -> tuple[bytes, dict]:
    head, body = transport.value().split(b"\r\n\r\n", 1)
    return head, json.loads(body) if body else {}


def test_a_route_gets_its_path_parts_and_the_caller(served):
    site, _ = served
    _, transport = _send(site, b"GET /hello/bob HTTP/1.1\r\nHost: localhost\r\n\r\n")
    head, body = _answer(transport)
    assert head.startswith(b"HTTP/1.1 200 ") and body == {"hello": "bob", "user": "alice"}


def test_unknown_paths_are_a_json_404(served):
    site, _ = served
    for path in (b"/nowhere", b"/hello", b"/hello/a/b"):
        _, transport = _send(site, b"GET " + path + b" HTTP/1.1\r\nHost: localhost\r\n\r\n")
        head, body = _answer(transport)
        assert head.startswith(b"HTTP/1.1 404 ") and body["error"]["code"] == "not_found"


def test_a_known_path_with_another_method_is_405_with_allow(served):
    site, _ = served
    _, transport = _send(site, b"DELETE /hello/bob HTTP/1.1\r\nHost: localhost\r\n\r\n")
    head, body = _answer(transport)
    assert head.startswith(b"HTTP/1.1 405 ") and b"Allow: GET, PUT" in head
    assert body["error"]["message"] == "DELETE is not allowed here; use GET or PUT"


def test_a_missing_permission_is_403(served):
    site, _ = served
    _, transport = _send(site, b"PUT /hello/bob HTTP/1.1\r\nHost: localhost\r\n\r\n")
    head, body = _answer(transport)
    assert head.startswith(b"HTTP/1.1 403 ") and "'admin'" in body["error"]["message"]


def test_preflights_of_a_trusted_origin_are_answered_and_others_refused(served):
    site, _ = served
    _, transport = _send(site, b"OPTIONS /hello/bob HTTP/1.1\r\nHost: localhost\r\nOrigin: https://ide.example\r\n\r\n")
    head = transport.value()
    assert head.startswith(b"HTTP/1.1 204 ") and b"Access-Control-Allow-Methods: GET, PUT" in head
    assert b"Access-Control-Allow-Origin: https://ide.example" in head
    _, transport = _send(
        site, b"OPTIONS /hello/bob HTTP/1.1\r\nHost: localhost\r\nOrigin: https://evil.example\r\n\r\n"
    )
    head, body = _answer(transport)
    assert head.startswith(b"HTTP/1.1 403 ") and body["error"]["code"] == "origin_not_allowed"


def test_a_foreign_host_is_refused_before_the_route(served):
    site, _ = served
    _, transport = _send(site, b"GET /hello/bob HTTP/1.1\r\nHost: rebound.example\r\n\r\n")
    head, body = _answer(transport)
    assert head.startswith(b"HTTP/1.1 403 ") and body["error"]["code"] == "host_not_allowed"


def test_the_client_going_away_cancels_the_handler(served):
    site, handlers = served
    channel, _ = _send(site, b"GET /hang HTTP/1.1\r\nHost: x\r\n\r\n")
    assert not handlers.cancelled
    channel.connectionLost(Failure(_DataLoss()))
    assert handlers.cancelled


def test_the_request_state_is_declared_once_with_defaults():
    names = ("request_id", "client_address", "principal", "deadline", "work", "on_deadline", "challenge")
    assert all(getattr(RequestState, name) is None for name in names)
    assert issubclass(ProxyRequest, RequestState)
    assert RequestState.gone.__doc__


def test_requests_go_to_the_access_log_only_when_there_is_one(served, tmp_path):
    from twisted.logger import globalLogPublisher

    site, _ = served
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        site.startFactory()
        _send(site, b"GET /hello/bob?token=s3cret-1 HTTP/1.1\r\nHost: localhost\r\n\r\n")
        path = tmp_path / "access.log"
        site.reconfigure(Config().replace(server={"access_log": str(path)}))
        site.startFactory()
        _send(site, b"GET /hello/carol?token=s3cret-2 HTTP/1.1\r\nHost: localhost\r\n\r\n")
        site.stopFactory()
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert not [e for e in events if "hello" in repr(e)]  # no line per request in the daemon's log
    (line,) = path.read_text().splitlines()
    assert '"GET /hello/carol?token=[REDACTED] HTTP/1.1" 200' in line
