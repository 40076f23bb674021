"""The Chrome DevTools Protocol client: one browser-level WebSocket, flattened sessions.

`CDPConnection` holds the protocol logic (ids, the pending map, event dispatch) and
writes through a callable, so it runs the same over a WebSocket
(`mcproxy.browser.cdp.websocket`) and in deterministic tests.

What the browser sends is untrusted (whoever answers at the registered URL): a message
is at most ``browser.max_message_bytes`` (the WebSocket layer closes the connection past
it); one of `THREAD_DECODE_BYTES` or more is decoded in a thread, with reading paused and
later messages queued behind it so their order holds; one that is not JSON, not an
object, or has fields of the wrong type is dropped with a log line, or fails only the
call it answers (`mcproxy.browser.cdp.messages`); a reply to no pending call is ignored.
After `MESSAGES_PER_TURN` messages in a row the reactor gets a turn (reading paused until
then), so one browser's flood does not hold up other users' calls.
"""

from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from mcproxy import wirejson
from mcproxy.browser.cdp.messages import THREAD_DECODE_BYTES, MalformedMessage, parse_message
from mcproxy.errors import BrowserUnavailable, CDPError

log = Logger()

EventCallback = Callable[[str, dict], None]
ALL = None  # subscribe(ALL, ...) receives every event of a session
#: Messages of one browser handled in one reactor turn; the rest wait for the next turn, so a
#: browser that floods (console events by the thousand) cannot starve everyone else.
MESSAGES_PER_TURN = 100
#: Malformed messages logged one by one per connection; after that only every 1000th.
LOGGED_DROPS = 10


class CDPConnection:
    """Request/response correlation and event routing for one CDP WebSocket.

    ``send_message`` writes one text message (UTF-8 JSON); ``abort`` drops the transport. The owner
    calls `message_received` for each incoming message and `connection_lost` once.
    ``run_in_thread(f, *args)`` (Deferred of the result) decodes big messages; without
    it every message is decoded inline, in one turn (in-memory tests). ``pause_reading`` and
    ``resume_reading`` hold the transport while one is decoded or a flood waits for the next
    turn, so the queue behind stays short.
    """

    def __init__(
        self,
        clock,
        send_message: Callable[[bytes], None],
        abort: Callable[[], None],
        *,
        default_timeout: float = 30.0,
        description: str = "the browser",
        run_in_thread: Callable[..., Deferred] | None = None,
        pause_reading: Callable[[], None] = lambda: None,
        resume_reading: Callable[[], None] = lambda: None,
    ):
        self.clock = clock
        self._send_message = send_message
        self._abort = abort
        self.default_timeout = default_timeout
        self.description = description
        self._run_in_thread = run_in_thread
        self._pause_reading = pause_reading
        self._resume_reading = resume_reading
        self._next_id = 0
        self._pending: dict[int, tuple[str, Deferred]] = {}
        self._subscribers: dict[tuple[str | None, str | None], list[EventCallback]] = {}
        self._close_listeners: list[Callable[[str], None]] = []
        #: Messages received behind one being decoded in a thread, or past this turn's share.
        self._inbox: deque = deque()
        self._decoding = False
        #: This reactor turn's share of messages is used; the rest waits for the next turn.
        self._held = False
        self._handled = 0
        self.dropped = 0
        self.closed = False
        self.close_reason: str | None = None
        #: Called before every command; raises to refuse it (a cluster process that may no
        #: longer command this browser: `mcproxy.cluster.service.fenced_links`).
        self.guard: Callable[[], None] | None = None

    @property
    def pending_count(self) -> int:
        """Calls sent and not yet answered (for tests and metrics)."""
        return len(self._pending)

    def send(
        self,
        method: str,
        params: dict | None = None,
        *,
        session_id: str | None = None,
        timeout: float | None = None,
    ) -> Deferred:
        """Call ``method``; Deferred[dict] of Chrome's result, bounded by ``timeout``.

        Fails with BrowserUnavailable when disconnected or on timeout, CDPError when
        Chrome answers with an error. Cancelling the Deferred forgets the call.
        """
        if self.closed or self.close_reason is not None:
            return defer.fail(BrowserUnavailable(self._closed_message()))
        if self.guard is not None:
            try:
                self.guard()
            except BrowserUnavailable as e:
                return defer.fail(e)
        self._next_id += 1
        call_id = self._next_id
        message: dict[str, Any] = {"id": call_id, "method": method, "params": params or {}}
        if session_id is not None:
            message["sessionId"] = session_id

        def forget(_: Deferred) -> None:
            self._pending.pop(call_id, None)

        result: Deferred = Deferred(forget)
        self._pending[call_id] = (method, result)
        seconds = self.default_timeout if timeout is None else timeout

        def timed_out(failure):
            failure.trap(defer.TimeoutError)
            raise BrowserUnavailable(f"{self.description} did not answer {method} within {seconds:g} s")

        result.addTimeout(seconds, self.clock)
        result.addErrback(timed_out)
        try:
            self._send_message(wirejson.dumps(message))
        except Exception as e:
            self._pending.pop(call_id, None)
            result.errback(BrowserUnavailable(f"cannot send to {self.description}: {e}"))
        return result

    def subscribe(
        self, method: str | None, callback: EventCallback, *, session_id: str | None = None
    ) -> Callable[[], None]:
        """Call ``callback(method, params)`` for events of ``session_id`` (None: browser level).

        ``method=None`` receives every event of that session. Returns an unsubscribe callable.
        """
        key = (session_id, method)
        self._subscribers.setdefault(key, []).append(callback)

        def unsubscribe() -> None:
            callbacks = self._subscribers.get(key, [])
            if callback in callbacks:
                callbacks.remove(callback)
            if not callbacks:
                self._subscribers.pop(key, None)

        return unsubscribe

    def add_close_listener(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(reason)`` once when the connection ends (now, if it has)."""
        if self.closed:
            callback(self.close_reason or "closed")
        else:
            self._close_listeners.append(callback)

    def abort(self) -> None:
        """Drop the transport; `connection_lost` follows."""
        self._abort()

    def message_received(self, data: str | bytes) -> None:
        """Route one message from Chrome to its pending call or to event subscribers, in
        the order received (a big one is decoded in a thread; later ones wait for it)."""
        if self.closed:
            return
        self._inbox.append(data)
        if not self._stalled:
            self._drain()

    @property
    def _stalled(self) -> bool:
        """Whether messages wait: one is decoded in a thread, or this turn's share is used."""
        return self._decoding or self._held

    def _drain(self) -> None:
        while self._inbox and not self._stalled:
            if self._run_in_thread is not None and not self._count_one():
                return
            data = self._inbox.popleft()
            if self._run_in_thread is not None and len(data) >= THREAD_DECODE_BYTES:
                self._decoding = True
                self._pause_reading()
                self._run_in_thread(parse_message, data).addBoth(self._decoded)
                return
            try:
                message = parse_message(data)
            except MalformedMessage as e:
                self.drop(str(e))
                continue
            self._route(message)
        if not self._stalled and self.close_reason is not None:
            self._lost(self.close_reason)

    def _count_one(self) -> bool:
        """Whether there is room for one more message before the reactor gets a turn for
        everyone else; when there is not, reading is held until the next turn. (No timer per
        message: in ordinary traffic this yields once every `MESSAGES_PER_TURN` messages.)"""
        if self._handled >= MESSAGES_PER_TURN:
            self._held = True
            self._pause_reading()
            self.clock.callLater(0, self._next_turn)
            return False
        self._handled += 1
        return True

    def _next_turn(self) -> None:
        """A new share; the rest of a flood goes on once the reactor has served everyone else."""
        self._handled = 0
        self._held = False
        self._go_on()

    def _decoded(self, result) -> None:
        self._decoding = False
        if isinstance(result, Failure):
            if result.check(MalformedMessage):
                self.drop(result.getErrorMessage())
            else:
                log.failure("Decoding a message from {browser} failed", result, browser=self.description)
        else:
            self._route(result)
        self._go_on()

    def _go_on(self) -> None:
        """Resume reading (unless something else still holds it) and handle what waits."""
        if not self._stalled:
            if self.close_reason is None:
                self._resume_reading()
            self._drain()

    def drop(self, why: str) -> None:
        """Count a malformed message that is dropped; log the first few (a hostile browser
        must not flood the log)."""
        self.dropped += 1
        if self.dropped <= LOGGED_DROPS or self.dropped % 1000 == 0:
            log.warn(
                "Dropped a malformed message from {browser} ({why}); {count} so far",
                browser=self.description,
                why=why,
                count=self.dropped,
            )

    def _route(self, message: dict) -> None:
        if "id" in message:
            self._answer(message)
        else:
            self._dispatch(message.get("sessionId"), message["method"], message.get("params") or {})

    def _answer(self, message: dict) -> None:
        entry = self._pending.pop(message["id"], None)
        if entry is None:
            return  # cancelled, timed out, or never asked: nothing waits for it
        method, result = entry
        error = message.get("error")
        if error is not None:
            if not isinstance(error, dict):
                error = {}
            text = error.get("message")
            text = text if isinstance(text, str) else "unknown error"
            data = error.get("data")
            if isinstance(data, str) and data:
                text = f"{text} ({data})"
            code = error.get("code")
            code = code if isinstance(code, int) and not isinstance(code, bool) else None
            result.errback(CDPError(f"{method}: {text}", cdp_code=code))
            return
        answer = message.get("result")
        if answer is None:
            answer = {}
        if not isinstance(answer, dict):
            self.drop(f"the result of {method} is not an object")
            result.errback(
                CDPError(f"{method}: {self.description} sent a malformed reply (its result is not an object)")
            )
            return
        result.callback(answer)

    def _dispatch(self, session_id: str | None, method: str, params: dict) -> None:
        for key in ((session_id, method), (session_id, ALL)):
            for callback in list(self._subscribers.get(key, ())):
                try:
                    callback(method, params)
                except Exception:
                    log.failure("CDP event handler for {method} failed", method=method)

    def connection_lost(self, reason: str) -> None:
        """Fail every pending call with BrowserUnavailable and tell the close listeners
        (after the messages still being decoded, which arrived first)."""
        if self.closed or self.close_reason is not None:
            return
        self.close_reason = reason  # calls made from now on fail at once
        if not self._stalled:
            self._lost(reason)

    def _lost(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        pending, self._pending = self._pending, {}
        for method, result in pending.values():
            result.errback(
                BrowserUnavailable(f"the connection to {self.description} was lost during {method} ({reason})")
            )
        listeners, self._close_listeners = self._close_listeners, []
        for callback in listeners:
            try:
                callback(reason)
            except Exception:
                log.failure("CDP close listener failed")
        self._subscribers.clear()

    def _closed_message(self) -> str:
        return f"{self.description} is not connected ({self.close_reason or 'closed'})"
