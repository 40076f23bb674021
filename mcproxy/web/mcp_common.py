"""What the MCP transports share: media-type checks, JSON-RPC over HTTP bodies, and the
wording of work cut short (their Host and Origin rules: `mcproxy.web.origins`)."""

from collections.abc import Mapping
from io import BytesIO
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred
from twisted.protocols.basic import FileSender

from mcproxy.errors import BadRequest, MCProxyError
from mcproxy.mcp.codes import REQUEST_CANCELLED, REQUEST_TIMEOUT, SESSION_ENDED
from mcproxy.mcp.jsonrpc import Message, Request, encode, error_message, parse_message
from mcproxy.web.http import answered, lift_deadline, read_body, require_json

if TYPE_CHECKING:
    from mcproxy.web.site import ProxyRequest

#: Request bodies this big or bigger are parsed in a thread.
OFF_REACTOR_BODY_BYTES = 256 * 1024
#: Answers this big or bigger are written a piece at a time, as the client takes them.
STREAMED_ANSWER_BYTES = 256 * 1024


class NotAcceptable(MCProxyError):
    """The client's ``Accept`` header allows no media type we could answer with."""

    http_status = 406
    code = "not_acceptable"


def accepts(request: "ProxyRequest") -> tuple[bool, bool]:
    """Whether the client accepts (JSON, SSE) answers; a missing Accept accepts both."""
    raw = request.getHeader(b"accept")
    if raw is None:
        return True, True
    kinds = {part.split(";")[0].strip().lower() for part in raw.decode("latin-1").split(",")}
    anything = "*/*" in kinds or "application/*" in kinds
    return (
        anything or "application/json" in kinds,
        "*/*" in kinds or "text/*" in kinds or "text/event-stream" in kinds,
    )


async def read_rpc(request: "ProxyRequest", limit: int, run_blocking=None) -> Message:
    """The body as one JSON-RPC message; 415 unless it is JSON, 413 over the limit. A body of
    megabytes (a long form) is parsed by ``run_blocking`` (a thread), not in the reactor.

    Raises `RpcError` for a body that is JSON-RPC-invalid.
    """
    require_json(request)
    body = read_body(request, limit)
    if run_blocking is not None and len(body) >= OFF_REACTOR_BODY_BYTES:
        return await run_blocking(parse_message, body)
    return parse_message(body)


def write_rpc(request: "ProxyRequest", status: int, message: dict, headers: dict[bytes, bytes] | None = None) -> None:
    """Finish ``request`` with one JSON-RPC message as its body.

    A body of megabytes (a read image) goes out through a producer, a piece each time the
    connection has sent the one before, so one answer never fills the process's buffers nor
    holds a slow client's share of memory at once. It is under way from then on: like an
    answer written whole, it is no longer subject to the request's time limit.
    """
    if answered(request):
        return
    data = encode(message)
    request.setResponseCode(status)
    for name, value in (headers or {}).items():
        request.setHeader(name, value)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Content-Length", str(len(data)).encode("ascii"))
    request.setHeader(b"Cache-Control", b"no-store")
    if len(data) >= STREAMED_ANSWER_BYTES:
        lift_deadline(request)
        sent = FileSender().beginFileTransfer(BytesIO(data), request)
        sent.addCallback(lambda _: None if answered(request) else request.finish())
        sent.addErrback(lambda _: None)  # the client went away: nothing left to answer
        return
    request.write(data)
    request.finish()


def write_accepted(request: "ProxyRequest") -> None:
    """202 with no body: a notification or a message whose answer goes elsewhere."""
    if answered(request):
        return
    request.setResponseCode(202)
    request.setHeader(b"Content-Length", b"0")
    request.finish()


def wants_progress(message: Request) -> bool:
    """Whether the request asks for progress notifications (``_meta.progressToken``)."""
    meta = (message.params or {}).get("_meta")
    return isinstance(meta, Mapping) and meta.get("progressToken") is not None


class Cutoff:
    """Cuts a request's work short at its time limit, and words the error that answers a
    request whose work the server cancelled (time limit, or the end of its session)."""

    def __init__(self, work: Deferred):
        self._work = work
        self.timed_out: float | None = None

    def time_out(self, seconds: float) -> None:
        """The request outlived ``seconds`` (``server.request_timeout``): cancel its work."""
        self.timed_out = seconds
        self._work.cancel()

    def error(self, message: Request, session_closed: bool) -> dict:
        """The JSON-RPC error answering ``message`` after its work was cancelled."""
        if self.timed_out is not None:
            return error_message(
                message.id,
                REQUEST_TIMEOUT,
                f"Request timed out: no answer within {self.timed_out:g} s (server.request_timeout); its "
                "work was cancelled. Try again, or ask for less at once",
            )
        if session_closed:
            return error_message(
                message.id,
                SESSION_ENDED,
                "The session ended (deleted, idle too long, its credential revoked, or the server stopping) "
                "before this request was answered; its work was cancelled. Start a new session",
            )
        return error_message(message.id, REQUEST_CANCELLED, "Request cancelled")


def missing_session(message: str) -> BadRequest:
    return BadRequest(message, code="session_required")
