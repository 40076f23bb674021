"""The MCP endpoints the site mounts: legacy SSE, its message endpoint, and Streamable HTTP.

They can be reconfigured while they serve (live reload) and drained (graceful shutdown):
while draining, new requests get 503 with ``Retry-After``, event streams are closed so
clients reconnect elsewhere, and tool calls still running after the drain timeout are
answered with a JSON-RPC error saying that the server is shutting down.
"""

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.logger import Logger
from twisted.python.failure import Failure

from mcproxy.errors import MCProxyError
from mcproxy.interfaces import ISessionRecords
from mcproxy.mcp.codes import SHUTTING_DOWN
from mcproxy.mcp.jsonrpc import RpcError
from mcproxy.mcp.protocol import EmptyResources, McpServer
from mcproxy.session.records import NoSessionRecords
from mcproxy.threads import thread_runner
from mcproxy.web.legacy import LegacyTransport
from mcproxy.web.routes import MCP_ORIGINS, Area, Route, callers_user
from mcproxy.web.sse import KeepAliveTimers, SseStream
from mcproxy.web.streamable import StreamableTransport

log = Logger()

DRAIN_RETRY_AFTER = 1
"""Seconds a client refused during a drain is told to wait (another process, or this one restarted)."""


class Draining(MCProxyError):
    """The server is shutting down and takes no new MCP requests."""

    http_status = 503
    code = "draining"


class _TrackedTools:
    """The tool provider as the MCP layer sees it: every running call is known, so a drain
    can wait for them and cut the rest short with a clear error."""

    def __init__(self, tools):
        self._tools = tools
        self.running: set[Deferred] = set()
        self.shutting_down = False
        self._idle: list[Deferred] = []

    def list_tools(self, principal):
        return self._tools.list_tools(principal)

    def call_tool(self, name: str, arguments, context) -> Deferred:
        work = self._tools.call_tool(name, arguments, context)
        self.running.add(work)
        work.addBoth(self._finished, work, name)
        return work

    def _finished(self, outcome, work: Deferred, name: str):
        self.running.discard(work)
        if not self.running:
            waiting, self._idle = self._idle, []
            for d in waiting:
                d.callback(None)
        if isinstance(outcome, Failure) and outcome.check(CancelledError) and self.shutting_down:
            return Failure(
                RpcError(
                    SHUTTING_DOWN,
                    f'The server is shutting down; "{name}" was cancelled before it finished. '
                    "Reconnect and call it again.",
                )
            )
        return outcome  # a result, or the client cancelled or went away

    def idle(self) -> Deferred:
        """Fires when no call is running (at once if none is)."""
        d: Deferred[None] = Deferred()
        if self.running:
            self._idle.append(d)
        else:
            d.callback(None)
        return d

    def cancel_all(self) -> int:
        """Cancel every running call, answering each with the shutting-down error; how many."""
        self.shutting_down = True
        running = list(self.running)
        for work in running:
            work.cancel()
        return len(running)


class _Gate:
    """Puts an MCP endpoint behind the drain: refuses requests while draining, and keeps
    the event streams it opened (``GET``) so that a drain can close them."""

    def __init__(self, transports: "McpTransports"):
        self._t = transports
        self.streams: set = set()

    def admit(self, request) -> None:
        if self._t.draining:
            request.setHeader(b"Retry-After", str(DRAIN_RETRY_AFTER).encode("ascii"))
            request.setHeader(b"Connection", b"close")
            raise Draining("the server is shutting down; retry in a moment (another server may answer)")
        if request.method == b"GET":
            self.streams.add(request)
            request.notifyFinish().addBoth(lambda _: self.streams.discard(request))

    def close_streams(self) -> int:
        """End the event streams still open; how many there were."""
        closed = 0
        for request in list(self.streams):
            stream = request.producer
            if isinstance(stream, SseStream) and not stream.closed:
                stream.close()
                closed += 1
        return closed


class McpTransports:
    """The MCP endpoints (GET /sse, POST /message, /mcp) as `areas` of the router, which
    authenticates their callers for the ``"mcp"`` endpoint class. ``records`` keeps the
    Streamable HTTP sessions for other processes to resume (none kept unless given)."""

    def __init__(self, reactor, config, tools, sessions, *, resources=None, records: ISessionRecords | None = None):
        self.clock = reactor
        #: One keep-alive timer per interval for all the SSE streams open here.
        self.keepalive_timers = KeepAliveTimers(reactor)
        self.sessions = sessions
        self.records = records if records is not None else NoSessionRecords()
        sessions.add_end_listener(self.records.ended)
        self.calls = _TrackedTools(tools)
        self.server = McpServer(
            self.calls,
            resources or EmptyResources(),
            config.session.max_in_flight,
            run_blocking=thread_runner(reactor),
        )
        self.reconfigure(config)
        self.stateless_in_flight: dict[str, int] = {}
        self.draining = False
        self.gates = {name: _Gate(self) for name in (b"sse", b"message", b"mcp")}

    def areas(self) -> dict[bytes, Area]:
        """``/sse``, ``/message`` and ``/mcp`` (and any path below each), each behind its gate."""
        legacy, streamable = LegacyTransport(self), StreamableTransport(self)
        handlers = {
            b"sse": [(b"GET", legacy.open_stream)],
            b"message": [(b"POST", legacy.post_message)],
            b"mcp": [(b"POST", streamable.post), (b"GET", streamable.get), (b"DELETE", streamable.delete)],
        }
        return {
            name: Area(
                tuple(
                    Route(method, rf"/{name.decode()}(?:/.*)?", handler, auth="mcp", routed=callers_user)
                    for method, handler in routes
                ),
                origins=MCP_ORIGINS,
                gate=self.gates[name].admit,
                method_separator=" or ",
            )
            for name, routes in handlers.items()
        }

    def reconfigure(self, config) -> None:
        """Apply new limits, time limit and keep-alive interval (live reload); streams
        already open keep their keep-alive interval."""
        self.server.max_in_flight = config.session.max_in_flight
        self.server.forget_listings()  # the tools on offer may have changed
        self.max_body = config.server.max_body_bytes
        self.keepalive = config.server.sse_keepalive
        self.request_timeout = config.server.request_timeout

    async def drain(self, timeout: float) -> int:
        """Refuse new requests, close the notification streams, wait up to ``timeout``
        seconds for running tool calls, then cut the rest short. How many were cut.

        Legacy ``/sse`` streams carry their sessions' answers, so they close last, once
        every call has been answered. Cancelling the returned Deferred stops the wait early.
        """
        self.draining = True
        closed = self.gates[b"mcp"].close_streams()
        log.info(
            "Draining: {streams} notification streams closed, waiting up to {timeout} s for {calls} tool calls",
            streams=closed,
            timeout=timeout,
            calls=len(self.calls.running),
        )
        idle = self.calls.idle()
        idle.addTimeout(timeout, self.clock)
        try:
            await idle
        except (CancelledError, DeferredTimeout):
            pass
        cut = self.calls.cancel_all()
        if cut:
            log.warn("Drain timeout: {calls} tool calls were cancelled", calls=cut)
        self.gates[b"sse"].close_streams()
        return cut
