"""Sessions that come and go leave nothing behind in the daemon.

A whole daemon runs in-process with a real Chromium registered for the user; legacy SSE and
Streamable HTTP sessions open, call ``list_pages`` and end, many of them side by side. While
some are open, every per-session place (the session registry, the drain gates' streams, the
shared keep-alive timers, the connection counts, the reactor's timers and the live session
objects) shows them; once all have ended, none holds anything, and nothing they used waits
for the cycle collector: it was all freed the moment each session ended.
"""

import asyncio
import gc
import json
import re

import pytest_twisted
from twisted.internet.defer import Deferred

from mcproxy.testing.daemon import start_proxy

#: Sessions of each transport, run `AT_ONCE` at a time.
SESSIONS = 60
AT_ONCE = 10
#: Seconds the daemon gets to notice that clients went away.
SLACK = 10.0


def run_async(coro) -> Deferred:
    return Deferred.fromFuture(asyncio.ensure_future(coro))


class Http:
    """A bare HTTP/1.1 connection (asyncio, as the reactor is): requests one at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> "Http":
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    def send(self, method: str, path: str, headers: dict, body: bytes = b"") -> None:
        lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)

    async def head(self) -> tuple[int, dict[str, str]]:
        lines = (await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), SLACK)).decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        return int(lines[0].split()[1]), headers

    async def request(self, method: str, path: str, headers: dict, message: dict | None = None):
        """``(status, headers, body)``; the body is read by its Content-Length."""
        self.send(method, path, headers, json.dumps(message).encode() if message is not None else b"")
        status, answer = await self.head()
        return status, answer, await self.reader.readexactly(int(answer.get("content-length", 0)))

    async def until(self, pattern: bytes) -> bytes:
        """Read (an event stream) until ``pattern`` has arrived; what arrived."""
        seen = b""
        while not re.search(pattern, seen):
            piece = await asyncio.wait_for(self.reader.read(65536), SLACK)
            if not piece:
                raise ConnectionError(f"the stream ended before {pattern!r}: {seen[-300:]!r}")
            seen += piece
        return seen

    def close(self) -> None:
        self.writer.close()


def _rpc(rid: int | None, method: str, params: dict | None = None) -> dict:
    message = {"jsonrpc": "2.0", "method": method, "params": params or {}}
    return message if rid is None else {**message, "id": rid}


INITIALIZE = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "leaks", "version": "1"}}
LIST_PAGES = {"name": "list_pages", "arguments": {}}


async def open_legacy(port: int, token: str) -> tuple[Http, Http, str]:
    """A legacy SSE session, initialized: its stream, a connection for posts, its endpoint."""
    stream = await Http.open(port)
    stream.send("GET", "/sse", {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"})
    endpoint = re.search(rb"event: endpoint\ndata: (\S+)", await stream.until(rb"event: endpoint\ndata: \S+\n")).group(
        1
    )
    poster = await Http.open(port)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    for message in (
        _rpc(1, "initialize", {**INITIALIZE, "protocolVersion": "2024-11-05"}),
        _rpc(None, "notifications/initialized"),
    ):
        status, _, _ = await poster.request("POST", endpoint.decode(), headers, message)
        assert status == 202
    await stream.until(rb'"id":1')
    return stream, poster, endpoint.decode()


async def legacy_session(port: int, token: str) -> None:
    """Open, call ``list_pages`` (answered on the stream), go away."""
    stream, poster, endpoint = await open_legacy(port, token)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    status, _, _ = await poster.request("POST", endpoint, headers, _rpc(2, "tools/call", LIST_PAGES))
    assert status == 202
    assert b"## Pages" in await stream.until(rb'"id":2.*\n\n')
    stream.close()
    poster.close()


async def streamable_session(port: int, token: str) -> None:
    """Initialize, call ``list_pages``, DELETE the session."""
    http = await Http.open(port)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json", "Accept": "application/json"}
    status, answer, _ = await http.request("POST", "/mcp", headers, _rpc(1, "initialize", INITIALIZE))
    assert status == 200
    headers["Mcp-Session-Id"] = answer["mcp-session-id"]
    assert (await http.request("POST", "/mcp", headers, _rpc(None, "notifications/initialized")))[0] == 202
    status, _, body = await http.request("POST", "/mcp", headers, _rpc(2, "tools/call", LIST_PAGES))
    assert status == 200 and "## Pages" in json.loads(body)["result"]["content"][0]["text"]
    assert (await http.request("DELETE", "/mcp", headers))[0] == 204
    http.close()


def _session_types() -> tuple[type, ...]:
    from mcproxy.calls import SessionView
    from mcproxy.mcp.protocol import McpSession
    from mcproxy.session.registry import Session
    from mcproxy.web.site import ProxyChannel, ProxyRequest
    from mcproxy.web.sse import KeepAlives, SseStream

    return Session, McpSession, SessionView, SseStream, KeepAlives, ProxyRequest, ProxyChannel


def held(proxy, reactor) -> dict[str, dict]:
    """What per-session or per-connection state there is, by where it is held; each thing by
    an identity (the objects themselves are kept, so that an id is not reused meanwhile)."""
    service = proxy.service
    transports = service.transports
    site = service.ports[0].factory
    kinds = _session_types()
    return {
        "sessions": dict(service.sessions._sessions),
        "gate streams": {id(r): r for gate in transports.gates.values() for r in gate.streams},
        "keep-alive timers": {
            (key, n): n for key, timer in transports.keepalive_timers.running.items() for n in range(len(timer))
        },
        "connections per address": {(k, n): n for k, count in site.connections.items() for n in range(count)},
        "stateless requests": dict(transports.stateless_in_flight),
        "running tool calls": {id(d): d for d in transports.calls.running},
        "timers": {id(c): c for c in reactor.getDelayedCalls() if isinstance(getattr(c.func, "__self__", None), kinds)},
        "objects": {id(o): o for o in gc.get_objects() if isinstance(o, kinds)},
    }


def leftovers(now: dict[str, dict], before: dict[str, dict]) -> dict[str, list]:
    """What ``now`` holds that ``before`` did not (other tests may leave things of their own)."""
    found = {}
    for where, things in now.items():
        new = [thing for key, thing in things.items() if key not in before[where]]
        if new:
            found[where] = [type(thing).__name__ for thing in new] if where == "objects" else new
    return found


async def _settled(proxy, reactor, before) -> dict:
    """`leftovers` once there are none, or after `SLACK` seconds (the daemon notices that
    clients went away a moment after they did)."""
    from twisted.internet.task import deferLater

    for _ in range(int(SLACK / 0.1)):
        found = leftovers(held(proxy, reactor), before)
        if not found:
            break
        await deferLater(reactor, 0.1, lambda: None)
    return found


def _cycle_garbage() -> list[str]:
    """The session objects only the cycle collector would have freed (it runs now, to see)."""
    kinds = _session_types()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        return [type(o).__name__ for o in gc.garbage if isinstance(o, kinds)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.collect()


@pytest_twisted.ensureDeferred
async def test_sessions_that_end_leave_nothing_behind(reactor, chromium, tmp_path):
    lifted = {"user_rate": 1e6, "user_burst": 10**6, "address_rate": 1e6, "address_burst": 10**6}
    proxy = await start_proxy(reactor, tmp_path, ratelimit=lifted, limits={"max_sessions_per_user": 0})
    try:
        token = await proxy.token_for("leaky")
        await proxy.register("leaky", chromium.browser_url, token)
        port = int(proxy.base_url.rsplit(":", 1)[1])
        _cycle_garbage()  # what starting up (and earlier tests) left for the collector
        before = held(proxy, reactor)

        opened = await run_async(asyncio.gather(*(open_legacy(port, token) for _ in range(AT_ONCE))))
        seen = leftovers(held(proxy, reactor), before)
        assert len(seen["sessions"]) == len(seen["keep-alive timers"]) == len(seen["gate streams"]) == AT_ONCE
        assert len(seen["connections per address"]) >= AT_ONCE
        assert {"Session", "McpSession", "SseStream", "ProxyRequest"} <= set(seen["objects"])
        for stream, poster, _ in opened:
            stream.close()
            poster.close()
        del opened, seen

        async def batches():
            for start in range(0, SESSIONS, AT_ONCE):
                await asyncio.gather(
                    *(legacy_session(port, token) for _ in range(start, start + AT_ONCE)),
                    *(streamable_session(port, token) for _ in range(start, start + AT_ONCE)),
                )

        await run_async(batches())
        assert await _settled(proxy, reactor, before) == {}
        assert _cycle_garbage() == []
    finally:
        await proxy.stop()
