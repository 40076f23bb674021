"""JSON as it crosses a socket: orjson, several times the standard library's pace, with
the standard library for the few things orjson refuses.

orjson refuses to encode integers beyond 64 bits and keys that are not strings, and to
decode a lone surrogate escape (``"\\ud800"``), which Chrome can send for a broken JS
string; those take the standard library's path and come out as they always did.
"""

import json
from typing import Any

import orjson

_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return _ENCODER.encode(value).encode("utf-8")


def loads(data: str | bytes) -> Any:
    """The JSON value of ``data``; ValueError (or RecursionError) when it is not JSON."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)
