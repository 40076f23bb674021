"""Every JSON-RPC error code the proxy answers with, in one place.

The standard and MCP-defined codes come from `mcp_types`; the rest are this server's own
(implementation-defined, in the -32000 to -32099 range, or the cancellation code the 2025
Streamable HTTP revisions use).
"""

from mcp_types import (
    HEADER_MISMATCH,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    MISSING_REQUIRED_CLIENT_CAPABILITY,
    PARSE_ERROR,
    REQUEST_TIMEOUT,
    UNSUPPORTED_PROTOCOL_VERSION,
)

__all__ = [
    "HEADER_MISMATCH",
    "INTERNAL_ERROR",
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "METHOD_NOT_FOUND",
    "MISSING_REQUIRED_CLIENT_CAPABILITY",
    "NOT_INITIALIZED",
    "OWNER_LOST",
    "PARSE_ERROR",
    "RATE_LIMITED",
    "REQUEST_CANCELLED",
    "REQUEST_TIMEOUT",
    "SESSION_ENDED",
    "SHUTTING_DOWN",
    "TOO_MANY_IN_FLIGHT",
    "UNSUPPORTED_PROTOCOL_VERSION",
    "stateless_status",
]

REQUEST_CANCELLED = -32800
"""What a 2025-era Streamable HTTP POST ends with when its request was cancelled."""

TOO_MANY_IN_FLIGHT = -32010
"""The session (or, stateless, the user) already has ``session.max_in_flight`` requests running."""

SHUTTING_DOWN = -32011
"""A tool call cut short because the server stops."""

SESSION_ENDED = -32012
"""A request cut short because its session ended (deleted, expired, its token revoked, the
server stopping)."""

OWNER_LOST = -32013
"""A request whose answer was lost with the cluster process running it (it may or may not have
happened)."""

RATE_LIMITED = -32029
"""Too many requests; the error's data says when to retry."""

NOT_INITIALIZED = INVALID_REQUEST
"""A request other than ping arrived before ``initialize`` (an invalid request at this point)."""

_CLIENT_FAULTS = {
    METHOD_NOT_FOUND: 404,
    PARSE_ERROR: 400,
    INVALID_REQUEST: 400,
    INVALID_PARAMS: 400,
    HEADER_MISMATCH: 400,
    MISSING_REQUIRED_CLIENT_CAPABILITY: 400,
    UNSUPPORTED_PROTOCOL_VERSION: 400,
}


def stateless_status(code: int) -> int:
    """HTTP status of a 2026-07-28 error answer: client faults 4xx, the rest 200."""
    return _CLIENT_FAULTS.get(code, 200)


def rpc_error_status(code: int) -> int:
    """HTTP status of a JSON-RPC error raised before dispatch."""
    return 404 if code == METHOD_NOT_FOUND else 400
