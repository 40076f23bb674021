"""A request whose session ends is answered (and its work cancelled); streams and requests
that come and go leave no callbacks behind. Streamable HTTP and the legacy SSE transport."""

import json

import attrs
import pytest
import pytest_twisted
from test_transports_sdk import (
    SLACK,
    _auth,
    _call,
    _events,
    _post,
    _raw_session,
    run_async,
    serving,
    within,
)
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol

from mcproxy.config import Config
from mcproxy.mcp.codes import SESSION_ENDED
from mcproxy.testing.fake_tools import fake_authenticate


async def _with_token(request):
    """The fake credentials, each user's as if from an API token of their own."""
    principal = await fake_authenticate(request)
    return attrs.evolve(principal, token_id=f"token-of-{principal.user_id}")


@pytest.fixture
def server():
    yield from serving(Config(), _with_token)


class _DeletedTokens:
    """A token store in which every token has been deleted."""

    async def get_token(self, token_id):
        return None


async def _running(started: Deferred) -> None:
    """Wait for a slow call to start, then for the turn that started it to end (the fake
    tool says it started before its request is on the session's books)."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    await started
    await deferLater(reactor, 0, lambda: None)


def _only_session(server):
    (entry,) = server.sessions._sessions.values()
    return entry


async def _end_by_delete(server, mcp, headers):
    deleted = await _post(mcp, b"", headers, method="DELETE")
    assert deleted.code == 204


async def _end_by_revocation(server, mcp, headers):
    from twisted.internet import reactor

    from mcproxy.session.revocation import RevocationWatch

    await RevocationWatch(server.sessions, _DeletedTokens(), reactor).check()


async def _end_by_shutdown(server, mcp, headers):
    server.sessions.close_all()


@pytest.mark.parametrize("end", [_end_by_delete, _end_by_revocation, _end_by_shutdown])
@pytest_twisted.ensureDeferred
async def test_a_running_json_post_is_answered_when_its_session_ends(server, end):
    mcp = server.url + "/mcp"
    headers = await _raw_session(mcp)
    started = server.tools.when_started()
    pending = within(_post(mcp, _call(9, "slow", {"seconds": 30}), {**headers, "Accept": "application/json"}), SLACK)
    await _running(started)
    await end(server, mcp, headers)
    answer = await pending
    assert answer.code == 200
    body = await answer.json()
    assert body["id"] == 9 and body["error"]["code"] == SESSION_ENDED
    assert "session ended" in body["error"]["message"]
    assert server.tools.cancelled == ["slow"]


@pytest_twisted.ensureDeferred
async def test_a_running_streamed_post_gets_the_error_event_when_its_session_ends(server):
    mcp = server.url + "/mcp"
    headers = await _raw_session(mcp)
    started = server.tools.when_started()
    pending = within(_post(mcp, _call(4, "slow", {"seconds": 30}, {"progressToken": "p"}), headers), SLACK)
    await _running(started)
    await _end_by_delete(server, mcp, headers)
    answer = await pending
    assert answer.headers.getRawHeaders(b"content-type")[0].startswith(b"text/event-stream")
    events = _events(await within(answer.content(), SLACK))
    assert events[-1]["id"] == 4 and events[-1]["error"]["code"] == SESSION_ENDED
    assert server.tools.cancelled == ["slow"]


@pytest_twisted.ensureDeferred
async def test_sdk_client_call_fails_with_session_ended(server):
    import httpx2
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared.exceptions import MCPError

    async def flow():
        async with httpx2.AsyncClient(headers=_auth("alice")) as http:
            async with streamable_http_client(server.url + "/mcp", http_client=http) as (read, write):
                async with ClientSession(read, write) as session:
                    await session.initialize()
                    started = Deferred.asFuture(server.tools.when_started(), _loop())
                    call = _task(session.call_tool("slow", {"seconds": 30}, read_timeout_seconds=SLACK))
                    await started
                    server.sessions.close(_only_session(server).id)
                    with pytest.raises(MCPError) as raised:
                        await call
                    assert raised.value.error.code == SESSION_ENDED

    await run_async(flow())
    assert server.tools.cancelled == ["slow"]


@pytest_twisted.ensureDeferred
async def test_legacy_call_fails_with_session_ended_before_the_stream_closes(server):
    from mcp import ClientSession
    from mcp.client.sse import sse_client
    from mcp.shared.exceptions import MCPError

    async def flow():
        async with sse_client(server.url + "/sse", headers=_auth("alice")) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                entry = _only_session(server)
                callbacks = list(entry._on_close)
                for n in range(20):
                    assert (await session.call_tool("echo", {"text": str(n)})).content[0].text == str(n)
                assert entry._on_close == callbacks and entry.state.in_flight == 0
                started = Deferred.asFuture(server.tools.when_started(), _loop())
                call = _task(session.call_tool("slow", {"seconds": 30}, read_timeout_seconds=SLACK))
                await started
                await Deferred.asFuture(Deferred.fromCoroutine(_end_by_revocation(server, None, None)), _loop())
                with pytest.raises(MCPError) as raised:
                    await call
                assert raised.value.error.code == SESSION_ENDED

    await run_async(flow())
    assert server.tools.cancelled == ["slow"]


class _Client(Protocol):
    """A raw HTTP client: ``seen`` fires once ``marker`` has arrived."""

    def __init__(self, marker: bytes):
        self.marker = marker
        self.received = b""
        self.seen: Deferred = Deferred()

    def dataReceived(self, data):
        self.received += data
        if self.marker in self.received and not self.seen.called:
            self.seen.callback(None)


async def _open_and_drop_stream(port: int, headers: dict) -> None:
    """A standalone GET that opens its stream, then the client goes away."""
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

    client = _Client(b": stream open")
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
    lines = [b"GET /mcp HTTP/1.1", b"Host: 127.0.0.1", b"Accept: text/event-stream"]
    lines += [f"{k}: {v}".encode() for k, v in headers.items()]
    client.transport.write(b"\r\n".join(lines) + b"\r\n\r\n")
    await client.seen.addTimeout(SLACK, reactor)
    client.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_streams_and_posts_that_come_and_go_leave_no_callbacks(server):
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    mcp = server.url + "/mcp"
    port = int(server.url.rsplit(":", 1)[1])
    headers = await _raw_session(mcp)
    entry = _only_session(server)
    callbacks = list(entry._on_close)  # the McpSession's close
    gate = server.transports.gates[b"mcp"]
    for n in range(100):
        await _open_and_drop_stream(port, headers)
        for _ in range(int(SLACK / 0.01)):  # the server notices the client left
            if entry.stream is None:
                break
            await deferLater(reactor, 0.01, lambda: None)
        assert entry.stream is None, n
        answer = await _post(mcp, _call(n, "echo", {"text": "x"}), {**headers, "Accept": "application/json"})
        assert json.loads(await answer.content())["result"]["content"][0]["text"] == "x"
    assert entry._on_close == callbacks
    assert entry._holds == 0 and entry.state.in_flight == 0
    assert not gate.streams


def _loop():
    import asyncio

    return asyncio.get_running_loop()


def _task(coroutine):
    import asyncio

    return asyncio.ensure_future(coroutine)
