"""What the MCP transports share: origin and media-type checks, JSON-RPC over HTTP bodies.

Host policy: see `check_host`. Origin policy (DNS-rebinding protection): a request without ``Origin`` is allowed (IDE
clients send none); an origin in ``cors.allowed_origins`` (or ``*`` there) is allowed; a
loopback origin (``http(s)://localhost``, ``127.0.0.0/8``, ``[::1]``, any port) is allowed
only when every listener of the server is on a loopback interface. Anything else is 403.
A trusted origin gets CORS headers (and ``OPTIONS`` preflights are answered) so that
browser-based MCP clients can use the endpoints.
"""

import ipaddress
import re
from typing import Any, Mapping
from urllib.parse import urlsplit

from mcp_types import REQUEST_TIMEOUT, JSONRPCRequest
from twisted.internet.defer import Deferred
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from mcproxy.errors import BadRequest, Forbidden, MCProxyError, MethodNotAllowed
from mcproxy.mcp.jsonrpc import REQUEST_CANCELLED, RpcError, encode, error_message, parse_message
from mcproxy.web.http import answered, read_body, request_id, require_json, serve, write_error

_EXPOSED_HEADERS = b"Mcp-Session-Id, MCP-Protocol-Version, X-Request-Id, WWW-Authenticate"
_ALLOWED_HEADERS = (
    b"Authorization, Content-Type, Accept, Mcp-Session-Id, MCP-Protocol-Version, Mcp-Method, Mcp-Name, "
    b"Last-Event-ID, X-Request-Id, X-User-Id"
)


SESSION_ENDED = -32012
#: Request bodies this big or bigger are parsed in a thread.
OFF_REACTOR_BODY_BYTES = 256 * 1024
"""JSON-RPC error code of a request cut short because its session ended (deleted, expired,
its token revoked, the server stopping)."""


class NotAcceptable(MCProxyError):
    """The client's ``Accept`` header allows no media type we could answer with."""

    http_status = 406
    code = "not_acceptable"


def is_loopback_host(host: str | None) -> bool:
    """Whether ``host`` (a name or an address, without brackets) is this machine."""
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def listens_on_loopback_only(listen: tuple[str, ...]) -> bool:
    """Whether every endpoint string listens on a loopback interface (or a UNIX socket)."""
    for endpoint in listen:
        if endpoint.startswith("unix:"):
            continue
        match = re.search(r"(?:^|:)interface=((?:\\:|[^:])+)", endpoint)
        interface = match.group(1).replace("\\", "").strip("[]") if match else None
        if not is_loopback_host(interface):
            return False
    return bool(listen)


def check_origin(request: IRequest, allowed: tuple[str, ...], allow_loopback: bool) -> None:
    """Raise `Forbidden` for a browser origin we do not trust (see the module docstring)."""
    raw = request.getHeader(b"origin")
    if raw is None:
        return
    origin = raw.decode("latin-1").strip().rstrip("/")
    trusted = "*" in allowed or origin in (a.rstrip("/") for a in allowed)
    if not trusted and allow_loopback:
        parts = urlsplit(origin)
        trusted = parts.scheme in ("http", "https") and is_loopback_host(parts.hostname)
    if not trusted:
        raise Forbidden(
            f"origin {origin!r} is not allowed; add it to cors.allowed_origins", code="origin_not_allowed"
        )
    # CORS, so that browser-based MCP clients of a trusted origin can read the answers.
    request.setHeader(b"Access-Control-Allow-Origin", origin.encode("latin-1"))
    request.setHeader(b"Access-Control-Expose-Headers", _EXPOSED_HEADERS)
    request.setHeader(b"Vary", b"Origin")


def check_host(request: IRequest, allowed: tuple[str, ...], allow_loopback: bool) -> None:
    """Raise `Forbidden` for a ``Host`` this server does not answer to (DNS rebinding).

    A page whose own name was re-pointed at the proxy's address talks to it under that
    name. Host names in ``allowed`` (``server.allowed_hosts`` and the host of
    ``server.public_url``) always pass; loopback names pass on a loopback-only server; with
    neither configured on a public listener, every host passes (nothing to compare with).
    """
    if not allowed and not allow_loopback:
        return
    raw = (request.getHeader(b"host") or b"").decode("latin-1").strip()
    try:
        host = urlsplit("//" + raw).hostname if raw else None
    except ValueError:
        host = None
    if host is not None and (host in allowed or (allow_loopback and is_loopback_host(host))):
        return
    raise Forbidden(
        f"host {raw!r} is not a name of this server; add it to server.allowed_hosts", code="host_not_allowed"
    )


def accepts(request: IRequest) -> tuple[bool, bool]:
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


async def read_rpc(request: IRequest, limit: int, run_blocking=None) -> Any:
    """The body as one JSON-RPC message; 415 unless it is JSON, 413 over the limit. A body of
    megabytes (a long form) is parsed by ``run_blocking`` (a thread), not in the reactor.

    Raises `RpcError` for a body that is JSON-RPC-invalid.
    """
    require_json(request)
    body = read_body(request, limit)
    if run_blocking is not None and len(body) >= OFF_REACTOR_BODY_BYTES:
        return await run_blocking(parse_message, body)
    return parse_message(body)


def write_rpc(
    request: IRequest, status: int, message: dict, headers: dict[bytes, bytes] | None = None
) -> None:
    """Finish ``request`` with one JSON-RPC message as its body."""
    if answered(request):
        return
    data = encode(message)
    request.setResponseCode(status)
    for name, value in (headers or {}).items():
        request.setHeader(name, value)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Content-Length", str(len(data)).encode("ascii"))
    request.setHeader(b"Cache-Control", b"no-store")
    request.write(data)
    request.finish()


def client_of(request: IRequest) -> str | None:
    """The client address the site worked out for ``request`` (see `mcproxy.web.network`)."""
    return getattr(request, "mcproxy_client", None)


def write_accepted(request: IRequest) -> None:
    """202 with no body: a notification or a message whose answer goes elsewhere."""
    if answered(request):
        return
    request.setResponseCode(202)
    request.setHeader(b"Content-Length", b"0")
    request.finish()


def wants_progress(message: JSONRPCRequest) -> bool:
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

    def error(self, message: JSONRPCRequest, session_closed: bool) -> dict:
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


def rpc_error_status(error: RpcError) -> int:
    """HTTP status for a JSON-RPC error raised before dispatch."""
    return 404 if error.code == -32601 else 400


def missing_session(message: str) -> BadRequest:
    return BadRequest(message, code="session_required")


class McpEndpoint(Resource):
    """A leaf resource whose ``answer_<METHOD>`` coroutines answer; other methods get a JSON 405."""

    isLeaf = True

    def __init__(self, transports):
        super().__init__()
        self.t = transports
        self._allowed = sorted(name[len("answer_") :] for name in dir(self) if name.startswith("answer_"))

    def render(self, request):
        method = request.method.decode("ascii", "replace")
        allowed = self._allowed
        try:
            check_host(request, self.t.allowed_hosts, self.t.allow_loopback_origins)
        except Forbidden as e:
            write_error(request, e)
            return NOT_DONE_YET
        if method == "OPTIONS":
            return serve(request, lambda: self._preflight(request, allowed))
        answer = getattr(self, f"answer_{method}", None)
        if answer is None:
            request.setHeader(b"Allow", ", ".join(allowed).encode("ascii"))
            request_id(request)
            write_error(
                request, MethodNotAllowed(f"{method} is not allowed here; use {' or '.join(allowed)}")
            )
            return NOT_DONE_YET
        return serve(request, lambda: answer(request))

    async def _preflight(self, request, allowed: list[str]) -> None:
        """A CORS preflight: no credential is sent with it, so only the origin is checked."""
        check_origin(request, self.t.allowed_origins, self.t.allow_loopback_origins)
        methods = ", ".join(allowed).encode("ascii")
        request.setHeader(b"Allow", methods)
        request.setHeader(b"Access-Control-Allow-Methods", methods)
        request.setHeader(b"Access-Control-Allow-Headers", _ALLOWED_HEADERS)
        request.setHeader(b"Access-Control-Max-Age", b"600")
        request.setResponseCode(204)
        request.finish()
