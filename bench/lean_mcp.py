"""Lean MCP clients over the proxy's two handshake transports, for timing loops.

The official SDK clients spend more time in pydantic than the proxy spends on a call;
these speak the same JSON-RPC with a bare HTTP/1.1 connection instead. Given several base
URLs (a cluster's nodes), each request goes to the next one in turn (`RotatingConnection`).
"""

import itertools
import json
import time
from collections.abc import Sequence

from bench.wire import EventStream, HttpConnection, RotatingConnection, WireError, connect

CLIENT_INFO = {"name": "mcproxy-bench", "version": "1"}


class _LeanSession:
    """What both transports share: id allocation, the handshake, tool calls."""

    protocol_version = ""

    def __init__(self):
        self._ids = itertools.count(1)

    async def _exchange(self, message: dict) -> dict | None:
        raise NotImplementedError

    async def call(self, method: str, params: dict) -> dict:
        """One request; returns its ``result`` or raises on a JSON-RPC error."""
        request_id = next(self._ids)
        answer = await self._exchange({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
        if answer is None or answer.get("id") != request_id:
            raise WireError(f"{method}: no answer for request {request_id}: {answer!r}")
        if "error" in answer:
            raise WireError(f"{method}: {answer['error']}")
        return answer["result"]

    async def handshake(self) -> None:
        await self.call(
            "initialize", {"protocolVersion": self.protocol_version, "capabilities": {}, "clientInfo": CLIENT_INFO}
        )
        await self._exchange({"jsonrpc": "2.0", "method": "notifications/initialized"})

    async def tool(self, name: str, arguments: dict) -> str:
        """Call a tool that must succeed; returns its text content."""
        result = await self.call("tools/call", {"name": name, "arguments": arguments})
        text = "\n".join(block.get("text", "") for block in result.get("content", ()))
        if result.get("isError"):
            raise WireError(f"{name} failed: {text[:500]}")
        return text


class LeanStreamable(_LeanSession):
    """Streamable HTTP (2025-11-25 handshake) on one persistent connection to ``/mcp``."""

    protocol_version = "2025-11-25"

    def __init__(self, connection: HttpConnection | RotatingConnection, token: str):
        super().__init__()
        self.connection = connection
        self.headers = {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream",
        }
        #: Content types of the answers seen, to show whether results came as JSON or SSE.
        self.answer_types: set[str] = set()

    @classmethod
    async def open(cls, base_url: str | Sequence[str], token: str) -> "LeanStreamable":
        """A session on one server, or rotating over several (initialize on the first)."""
        session = cls(await connect(base_url), token)
        await session.handshake()
        return session

    async def _exchange(self, message: dict) -> dict | None:
        self.connection.send("POST", "/mcp", self.headers, json.dumps(message).encode())
        status, headers, body = await self.connection.response_head()
        if "mcp-session-id" in headers:
            self.headers["Mcp-Session-Id"] = headers["mcp-session-id"]
            self.headers["MCP-Protocol-Version"] = self.protocol_version
        content_type = headers.get("content-type", "").split(";")[0]
        if status == 202:
            await body.read_all()
            return None
        if status != 200:
            raise WireError(f"POST /mcp answered {status}: {(await body.read_all())[:500]!r}")
        self.answer_types.add(content_type)
        if content_type == "text/event-stream":
            stream = EventStream(self.connection, body)
            while True:
                _, data = await stream.next_event()
                answer = json.loads(data)
                if answer.get("id") == message.get("id"):
                    await body.read_all()
                    return answer
        return json.loads(await body.read_all())

    def close(self) -> None:
        self.connection.close()


class LeanLegacySse(_LeanSession):
    """Legacy HTTP+SSE (2024-11-05): answers arrive on the ``GET /sse`` stream."""

    protocol_version = "2024-11-05"

    def __init__(self, stream: EventStream, poster: HttpConnection | RotatingConnection, endpoint: str, token: str):
        super().__init__()
        self.stream = stream
        self.poster = poster
        self.endpoint = endpoint
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    @classmethod
    async def open(cls, base_url: str | Sequence[str], token: str) -> "LeanLegacySse":
        """A session on one server, or with its stream on the first of several and its
        POSTs rotating over all of them."""
        stream_url = base_url if isinstance(base_url, str) else base_url[0]
        stream = await EventStream.open(stream_url, "/sse", {"Authorization": f"Bearer {token}"})
        event, endpoint = await stream.next_event()
        if event != "endpoint":
            raise WireError(f"first SSE event is {event!r}, not endpoint")
        session = cls(stream, await connect(base_url), endpoint, token)
        await session.handshake()
        return session

    async def _exchange(self, message: dict) -> dict | None:
        status, _, body = await self.poster.request("POST", self.endpoint, self.headers, json.dumps(message).encode())
        if status not in (200, 202):
            raise WireError(f"POST {self.endpoint} answered {status}: {body[:500]!r}")
        if "id" not in message:
            return None
        while True:
            event, data = await self.stream.next_event()
            if event == "message":
                answer = json.loads(data)
                if answer.get("id") == message["id"]:
                    return answer

    def close(self) -> None:
        self.stream.close()
        self.poster.close()


async def open_tab(session, url: str) -> int:
    """Open ``url`` in a new tab through ``session`` (anything with ``tool``); its pageId."""
    listing = await session.tool("new_page", {"url": url})
    for line in listing.splitlines():
        if url in line and ":" in line:
            return int(line.split(":", 1)[0].strip())
    raise WireError(f"new_page did not list {url}: {listing[:300]}")


async def timed_evaluate(session, page_id: int) -> float:
    """One ``evaluate_script(() => 1+1)`` that only reads (no settling), in ms; it must yield 2."""
    started = time.perf_counter()
    arguments = {"pageId": page_id, "function": "() => 1+1", "waitForStableDom": False}
    text = await session.tool("evaluate_script", arguments)
    elapsed = (time.perf_counter() - started) * 1000
    if "2" not in text:
        raise WireError(f"evaluate_script did not return 2: {text[:200]!r}")
    return elapsed
