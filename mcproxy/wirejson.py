"""JSON as it crosses a socket: orjson, several times the standard library's pace, with
the standard library for the few things orjson refuses.

orjson refuses to encode integers beyond 64 bits and keys that are not strings, and to
decode a lone surrogate escape (``"\\ud800"``), which Chrome can send for a broken JS
string; those take the standard library's path and come out as they always did.
"""

import json
from collections.abc import Callable
from typing import Any

import orjson

_OPTIONS: dict[str, Any] = {"separators": (",", ":"), "ensure_ascii": False}
_ENCODER = json.JSONEncoder(**_OPTIONS)


def dumps(value: Any, default: Callable[[Any], Any] | None = None) -> bytes:
    """Compact UTF-8 JSON; ``default`` turns what JSON cannot hold into what it can."""
    try:
        return orjson.dumps(value, default=default)
    except TypeError:
        encoder = _ENCODER if default is None else json.JSONEncoder(**_OPTIONS, default=default)
        return encoder.encode(value).encode("utf-8")


def loads(data: str | bytes) -> Any:
    """The JSON value of ``data``; ValueError (or RecursionError) when it is not JSON."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)
