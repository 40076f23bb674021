"""Small helpers every resource uses: JSON bodies in, JSON (and JSON errors) out, and the
time limit of a request (``server.request_timeout``)."""

import json
import os
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from mcproxy.auth.chain import challenge_headers
from mcproxy.errors import (
    BadRequest,
    MCProxyError,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from mcproxy.mcp.codes import REQUEST_TIMEOUT

if TYPE_CHECKING:
    from mcproxy.web.site import ProxyRequest

log = Logger()

_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}\Z")


class RequestTimeout(MCProxyError):
    """A request was not answered within ``server.request_timeout``; its work was cancelled."""

    http_status = 504
    code = "request_timeout"
    jsonrpc_code = REQUEST_TIMEOUT


def request_id(request: "ProxyRequest") -> str:
    """The request's id: the client's ``X-Request-Id`` when sane, else a new one; set on the response."""
    existing = request.request_id
    if existing:
        return existing
    given = request.getHeader(b"x-request-id")
    rid = None
    if given:
        text = given.decode("latin-1")
        if _SANE_REQUEST_ID.match(text):
            rid = text
    rid = rid or os.urandom(16).hex()  # as random as a UUID, without building one
    request.request_id = rid
    request.setHeader(b"X-Request-Id", rid.encode("ascii"))
    return rid


def answered(request: "ProxyRequest") -> bool:
    """Whether ``request`` needs no answer any more: it has one, or its client is gone."""
    return bool(request.finished) or request.gone


def write_json(request: "ProxyRequest", status: int, body: Any) -> None:
    """Finish ``request`` with a JSON body (or an empty body for 204); a no-op once answered
    (a time limit may have answered it first)."""
    if answered(request):
        return
    request.setResponseCode(status)
    if status == 204 or body is None:
        request.setHeader(b"Content-Length", b"0")
        request.finish()
        return
    data = json.dumps(body, separators=(",", ":")).encode("utf-8")
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Content-Length", str(len(data)).encode("ascii"))
    request.setHeader(b"Cache-Control", b"no-store")
    request.write(data)
    request.finish()


def error_headers(request: "ProxyRequest", error: MCProxyError) -> None:
    """Headers that go with an error: ``Retry-After`` when it says when to retry (429, a 503 of
    the cluster), ``WWW-Authenticate`` on 401/403."""
    retry_after = error.retry_after
    if retry_after is not None:
        request.setHeader(b"Retry-After", str(retry_after).encode("ascii"))
    challenges = challenge_headers(request, error)
    if challenges:
        request.responseHeaders.setRawHeaders(b"WWW-Authenticate", [c.encode("latin-1") for c in challenges])


def write_error(request: "ProxyRequest", error: MCProxyError) -> None:
    """Finish ``request`` with the JSON error body of ``error``."""
    error_headers(request, error)
    write_json(request, error.http_status, error.to_json())


def write_failure(request: "ProxyRequest", failure) -> None:
    """Errback for resource coroutines: known errors as JSON, anything else as a logged 500."""
    if answered(request):
        return
    if failure.check(MCProxyError):
        write_error(request, failure.value)
        return
    log_unhandled(request, failure)
    write_error(request, INTERNAL)


INTERNAL = MCProxyError("internal error; the server log has details")


def cancel_on_deadline(request: "ProxyRequest", work: Deferred) -> None:
    """Cancel ``work`` (what answers ``request``) when the request outlives its time limit or
    its client goes away."""
    if not work.called:
        request.work = work


def set_deadline(request: "ProxyRequest", clock, seconds: float) -> None:
    """Give ``request`` ``seconds`` to be answered.

    Past them, its `on_deadline` handler runs if it has one; otherwise it is answered with
    504 ``request_timeout`` and its work (`cancel_on_deadline`) is cancelled. The request
    calls `lift_deadline` when it is answered or its client goes away (`ProxyRequest`), and
    so does an event stream, which has no time limit.
    """
    request.deadline = clock.callLater(seconds, _deadline_passed, request, seconds)


def on_deadline(request: "ProxyRequest", handler: Callable[[float], None]) -> None:
    """Call ``handler(seconds)`` instead of the 504 when ``request`` outlives its time limit."""
    request.on_deadline = handler


def lift_deadline(request: "ProxyRequest") -> None:
    """No time limit for ``request`` any more (it became a long-lived event stream)."""
    deadline = request.deadline
    if deadline is not None and deadline.active():
        deadline.cancel()
    request.deadline = None


def _deadline_passed(request: "ProxyRequest", seconds: float) -> None:
    request.deadline = None
    if answered(request):
        return
    log.warn(
        "No answer to {method} {path} within {seconds} s (request {request_id}): cut short",
        method=request.method.decode("latin-1"),
        path=request.path.decode("latin-1"),
        seconds=seconds,
        request_id=request_id(request),
    )
    handler = request.on_deadline
    if handler is not None:
        handler(seconds)
        return
    write_error(
        request,
        RequestTimeout(
            f"the request was not answered within {seconds:g} s (server.request_timeout); "
            "its work was cancelled, try again or ask for less"
        ),
    )
    work = request.work
    if work is not None:
        work.cancel()


def log_unhandled(request: "ProxyRequest", failure) -> None:
    """Log a bug that reached the HTTP layer, with the request it broke."""
    log.failure(
        "Unhandled error answering {method} {path} (request {request_id})",
        failure,
        method=request.method.decode("latin-1"),
        path=request.path.decode("latin-1"),
        request_id=request_id(request),
    )


def read_body(request: "ProxyRequest", limit: int) -> bytes:
    """The request body, refusing bodies over ``limit`` bytes with 413."""
    content = request.content
    if content is None:  # no body at all
        return b""
    content.seek(0, 2)
    size = content.tell()
    if size > limit:
        raise PayloadTooLarge(f"request body is {size} bytes; the limit is {limit}")
    content.seek(0)
    return content.read()


def read_json_object(request: "ProxyRequest", limit: int) -> dict:
    """Parse the body as a JSON object, with 400 errors that say what is wrong."""
    raw = read_body(request, limit)
    if not raw.strip():
        raise BadRequest("request body is empty; expected a JSON object", code="invalid_json")
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadRequest(f"request body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(value, dict):
        raise BadRequest("request body must be a JSON object", code="invalid_json")
    return value


_JSON_TYPE = re.compile(r"^application/([a-z0-9.+-]+\+)?json\s*(;.*)?$", re.I)


def require_json(request: "ProxyRequest") -> None:
    """415 unless the body is declared JSON (``application/json`` or ``application/*+json``):
    a form post from any web page cannot declare it without a CORS preflight."""
    content_type = (request.getHeader(b"content-type") or b"").decode("latin-1")
    if not _JSON_TYPE.match(content_type.strip()):
        raise UnsupportedMediaType(f"Content-Type must be application/json, got {content_type or 'none'!r}")
