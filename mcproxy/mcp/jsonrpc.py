"""JSON-RPC 2.0 framing for MCP: decode one message, encode responses, errors, notifications.

Sans-IO: bytes in, light message objects and bytes out. Every message is checked here, by
hand, once (pydantic would cost more than the rest of a proxied call); batches are refused
(MCP removed them).
"""

from typing import Any

import attrs
import orjson
from pydantic import ValidationError

from mcproxy import wirejson
from mcproxy.mcp.codes import INVALID_REQUEST, PARSE_ERROR


class RpcError(Exception):
    """A JSON-RPC error to answer with; ``request_id`` is None when the id is unknown."""

    def __init__(self, code: int, message: str, data: Any = None, request_id: Any = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data
        self.request_id = request_id

    def to_message(self, request_id: Any = None) -> dict:
        """The JSON-RPC error response for this error."""
        rid = self.request_id if request_id is None else request_id
        return error_message(rid, self.code, self.message, self.data)


@attrs.frozen
class Request:
    """A JSON-RPC request: the client waits for an answer carrying its ``id``."""

    id: str | int
    method: str
    params: dict | None = None


@attrs.frozen
class Notification:
    """A JSON-RPC notification: nothing answers it."""

    method: str
    params: dict | None = None


@attrs.frozen
class Reply:
    """A client's result or error for a request; this server sends the client no requests,
    so nothing waits for one."""

    id: str | int | None


Message = Request | Notification | Reply


def parse_message(body: bytes | str) -> Message:
    """Decode exactly one JSON-RPC message, raising `RpcError` -32700 / -32600.

    orjson decodes the body: text JSON does not allow (NaN, lone surrogates) is a parse
    error, and integers beyond 64 bits arrive as floats, as in JavaScript clients.
    """
    try:
        decoded = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise RpcError(PARSE_ERROR, "Parse error: the body is not valid JSON") from None
    if isinstance(decoded, list):
        raise RpcError(INVALID_REQUEST, "Batches are not supported; send one JSON-RPC message per request")
    if not isinstance(decoded, dict):
        raise RpcError(INVALID_REQUEST, "Invalid request: expected a JSON-RPC object")
    rid = decoded.get("id")
    sane_id = rid if is_request_id(rid) else None
    problem = _problem(decoded, rid)
    if problem is not None:
        raise RpcError(INVALID_REQUEST, f"Invalid request: {problem}", request_id=sane_id)
    if "method" not in decoded:
        return Reply(rid)
    if "id" in decoded:
        return Request(decoded["id"], decoded["method"], decoded.get("params"))
    return Notification(decoded["method"], decoded.get("params"))


def is_request_id(value: Any) -> bool:
    """Whether decoded JSON ``value`` may be a request id (or a progress token): a string or
    an integer (not a boolean)."""
    return type(value) in (str, int)


def _problem(decoded: dict, rid: Any) -> str | None:
    """The first thing wrong with a decoded message, or None when it is a request, a
    notification, or a reply."""
    if decoded.get("jsonrpc") != "2.0":
        return 'jsonrpc must be "2.0"'
    if "method" in decoded:
        if not isinstance(decoded["method"], str):
            return "method must be a string"
        if not isinstance(decoded.get("params"), (dict, type(None))):
            return "params must be an object"
        if "id" in decoded and not is_request_id(rid):
            return "id must be a string or an integer"
        return None
    problems = []
    if "result" in decoded:
        problems.append(_result_problem(decoded, rid))
    if "error" in decoded:
        problems.append(_error_problem(decoded, rid))
    if not problems:
        return "method is missing"
    return None if None in problems else problems[0]  # a reply is a result or an error


def _result_problem(decoded: dict, rid: Any) -> str | None:
    if not is_request_id(rid):
        return "id must be a string or an integer"
    return None if isinstance(decoded["result"], dict) else "result must be an object"


def _error_problem(decoded: dict, rid: Any) -> str | None:
    if "id" not in decoded or not (rid is None or is_request_id(rid)):
        return "id must be a string, an integer or null"
    error = decoded["error"]
    if not (isinstance(error, dict) and type(error.get("code")) is int):
        return "error must be an object with an integer code"
    return None if isinstance(error.get("message"), str) else "error.message must be a string"


def readable(error: ValidationError) -> str:
    """A one-line summary of a pydantic error naming the offending fields."""
    parts = []
    for problem in error.errors()[:3]:
        loc = [str(p) for p in problem.get("loc", ()) if p not in ("params",)]
        # Surface-model locations start with the union arm or model name; keep the field path.
        field = ".".join(p for p in loc if not p[:1].isupper()) or "params"
        parts.append(f"{field}: {problem.get('msg', 'invalid')}")
    return "; ".join(parts)


def result_message(request_id: Any, result: "dict | Encoded") -> dict:
    """A JSON-RPC success response."""
    return {"jsonrpc": "2.0", "id": request_id, "result": result}


def error_message(request_id: Any, code: int, message: str, data: Any = None) -> dict:
    """A JSON-RPC error response (``id`` stays present as null when unknown)."""
    error: dict = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": "2.0", "id": request_id, "error": error}


def notification_message(method: str, params: dict | None = None) -> dict:
    """A JSON-RPC notification."""
    message: dict = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        message["params"] = params
    return message


class Encoded(bytes):
    """A JSON value already encoded (a big result, encoded off the reactor): `encode` puts it
    into its message as it is."""


#: Compact UTF-8 JSON (orjson, with the standard library for what it refuses).
to_json = wirejson.dumps


#: Characters of a string `to_json_in_pieces` encodes in one call (JSON escapes each
#: character on its own, so the pieces join into the string's encoding).
STRING_PIECE = 256 * 1024

#: Items of a long list `to_json_in_pieces` encodes in one call: one call per item would
#: cost more in calls than in encoding (10,000 console messages), one for all would hold
#: the GIL for the whole list.
LIST_PIECE = 256


def to_json_in_pieces(value: Any, depth: int = 0) -> bytes:
    """`to_json` built from many small encoder calls: the C encoder holds the GIL for a whole
    call, so a thread encoding megabytes at once would stall the reactor all the same. The
    outer three levels of objects and arrays (a result, its structured content, a list in
    it) are taken apart; what lies deeper is encoded in one call each, but for long strings
    (an image's base64), which are encoded `STRING_PIECE` characters at a time, and for
    long lists of small items, which are encoded `LIST_PIECE` items at a time."""
    if isinstance(value, str) and len(value) > STRING_PIECE:
        pieces = (to_json(value[at : at + STRING_PIECE])[1:-1] for at in range(0, len(value), STRING_PIECE))
        return b'"' + b"".join(pieces) + b'"'
    if depth < 3 and isinstance(value, dict):
        return (
            b"{" + b",".join(to_json(str(k)) + b":" + to_json_in_pieces(v, depth + 1) for k, v in value.items()) + b"}"
        )
    if depth < 3 and isinstance(value, list):
        if len(value) > LIST_PIECE and not any(isinstance(item, str) and len(item) > STRING_PIECE for item in value):
            runs = (to_json(value[at : at + LIST_PIECE])[1:-1] for at in range(0, len(value), LIST_PIECE))
            return b"[" + b",".join(runs) + b"]"
        return b"[" + b",".join(to_json_in_pieces(item, depth + 1) for item in value) + b"]"
    return to_json(value)


def encode(message: dict) -> bytes:
    """Compact UTF-8 JSON for the wire."""
    result = message.get("result")
    if isinstance(result, Encoded):
        rest = to_json({key: value for key, value in message.items() if key != "result"})
        return rest[:-1] + b',"result":' + result + b"}"
    return to_json(message)
