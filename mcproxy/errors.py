"""The exception hierarchy.

Each error knows how it reaches a client: an HTTP status with a JSON body
``{"error": {"code", "message"}}``, a JSON-RPC error code, or (for `ToolError`) an
``isError`` tool result the model can act on.
"""

from mcproxy.mcp.codes import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    RATE_LIMITED,
)


class MCProxyError(Exception):
    """Base class: an error we expected and can explain to the client."""

    http_status = 500
    code = "internal_error"
    jsonrpc_code = INTERNAL_ERROR
    #: Whole seconds the client should wait before it tries again (None: not said).
    retry_after: int | None = None

    def __init__(self, message: str, *, code: str | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def to_json(self) -> dict:
        """The JSON error object of the HTTP API."""
        return {"error": {"code": self.code, "message": self.message}}


class BadRequest(MCProxyError):
    """The request is malformed or its fields are invalid."""

    http_status = 400
    code = "bad_request"
    jsonrpc_code = INVALID_PARAMS


class Unauthorized(MCProxyError):
    """No credential, or one we do not accept; ``reason`` labels the failure metric."""

    http_status = 401
    code = "unauthorized"
    jsonrpc_code = INVALID_REQUEST

    def __init__(self, message: str, *, reason: str = "invalid", code: str | None = None):
        super().__init__(message, code=code)
        self.reason = reason


class Forbidden(MCProxyError):
    """A valid credential that lacks the permission, or a refused origin or address.

    ``scope`` names the permission that was missing; it goes into the 403's
    ``WWW-Authenticate: Bearer error="insufficient_scope", scope="..."`` (RFC 6750).
    """

    http_status = 403
    code = "forbidden"
    jsonrpc_code = INVALID_REQUEST

    def __init__(self, message: str, *, code: str | None = None, scope: str | None = None):
        super().__init__(message, code=code)
        self.scope = scope


class NotFound(MCProxyError):
    """No such thing, or a thing that belongs to someone else."""

    http_status = 404
    code = "not_found"
    jsonrpc_code = INVALID_PARAMS


class MethodNotAllowed(MCProxyError):
    """The route exists but not with this HTTP method."""

    http_status = 405
    code = "method_not_allowed"


class Conflict(MCProxyError):
    """The request contradicts the current state."""

    http_status = 409
    code = "conflict"


class PayloadTooLarge(MCProxyError):
    """The body is over ``server.max_body_bytes``."""

    http_status = 413
    code = "payload_too_large"


class SlowRequest(MCProxyError):
    """The request's head or body did not arrive in time."""

    http_status = 408
    code = "request_too_slow"


class TooManyConnections(MCProxyError):
    """The client's address holds as many connections as ``server.max_connections_per_address`` allows."""

    http_status = 503
    code = "too_many_connections"


class UnsupportedMediaType(MCProxyError):
    """The body is not JSON."""

    http_status = 415
    code = "unsupported_media_type"


class LimitReached(MCProxyError):
    """A configured ``limits.*`` bound was hit for this user; the message names the key."""

    http_status = 429
    code = "limit_reached"


class ServerFull(LimitReached):
    """A process-wide ``limits.*`` bound was hit; another process may have room."""

    http_status = 503
    code = "server_full"


class RateLimited(MCProxyError):
    """Too many requests; ``retry_after`` is whole seconds."""

    http_status = 429
    code = "rate_limited"
    jsonrpc_code = RATE_LIMITED

    def __init__(self, message: str, *, retry_after: int):
        super().__init__(message)
        self.retry_after = max(1, int(retry_after))


class BrowserUnavailable(MCProxyError):
    """The user's browser cannot be reached right now; tools report it as a tool error."""

    http_status = 502
    code = "browser_unavailable"


class InvalidBrowserURL(BadRequest):
    """A ``browserURL`` that is malformed, forbidden, or not a Chrome DevTools endpoint."""

    code = "invalid_browser_url"


class ToolError(MCProxyError):
    """A tool failed in a way the model can act on; becomes an ``isError`` result."""

    http_status = 200
    code = "tool_error"


class CDPError(ToolError):
    """Chrome answered a DevTools Protocol call with an error."""

    def __init__(self, message: str, *, cdp_code: int | None = None):
        super().__init__(message)
        self.cdp_code = cdp_code
