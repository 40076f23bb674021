"""What a browser's message is: JSON, decoded in pieces when big, checked for CDP's shape.

What the browser sends is untrusted (whoever answers at the registered URL): a message
that is not JSON, not an object, or has fields of the wrong type raises `MalformedMessage`
here, and the connection drops it (or fails only the call it answers).
"""

import json
import re
from collections.abc import Callable
from typing import Any, cast

from mcproxy import wirejson

#: Messages this big or bigger are decoded in a thread: parsing a few MB of JSON takes
#: long enough to stall every other user's calls if done in a reactor turn.
THREAD_DECODE_BYTES = 1024 * 1024


class MalformedMessage(ValueError):
    """A message from the browser that is no CDP reply or event (it is dropped)."""


#: How deep `loads_in_pieces` takes objects and arrays apart itself; what lies deeper (a node
#: of an accessibility tree, say) is decoded by one call of the C decoder.
SPLIT_DEPTH = 3
_DECODER = json.JSONDecoder()
_SPACE = re.compile(r"[ \t\n\r]*")
#: ``_SPACE.match`` typed as it behaves: a pattern of ``*`` always matches, if only the empty string.
_skip_space = cast("Callable[[str, int], re.Match[str]]", _SPACE.match)


def loads_in_pieces(text: str) -> Any:
    """``json.loads`` built from many small calls of the C decoder instead of one long one.

    The decoder never lets go of the GIL, so one call on a message of 50,000 accessibility
    nodes would hold the reactor's thread for a third of a second even when it runs in a
    thread; between small calls the interpreter switches threads as usual.
    """
    value, end = _piece(text, _skip_space(text, 0).end(), 0)
    if _skip_space(text, end).end() != len(text):
        raise ValueError("extra data after the JSON value")
    return value


def _piece(text: str, at: int, depth: int) -> tuple[Any, int]:
    opening = text[at : at + 1]
    if depth >= SPLIT_DEPTH or opening not in ("{", "["):
        return _DECODER.raw_decode(text, at)
    closing = "}" if opening == "{" else "]"
    items: Any = {} if opening == "{" else []
    at = _skip_space(text, at + 1).end()
    if text[at : at + 1] == closing:
        return items, at + 1
    while True:
        if opening == "{":
            key, at = _DECODER.raw_decode(text, at)
            if not isinstance(key, str):
                raise ValueError("an object key is not a string")
            at = _skip_space(text, at).end()
            if text[at : at + 1] != ":":
                raise ValueError("expected ':' after an object key")
            value, at = _piece(text, _skip_space(text, at + 1).end(), depth + 1)
            items[key] = value
        else:
            value, at = _piece(text, at, depth + 1)
            items.append(value)
        at = _skip_space(text, at).end()
        separator = text[at : at + 1]
        if separator == closing:
            return items, at + 1
        if separator != ",":
            raise ValueError(f"expected ',' or '{closing}'")
        at = _skip_space(text, at + 1).end()


def parse_message(data: str | bytes) -> dict:
    """One CDP message decoded and checked: a reply (``id``) or an event (``method``).

    Pure, so it runs in a thread for big messages (decoded in pieces then, see
    `loads_in_pieces`). Raises `MalformedMessage` saying why.
    """
    try:
        if len(data) >= THREAD_DECODE_BYTES:
            message = loads_in_pieces(data.decode("utf-8") if isinstance(data, bytes) else data)
        else:
            message = wirejson.loads(data)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser's stack
        raise MalformedMessage("not JSON") from None
    if not isinstance(message, dict):
        raise MalformedMessage("not a JSON object")
    if not isinstance(message.get("sessionId", ""), str):
        raise MalformedMessage("sessionId is not a string")
    if "id" in message:
        if not isinstance(message["id"], int) or isinstance(message["id"], bool):
            raise MalformedMessage("id is not an integer")
    elif not isinstance(message.get("method"), str):
        raise MalformedMessage("neither a reply (id) nor an event (method)")
    elif not isinstance(message.get("params") or {}, dict):
        raise MalformedMessage("params is not an object")
    return message
