"""The legacy HTTP+SSE transport: ``GET /sse`` opens the session, ``POST /message`` feeds it.

The session lives exactly as long as its stream. A POST must come from the user who opened
the stream; for anyone else the session does not exist (404), and its owner is unaffected.
A request still running when the session ends, or past ``server.request_timeout``, is
answered on the stream with a JSON-RPC error before the stream closes.
"""

from twisted.internet.defer import CancelledError
from twisted.logger import Logger

from mcproxy.calls import SessionView
from mcproxy.errors import NotFound
from mcproxy.mcp.jsonrpc import Request, RpcError
from mcproxy.mcp.protocol import McpSession
from mcproxy.web.mcp_common import (
    Cutoff,
    read_rpc,
    wants_progress,
    write_accepted,
    write_rpc,
)
from mcproxy.web.sse import SseStream

log = Logger()

TRANSPORT = "sse"


class LegacyTransport:
    """``GET /sse`` and ``POST /message``, over the `McpTransports` ``t``."""

    def __init__(self, transports):
        self.t = transports

    async def open_stream(self, request) -> None:
        """``GET /sse``: a new MCP session whose messages all travel on this event stream."""
        t = self.t
        principal = request.principal
        entry = t.sessions.create(principal.user_id, TRANSPORT, principal.token_id)
        mcp = McpSession(t.server, principal, SessionView(entry.id))
        entry.state = mcp
        stream = SseStream(request, t.keepalive_timers, t.keepalive)
        entry.stream = stream
        stream.start()
        entry.hold()
        # The session ends with its stream, and the stream with the session.
        stream.on_closed(lambda: t.sessions.close(entry.id))
        entry.on_close(mcp.close)
        entry.on_close(stream.close)
        base = request.path.decode("latin-1").rsplit("/", 1)[0]
        stream.send(f"{base}/message?sessionId={entry.id}", event="endpoint")
        # Debug: an opened stream is one request; the session's info line is its initialize
        # (client and version), and a stream that never initializes is not worth a line.
        log.debug(
            "Legacy SSE session {session_id} opened for user {user_id}",
            session_id=entry.id,
            user_id=principal.user_id,
        )

    async def post_message(self, request) -> None:
        """``POST /message?sessionId=``: one JSON-RPC message; the answer goes to the session's stream."""
        t = self.t
        principal = request.principal
        ids = request.args.get(b"sessionId") or request.args.get(b"session_id") or [b""]
        entry = t.sessions.get(ids[0].decode("latin-1"), principal.user_id)
        if entry is None or entry.transport != TRANSPORT:
            raise NotFound("no such session; open a new one with GET /sse", code="session_not_found")
        try:
            message = await read_rpc(request, t.max_body, t.server.run_blocking)
        except RpcError as e:
            write_rpc(request, 400, e.to_message())
            return
        entry.touch()
        stream, mcp = entry.stream, entry.state
        write_accepted(request)
        if not isinstance(message, Request):
            mcp.handle(message, stream.send_json)  # nothing to answer
            return
        d = mcp.handle(message, stream.send_json, client=request.client_address)
        cutoff = Cutoff(d)
        deadline = None
        if not wants_progress(message):
            # Answered on the stream, but a request all the same: bounded like one. With
            # progress it streams, like a Streamable HTTP POST that does.
            deadline = t.clock.callLater(t.request_timeout, cutoff.time_out, t.request_timeout)
        try:
            response = await d
        except CancelledError:
            # The time limit, or the session's end (its stream closes right after this).
            response = cutoff.error(message, mcp.closed)
        finally:
            if deadline is not None and deadline.active():
                deadline.cancel()
        if response is not None:
            stream.send_json(response)
