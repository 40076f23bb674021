"""Small helpers every resource uses: JSON bodies in, JSON (and JSON errors) out."""

import json
import re
import uuid
from typing import Any

from twisted.logger import Logger
from twisted.web.iweb import IRequest

from mcproxy.auth.chain import challenge_headers
from mcproxy.errors import BadRequest, MCProxyError, PayloadTooLarge, RateLimited

log = Logger()

_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def request_id(request: IRequest) -> str:
    """The request's id: the client's ``X-Request-Id`` when sane, else a new one; set on the response."""
    existing = getattr(request, "mcproxy_request_id", None)
    if existing:
        return existing
    given = request.getHeader(b"x-request-id")
    rid = None
    if given:
        text = given.decode("latin-1")
        if _SANE_REQUEST_ID.match(text):
            rid = text
    rid = rid or uuid.uuid4().hex
    request.mcproxy_request_id = rid
    request.setHeader(b"X-Request-Id", rid.encode("ascii"))
    return rid


def write_json(request: IRequest, status: int, body: Any) -> None:
    """Finish ``request`` with a JSON body (or an empty body for 204)."""
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


def error_headers(request: IRequest, error: MCProxyError) -> None:
    """Headers that go with an error: ``Retry-After`` on 429, ``WWW-Authenticate`` on 401/403."""
    if isinstance(error, RateLimited):
        request.setHeader(b"Retry-After", str(error.retry_after).encode("ascii"))
    challenges = challenge_headers(request, error)
    if challenges:
        request.responseHeaders.setRawHeaders(
            b"WWW-Authenticate", [c.encode("latin-1") for c in challenges]
        )


def write_error(request: IRequest, error: MCProxyError) -> None:
    """Finish ``request`` with the JSON error body of ``error``."""
    error_headers(request, error)
    write_json(request, error.http_status, error.to_json())


def write_failure(request: IRequest, failure) -> None:
    """Errback for resource coroutines: known errors as JSON, anything else as a logged 500."""
    if request.finished or getattr(request, "_disconnected", False):
        return
    if failure.check(MCProxyError):
        write_error(request, failure.value)
        return
    log_unhandled(request, failure)
    write_error(request, INTERNAL)


INTERNAL = MCProxyError("internal error; the server log has details")


def log_unhandled(request: IRequest, failure) -> None:
    """Log a bug that reached the HTTP layer, with the request it broke."""
    log.failure(
        "Unhandled error answering {method} {path} (request {request_id})",
        failure,
        method=request.method.decode("latin-1"),
        path=request.path.decode("latin-1"),
        request_id=request_id(request),
    )


def read_body(request: IRequest, limit: int) -> bytes:
    """The request body, refusing bodies over ``limit`` bytes with 413."""
    content = request.content
    content.seek(0, 2)
    size = content.tell()
    if size > limit:
        raise PayloadTooLarge(f"request body is {size} bytes; the limit is {limit}")
    content.seek(0)
    return content.read()


def read_json_object(request: IRequest, limit: int) -> dict:
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
