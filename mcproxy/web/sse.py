"""A server-sent-events response on a twisted.web request: keep-alives and flow control."""

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from mcproxy.mcp.jsonrpc import encode
from mcproxy.web.http import lift_deadline

if TYPE_CHECKING:
    from mcproxy.web.site import ProxyRequest

log = Logger()


MAX_BACKLOG = 32 * 1024 * 1024
"""Bytes an SSE stream holds for a client that does not read before it is dropped."""


@implementer(IPushProducer)
class SseStream:
    """An open ``text/event-stream`` response.

    `start` sends the headers; `send` writes one event; keep-alive comments go out every
    ``keepalive`` seconds so proxies do not cut an idle stream. The stream is closed when
    the server calls `close` or when the client goes away; either way the ``on_closed``
    callbacks run once.

    Flow control: the stream is the request's push producer. While the connection's send
    buffer is full, events wait here; a client that lets more than ``max_backlog`` bytes
    pile up is disconnected rather than allowed to grow the server without bound.
    """

    def __init__(self, request: "ProxyRequest", clock, keepalive: float, max_backlog: int = MAX_BACKLOG):
        self.request = request
        self.clock = clock
        self.keepalive = keepalive
        self.max_backlog = max_backlog
        self.closed = False
        self._on_closed: list[Callable[[], None]] = []
        self._pinger: LoopingCall | None = None
        self._paused = False
        self._backlog: deque[bytes] = deque()
        self._backlog_size = 0

    def start(self) -> None:
        """Send the status and headers, and start the keep-alives. A stream lives as long as
        it is read, so the request's time limit no longer applies."""
        request = self.request
        lift_deadline(request)
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-cache")
        request.setHeader(b"X-Accel-Buffering", b"no")
        request.notifyFinish().addBoth(self._finished)
        request.registerProducer(self, True)
        if self.keepalive and self.keepalive > 0:
            self._pinger = LoopingCall(self.comment, "keep-alive")
            self._pinger.clock = self.clock
            self._pinger.start(self.keepalive, now=False)

    def on_closed(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once the stream has ended (at once if it already has)."""
        if self.closed:
            callback()
        else:
            self._on_closed.append(callback)

    def send(self, data: str, event: str | None = "message") -> None:
        """Write one event; a no-op once the stream is closed."""
        if self.closed:
            return
        lines = []
        if event:
            lines.append(f"event: {event}")
        lines.extend(f"data: {line}" for line in data.split("\n"))
        self._write(("\n".join(lines) + "\n\n").encode("utf-8"))

    def send_json(self, message: dict) -> None:
        """Write a JSON-RPC message as a ``message`` event (compact JSON is a single line)."""
        if not self.closed:
            self._write(b"event: message\ndata: " + encode(message) + b"\n\n")

    def comment(self, text: str = "") -> None:
        """Write an SSE comment (ignored by clients, keeps intermediaries awake)."""
        if not self.closed and not self._paused:  # a waiting stream needs no keep-alive
            self._write(f": {text}\n\n".encode())

    def close(self) -> None:
        """End the response (after whatever is still waiting to be sent)."""
        if self.closed:
            return
        backlog, self._backlog, self._backlog_size = self._backlog, deque(), 0
        for data in backlog:  # the transport holds it from here
            self.request.write(data)
        self.request.unregisterProducer()
        self.request.finish()
        self._finished(None)

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._flush()

    def stopProducing(self) -> None:
        """The connection is going away; `_finished` runs from notifyFinish."""
        self._paused = True

    def _write(self, data: bytes) -> None:
        if not self._paused and not self._backlog:
            self.request.write(data)
            return
        self._backlog.append(data)
        self._backlog_size += len(data)
        if self._backlog_size > self.max_backlog:
            log.warn("Dropping an SSE client that stopped reading ({size} bytes waiting)", size=self._backlog_size)
            self._backlog.clear()
            self._backlog_size = 0
            self.request.unregisterProducer()
            # A graceful close would wait for a client that does not read: abort.
            transport = getattr(self.request.channel, "transport", None)
            if transport is not None:
                transport.abortConnection()

    def _flush(self) -> None:
        while self._backlog and not self._paused:
            data = self._backlog.popleft()
            self._backlog_size -= len(data)
            self.request.write(data)

    def _finished(self, _result) -> None:
        if self._pinger is not None and self._pinger.running:
            self._pinger.stop()
        if self.closed:
            return
        self.closed = True
        callbacks, self._on_closed = self._on_closed, []
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.failure("Error while closing an SSE stream")
