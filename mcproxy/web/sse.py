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

KEEPALIVE_SLOTS = 64
"""Ticks per keep-alive interval: each tick comments on the streams of one slot only, so that
ten thousand streams are not all written to in one turn of the reactor."""


class KeepAliveTimers:
    """The keep-alive timers of one server's SSE streams: a `KeepAlives` per interval in use,
    made when its first stream opens and gone with its last one."""

    def __init__(self, clock):
        self.clock = clock
        #: The timers with streams, by interval.
        self.running: dict[float, KeepAlives] = {}

    def join(self, stream: "SseStream", interval: float) -> "KeepAlives":
        """The timer of ``interval``, with ``stream`` added; `KeepAlives.leave` removes it."""
        keepalives = self.running.get(interval)
        if keepalives is None:
            keepalives = self.running[interval] = KeepAlives(self, interval)
        keepalives.add(stream)
        return keepalives


class KeepAlives:
    """The keep-alive comments of every stream open with one interval, on one timer (a timer
    per stream would cost each stream memory, and each opening a timer).

    The interval is cut into `KEEPALIVE_SLOTS` ticks. A stream joins the slot of the latest
    tick, so its comments come one whole interval apart, the first one interval after it
    opened. A late timer (a jump of the clock, a busy reactor) comments once on every slot
    it passed over.
    """

    def __init__(self, timers: KeepAliveTimers, interval: float):
        self._timers = timers
        self.clock = clock = timers.clock
        self.interval = interval
        self._slots: list[dict[SseStream, None]] = [{} for _ in range(KEEPALIVE_SLOTS)]
        self._position = 0
        self._streams = 0
        self._step = interval / KEEPALIVE_SLOTS
        self._started = clock.seconds()
        self._ticked = 0
        self._timer = LoopingCall(self._tick)
        self._timer.clock = clock
        self._timer.start(self._step, now=False)

    def __len__(self) -> int:
        """How many streams it keeps alive."""
        return self._streams

    def add(self, stream: "SseStream") -> None:
        """Keep ``stream`` alive from the next interval on."""
        stream.keepalive_slot = self._position
        self._slots[self._position][stream] = None
        self._streams += 1

    def leave(self, stream: "SseStream") -> None:
        slot = self._slots[stream.keepalive_slot]
        if stream not in slot:
            return
        del slot[stream]
        self._streams -= 1
        if not self._streams:
            self._timer.stop()
            del self._timer  # it holds this instance's method: no cycle left behind
            del self._timers.running[self.interval]

    def _tick(self) -> None:
        due = int((self.clock.seconds() - self._started) / self._step)
        ticks, self._ticked = due - self._ticked, due
        start = self._position
        self._position = (start + ticks) % KEEPALIVE_SLOTS
        for step in range(1, min(ticks, KEEPALIVE_SLOTS) + 1):
            for stream in list(self._slots[(start + step) % KEEPALIVE_SLOTS]):
                stream.comment("keep-alive")


@implementer(IPushProducer)
class SseStream:
    """An open ``text/event-stream`` response.

    `start` sends the headers; `send` writes one event; keep-alive comments go out every
    ``keepalive`` seconds (on the server's `KeepAliveTimers`) so proxies do not cut an idle stream. The stream is
    closed when the server calls `close` or when the client goes away; either way the
    ``on_closed`` callbacks run once, and the stream lets go of its request, its callbacks
    and whatever waited to be sent, so that a session's objects are freed as soon as it ends
    (not at the next full run of the cycle collector).

    Flow control: the stream is the request's push producer. While the connection's send
    buffer is full, events wait here; a client that lets more than ``max_backlog`` bytes
    pile up is disconnected rather than allowed to grow the server without bound.
    """

    __slots__ = (
        "_request",
        "_timers",
        "keepalive",
        "max_backlog",
        "keepalive_slot",
        "_keepalives",
        "_on_closed",
        "_paused",
        "_backlog",
        "_backlog_size",
    )

    def __init__(
        self, request: "ProxyRequest", timers: KeepAliveTimers, keepalive: float, max_backlog: int = MAX_BACKLOG
    ):
        self._request: ProxyRequest | None = request
        self._timers = timers
        self.keepalive = keepalive
        self.max_backlog = max_backlog
        #: Which of its `KeepAlives` slots the stream is in.
        self.keepalive_slot = 0
        self._keepalives: KeepAlives | None = None
        self._on_closed: list[Callable[[], None]] = []
        self._paused = False
        self._backlog: deque[bytes] | None = None  # made when the client first falls behind
        self._backlog_size = 0

    @property
    def closed(self) -> bool:
        return self._request is None

    def start(self) -> None:
        """Send the status and headers, and start the keep-alives. A stream lives as long as
        it is read, so the request's time limit no longer applies."""
        request = self._request
        assert request is not None, "start a stream once, before it closes"
        lift_deadline(request)
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-cache")
        request.setHeader(b"X-Accel-Buffering", b"no")
        request.notifyFinish().addBoth(self._finished)
        request.registerProducer(self, True)
        if self.keepalive and self.keepalive > 0:
            self._keepalives = self._timers.join(self, self.keepalive)

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
        request = self._request
        if request is None:
            return
        backlog, self._backlog, self._backlog_size = self._backlog, None, 0
        for data in backlog or ():  # the transport holds it from here
            request.write(data)
        request.unregisterProducer()
        request.finish()
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
        request = self._request
        if request is None:
            return
        if not self._paused and not self._backlog:
            request.write(data)
            return
        if self._backlog is None:
            self._backlog = deque()
        self._backlog.append(data)
        self._backlog_size += len(data)
        if self._backlog_size > self.max_backlog:
            log.warn("Dropping an SSE client that stopped reading ({size} bytes waiting)", size=self._backlog_size)
            self._backlog, self._backlog_size = None, 0
            request.unregisterProducer()
            # A graceful close would wait for a client that does not read: abort.
            transport = getattr(request.channel, "transport", None)
            if transport is not None:
                transport.abortConnection()

    def _flush(self) -> None:
        backlog, request = self._backlog, self._request
        while backlog and request is not None and not self._paused:
            data = backlog.popleft()
            self._backlog_size -= len(data)
            request.write(data)

    def _finished(self, _result) -> None:
        if self._keepalives is not None:
            self._keepalives.leave(self)
            self._keepalives = None
        if self._request is None:
            return
        # The request holds the stream as its producer: letting go of the request ends the
        # reference cycle, so both are freed now.
        self._request = None
        self._backlog, self._backlog_size = None, 0
        callbacks, self._on_closed = self._on_closed, []
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.failure("Error while closing an SSE stream")
