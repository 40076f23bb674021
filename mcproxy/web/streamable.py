"""Streamable HTTP at ``/mcp`` (2025 revisions, with sessions) and the stateless 2026-07-28 revision.

A POSTed request is answered with one JSON body unless something must stream before the
answer: the response turns into an event stream when the request carries a progress token
(and the client accepts SSE), or when a notification for it comes up first. Large results
thus stay in plain JSON, clear of clients' limits on SSE event size.
"""

from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, MODERN_PROTOCOL_VERSIONS
from twisted.internet.defer import CancelledError
from twisted.logger import Logger

from mcproxy.calls import SessionView
from mcproxy.errors import BadRequest, Conflict, NotFound
from mcproxy.mcp.codes import (
    HEADER_MISMATCH,
    REQUEST_CANCELLED,
    TOO_MANY_IN_FLIGHT,
    rpc_error_status,
    stateless_status,
)
from mcproxy.mcp.envelope import is_stateless, modern_envelope, request_version, unsupported_version
from mcproxy.mcp.jsonrpc import Request, RpcError, error_message
from mcproxy.mcp.notifications import Notify
from mcproxy.mcp.protocol import McpSession
from mcproxy.web.http import answered, on_deadline
from mcproxy.web.mcp_common import (
    Cutoff,
    NotAcceptable,
    accepts,
    missing_session,
    read_rpc,
    wants_progress,
    write_accepted,
    write_rpc,
)
from mcproxy.web.sse import SseStream

log = Logger()

TRANSPORT = "streamable"

_ROUTING_HEADERS = (b"mcp-protocol-version", b"mcp-method", b"mcp-name")
#: The headers the transport and the 2026-07-28 envelope read.
_MCP_HEADERS = (b"mcp-session-id", *_ROUTING_HEADERS)


class _Exchange:
    """Where one POSTed request's notifications and answer go: JSON, or SSE once needed."""

    def __init__(self, t, request, accepted: tuple[bool, bool], fallback: Notify | None):
        self.t = t
        self.request = request
        self.accepts_json, self.accepts_sse = accepted
        self.fallback = fallback
        self.stream: SseStream | None = None
        self.done = False

    def open_stream(self) -> SseStream:
        """The event stream of the answer, opened on first use."""
        stream = self.stream
        if stream is None:
            stream = self.stream = SseStream(self.request, self.t.keepalive_timers, self.t.keepalive)
            stream.start()
        return stream

    def notify(self, message: dict) -> None:
        if self.done:
            return
        if self.stream is None and not self.accepts_sse:
            if self.fallback is not None:
                self.fallback(message)
            return
        self.open_stream().send_json(message)

    def finish(self, response: dict, status: int) -> None:
        self.done = True
        if self.stream is not None:
            self.stream.send_json(response)
            self.stream.close()
        else:
            write_rpc(self.request, status, response)

    async def run(self, mcp: McpSession, message: Request, error_status) -> None:
        """Dispatch ``message`` and answer.

        The client going away cancels the work (`mcproxy.web.routes.Router`). So do the
        request's time limit (until the answer becomes an event stream) and the end of its
        session; those are answered with a JSON-RPC error saying so, rather than left
        without an answer.
        """
        if self.accepts_sse and (wants_progress(message) or not self.accepts_json):
            self.open_stream()
        d = mcp.handle(message, self.notify, client=self.request.client_address)
        cutoff = Cutoff(d)
        on_deadline(self.request, cutoff.time_out)
        try:
            response = await d
        except CancelledError:
            if answered(self.request):
                self.done = True
                log.debug("Client went away; request {rid} cancelled", rid=message.id)
                return
            response = cutoff.error(message, mcp.closed)
        if response is None:
            response = error_message(message.id, REQUEST_CANCELLED, "Request cancelled")
        error = response.get("error")
        self.finish(response, error_status(error["code"]) if error else 200)


def _headers(request) -> dict[str, str]:
    """The MCP headers the request carries, by lower-case name; a repeated routing header is
    a -32020 error."""
    found = {}
    for name in _MCP_HEADERS:
        values = request.requestHeaders.getRawHeaders(name)
        if values is None:
            continue
        if len(values) > 1 and name in _ROUTING_HEADERS:
            raise RpcError(HEADER_MISMATCH, f"{name.decode()} header appears more than once")
        found[name.decode("ascii")] = values[-1].decode("latin-1")
    return found


class StreamableTransport:
    """``/mcp``: POST messages, GET the session's notification stream, DELETE the session,
    over the `McpTransports` ``t``."""

    def __init__(self, transports):
        self.t = transports

    async def post(self, request) -> None:
        t = self.t
        principal = request.principal
        accepted = accepts(request)
        if not any(accepted):
            raise NotAcceptable("Accept must allow application/json or text/event-stream", code="not_acceptable")
        try:
            message = await read_rpc(request, t.max_body, t.server.run_blocking)
            headers = _headers(request)
        except RpcError as e:
            write_rpc(request, rpc_error_status(e.code), e.to_message())
            return
        session_id = headers.get("mcp-session-id")
        if isinstance(message, Request) and message.method == "initialize":
            await self._initialize(request, principal, message)
        elif not session_id:
            if not is_stateless(request_version(message, headers)):
                raise missing_session(
                    "Mcp-Session-Id header is required: send initialize first, "
                    "or use protocol 2026-07-28, which needs no session"
                )
            await self._stateless(request, principal, message, headers, accepted)
        else:
            await self._in_session(request, principal, session_id, message, headers, accepted)

    def _open(self, principal, token_id: str | None, session_id: str | None = None):
        """A new session in the registry with its `McpSession` (``session_id``: resumed)."""
        t = self.t
        entry = t.sessions.create(principal.user_id, TRANSPORT, token_id, session_id=session_id)
        mcp = McpSession(t.server, principal, SessionView(entry.id))
        entry.state = mcp
        entry.on_close(mcp.close)
        return entry

    async def _initialize(self, request, principal, message: Request) -> None:
        t = self.t
        entry = self._open(principal, principal.token_id)
        response = await entry.state.handle(message, lambda _: None, client=request.client_address)
        if "error" in response:
            t.sessions.close(entry.id)
            write_rpc(request, 400, response)
            return
        t.records.saved(entry)
        write_rpc(request, 200, response, {b"Mcp-Session-Id": entry.id.encode("ascii")})

    async def _in_session(self, request, principal, session_id: str, message, headers, accepted) -> None:
        entry = self._session(session_id, principal) or await self._resumed(session_id, principal)
        mcp = entry.state
        version = headers.get("mcp-protocol-version")
        if version is not None and version not in HANDSHAKE_PROTOCOL_VERSIONS:
            raise BadRequest(
                f"MCP-Protocol-Version {version!r} is not a protocol this session can speak "
                f"(it negotiated {mcp.protocol_version})",
                code="unsupported_protocol_version",
            )
        if not isinstance(message, Request):
            entry.touch()
            mcp.handle(message, lambda _: None)
            write_accepted(request)
            return

        def to_standalone_stream(note: dict) -> None:
            if entry.stream is not None:
                entry.stream.send_json(note)

        entry.hold()
        try:
            await _Exchange(self.t, request, accepted, to_standalone_stream).run(mcp, message, lambda code: 200)
        finally:
            entry.release()
            self.t.records.saved(entry)  # a tool may have selected or opened a page

    async def _stateless(self, request, principal, message, headers, accepted) -> None:
        t = self.t
        if not isinstance(message, Request):
            # The 2026 HTTP wire has no client notifications: cancelling is closing the stream.
            version = request_version(message, headers)
            if version not in MODERN_PROTOCOL_VERSIONS:
                write_rpc(request, 400, unsupported_version(version).to_message())
            else:
                write_accepted(request)
            return
        try:
            envelope = modern_envelope(message, headers)
        except RpcError as e:
            write_rpc(request, rpc_error_status(e.code), e.to_message(message.id))
            return
        user = principal.user_id
        running = t.stateless_in_flight.get(user, 0)
        if running >= t.server.max_in_flight:
            write_rpc(
                request,
                200,
                error_message(
                    message.id,
                    TOO_MANY_IN_FLIGHT,
                    f"Too many requests in flight for this user (limit {t.server.max_in_flight})",
                ),
            )
            return
        t.stateless_in_flight[user] = running + 1
        try:
            mcp = McpSession(t.server, principal, SessionView(None), modern=envelope)
            await _Exchange(t, request, accepted, None).run(mcp, message, stateless_status)
        finally:
            left = t.stateless_in_flight[user] - 1
            if left:
                t.stateless_in_flight[user] = left
            else:
                del t.stateless_in_flight[user]

    def _session(self, session_id: str | None, principal):
        """The caller's session ``session_id`` if this process holds it, else None."""
        if not session_id:
            raise missing_session("Mcp-Session-Id header is required")
        entry = self.t.sessions.get(session_id, principal.user_id)
        if entry is not None and entry.transport != TRANSPORT:
            raise _no_such_session()
        return entry

    async def _resumed(self, session_id: str, principal):
        """The caller's session ``session_id``, taken up from its record: another process
        served it before (the user moved). 404 when it has no record (it ended)."""
        record = await self.t.records.load(principal.user_id, session_id)
        entry = self._session(session_id, principal)
        if entry is not None:  # a concurrent request resumed it meanwhile
            return entry
        if record is None:
            raise _no_such_session()
        entry = self._open(principal, record.token_id, session_id)
        entry.created_at = record.created
        mcp = entry.state
        mcp.resume(record.protocol_version, record.client, record.log_level)
        mcp.view.selected_page_id = record.selected_page_id
        mcp.view.opened_page_ids.update(record.opened_page_ids)
        log.info(
            "MCP session {session_id} of user {user_id} resumed from its record",
            session_id=session_id,
            user_id=principal.user_id,
        )
        return entry

    async def get(self, request) -> None:
        t = self.t
        principal = request.principal
        if not accepts(request)[1]:
            raise NotAcceptable("Accept must allow text/event-stream", code="not_acceptable")
        session_id = _header(request, b"mcp-session-id") or ""
        entry = self._session(session_id, principal) or await self._resumed(session_id, principal)
        if entry.stream is not None and not entry.stream.closed:
            raise Conflict("this session already has an open stream", code="stream_already_open")
        stream = SseStream(request, t.keepalive_timers, t.keepalive)
        stream.start()
        stream.comment("stream open")
        entry.stream = stream
        entry.hold()
        entry.on_close(stream.close)

        def closed() -> None:
            if entry.stream is stream:
                entry.stream = None
            entry.forget_on_close(stream.close)  # a session outlives many streams
            entry.release()

        stream.on_closed(closed)

    async def delete(self, request) -> None:
        t = self.t
        principal = request.principal
        session_id = _header(request, b"mcp-session-id") or ""
        entry = self._session(session_id, principal) or await self._resumed(session_id, principal)
        t.sessions.close(entry.id)
        request.setResponseCode(204)
        request.finish()


def _no_such_session() -> NotFound:
    return NotFound("no such session; send initialize to start a new one", code="session_not_found")


def _header(request, name: bytes) -> str | None:
    value = request.getHeader(name)
    return value.decode("latin-1") if value is not None else None
