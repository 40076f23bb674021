"""Lean loopback clients for the timing loops: HTTP/1.1, server-sent events and a CDP WebSocket.

They are deliberately minimal (asyncio streams, no validation layers) so that what a loop
measures is the server on the other end, not the client.
"""

import asyncio
import base64
import itertools
import json
import os
import struct
from collections.abc import Sequence
from urllib.parse import urlsplit

#: Every single read or exchange in the benchmarks is bounded by this many seconds.
IO_TIMEOUT = 30.0


class WireError(Exception):
    """The peer answered something the benchmark cannot use."""


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    """Read a status line and headers; header names are lower-cased."""
    status_line = await reader.readuntil(b"\r\n")
    parts = status_line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise WireError(f"not an HTTP response: {status_line!r}")
    headers = {}
    while True:
        line = await reader.readuntil(b"\r\n")
        if line == b"\r\n":
            return int(parts[1]), headers
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()


class _Body:
    """Reads one response body piece by piece, whatever its framing."""

    def __init__(self, reader: asyncio.StreamReader, status: int, headers: dict[str, str]):
        self._reader = reader
        self._chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        length = headers.get("content-length")
        self._left = int(length) if length is not None else None
        self.done = status in (204, 304)

    async def read_some(self) -> bytes:
        """The next piece of the body, or ``b""`` at its end."""
        if self.done:
            return b""
        if self._chunked:
            size = int((await self._reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await self._reader.readuntil(b"\r\n")
                self.done = True
                return b""
            data = await self._reader.readexactly(size + 2)
            return data[:-2]
        if self._left is not None:
            if self._left == 0:
                self.done = True
                return b""
            data = await self._reader.read(min(self._left, 65536))
            if not data:
                raise WireError("connection closed inside a response body")
            self._left -= len(data)
            return data
        data = await self._reader.read(65536)
        self.done = not data
        return data

    async def read_all(self) -> bytes:
        pieces = []
        while piece := await self.read_some():
            pieces.append(piece)
        return b"".join(pieces)


class HttpConnection:
    """One persistent HTTP/1.1 connection; requests go one at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str):
        self.reader = reader
        self.writer = writer
        self.host = host

    @classmethod
    async def open(cls, base_url: str) -> "HttpConnection":
        parts = urlsplit(base_url)
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(parts.hostname, parts.port, limit=1 << 24), IO_TIMEOUT
        )
        return cls(reader, writer, parts.netloc)

    def send(self, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> None:
        """Write a request without waiting for its answer."""
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        if body or method in ("POST", "PUT"):
            lines.append(f"Content-Length: {len(body)}")
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)

    async def response_head(self) -> tuple[int, dict[str, str], _Body]:
        """Status, headers and an unread body reader for the next response."""
        status, headers = await asyncio.wait_for(_read_head(self.reader), IO_TIMEOUT)
        return status, headers, _Body(self.reader, status, headers)

    async def request(self, method: str, path: str, headers: dict[str, str], body: bytes = b""):
        """Send a request and read the whole answer: ``(status, headers, body bytes)``."""
        self.send(method, path, headers, body)
        status, response_headers, reader = await self.response_head()
        return status, response_headers, await asyncio.wait_for(reader.read_all(), IO_TIMEOUT)

    def close(self) -> None:
        self.writer.close()


class RotatingConnection:
    """One persistent connection per base URL, each request on the next one in turn: round
    robin over several servers (a cluster's nodes) without a balancer. It stands in for an
    `HttpConnection`; the answer to a `send` is read from the connection it went out on."""

    def __init__(self, connections: list[HttpConnection]):
        self.connections = connections
        self._turns = itertools.cycle(connections)
        self.current = connections[0]

    @classmethod
    async def open(cls, base_urls: Sequence[str]) -> "RotatingConnection":
        return cls([await HttpConnection.open(base_url) for base_url in base_urls])

    def _next(self) -> HttpConnection:
        self.current = next(self._turns)
        return self.current

    def send(self, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> None:
        self._next().send(method, path, headers, body)

    async def response_head(self):
        return await self.current.response_head()

    async def request(self, method: str, path: str, headers: dict[str, str], body: bytes = b""):
        return await self._next().request(method, path, headers, body)

    def close(self) -> None:
        for connection in self.connections:
            connection.close()


async def connect(base_url: str | Sequence[str]) -> HttpConnection | RotatingConnection:
    """A connection to one server, or (several base URLs) one that rotates over them."""
    if isinstance(base_url, str):
        return await HttpConnection.open(base_url)
    return await RotatingConnection.open(base_url)


class EventStream:
    """A ``text/event-stream`` response being read: yields ``(event, data)`` pairs."""

    def __init__(self, connection: HttpConnection, body: _Body):
        self.connection = connection
        self._body = body
        self._buffer = b""

    @classmethod
    async def open(cls, base_url: str, path: str, headers: dict[str, str]) -> "EventStream":
        """``GET path`` and check that an event stream comes back."""
        connection = await HttpConnection.open(base_url)
        connection.send("GET", path, {"Accept": "text/event-stream", **headers})
        status, response_headers, body = await connection.response_head()
        if status != 200 or "text/event-stream" not in response_headers.get("content-type", ""):
            connection.close()
            raise WireError(f"GET {path} answered {status} {response_headers.get('content-type')}")
        return cls(connection, body)

    async def next_event(self, timeout: float = IO_TIMEOUT) -> tuple[str, str]:
        """The next event (comments and keep-alives skipped)."""
        return await asyncio.wait_for(self._next_event(), timeout)

    async def _next_event(self) -> tuple[str, str]:
        while True:
            self._buffer = self._buffer.replace(b"\r\n", b"\n")
            block, sep, rest = self._buffer.partition(b"\n\n")
            if not sep:
                piece = await self._body.read_some()
                if not piece:
                    raise WireError("event stream ended")
                self._buffer += piece
                continue
            self._buffer = rest
            event, data = "message", []
            for line in block.decode("utf-8").split("\n"):
                field, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if field == "event":
                    event = value
                elif field == "data":
                    data.append(value)
            if data:
                return event, "\n".join(data)

    def close(self) -> None:
        self.connection.close()


class CdpSocket:
    """A minimal CDP WebSocket client (RFC 6455 text frames, client-side masking)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self._reader = reader
        self._writer = writer
        self._next_id = 0

    @classmethod
    async def open(cls, ws_url: str) -> "CdpSocket":
        """Connect and upgrade; no ``Origin`` is sent, so Chrome needs no allow-list for us."""
        parts = urlsplit(ws_url)
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(parts.hostname, parts.port, limit=1 << 24), IO_TIMEOUT
        )
        key = base64.b64encode(os.urandom(16)).decode("ascii")
        writer.write(
            (
                f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode("ascii")
        )
        status, _ = await asyncio.wait_for(_read_head(reader), IO_TIMEOUT)
        if status != 101:
            writer.close()
            raise WireError(f"WebSocket upgrade to {ws_url} answered {status}")
        return cls(reader, writer)

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 65536:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        repeated = (mask * (n // 4 + 1))[:n]
        masked = (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(n, "big")
        self._writer.write(head + mask + masked)

    async def _read_message(self) -> bytes:
        """One whole text message; answers pings, reassembles fragments."""
        pieces = []
        while True:
            first, second = await self._reader.readexactly(2)
            n = second & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", await self._reader.readexactly(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", await self._reader.readexactly(8))
            payload = await self._reader.readexactly(n)
            opcode = first & 0x0F
            if opcode == 0x9:
                self._send_frame(0xA, payload)
            elif opcode == 0x8:
                raise WireError("the browser closed the CDP WebSocket")
            elif opcode in (0x0, 0x1, 0x2):
                pieces.append(payload)
                if first & 0x80:
                    return b"".join(pieces)

    async def call(self, method: str, params: dict | None = None) -> dict:
        """Send one command and return its ``result`` (events in between are dropped)."""
        self._next_id += 1
        call_id = self._next_id
        self._send_frame(0x1, json.dumps({"id": call_id, "method": method, "params": params or {}}).encode())
        while True:
            message = json.loads(await asyncio.wait_for(self._read_message(), IO_TIMEOUT))
            if message.get("id") == call_id:
                if "error" in message:
                    raise WireError(f"{method}: {message['error']}")
                return message["result"]

    def close(self) -> None:
        self._writer.close()
