"""What collection keeps of a page's console and network: entries cut to size, as text.

Console arguments (CDP RemoteObjects) become text when they arrive, from what the event
carries (no extra calls): the page may have dropped the objects by the time a tool asks.
Every entry carries ``cost``, its accounted size (`ENTRY_OVERHEAD`, an upper estimate of
its objects, plus the characters of its strings).
"""

import json
import re
from collections.abc import Iterable

TRUNCATED = "... <truncated>"
MAX_FRAMES = 20
MAX_FIELD = 4096
#: Accounted sizes, upper estimates of CPython's: an entry besides its strings (object,
#: tuples, its slot in the journal), a string besides its characters, a header pair.
ENTRY_OVERHEAD = 384
#: What a console message's list line adds around its text and type: ``msgid=``, the id
#: (at most 16 digits), the brackets and the argument count.
LINE_DECORATION = 48
_STRING_OVERHEAD = 64
#: An argument's length, kept instead of its text: a tuple slot and an int.
_LENGTH_OVERHEAD = 40
_HEADER_OVERHEAD = 2 * _STRING_OVERHEAD + 64

_FORMAT = re.compile(r"%[sdifoOc%]")


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, marked when cut."""
    return text if len(text) <= limit else text[:limit] + TRUNCATED


class ConsoleMessage:
    """One console message, uncaught exception or browser log entry.

    Its list line (``msgid=1 [log] text (2 args)``) is rendered once, when the journal
    numbers it (`numbered`), so that listing thousands of messages is one ``str.join``;
    the text is that line's middle. The arguments are kept as text of their own only when
    the text is not just them joined (log entries, exceptions, format strings, cut text),
    otherwise as their lengths (when there are several): each character is kept once.
    """

    __slots__ = (
        "id",
        "type",
        "line",
        "args_count",
        "_own_args",
        "_lengths",
        "_start",
        "_tail",
        "stack",
        "more_frames",
        "cost",
    )

    def __init__(self, kind: str, args: tuple[str, ...], text: str | None, stack: tuple[str, ...], more_frames: int):
        self.id = 0
        self.type = kind
        self.args_count = len(args)
        self._own_args = None if text is None else args
        self._lengths = tuple(map(len, args)) if text is None and len(args) > 1 else ()
        #: The text alone until `numbered`, then the whole list line around it.
        self.line = " ".join(args) if text is None else text
        self._start = self._tail = 0
        self.stack = stack
        self.more_frames = more_frames
        strings = (*(self._own_args or ()), *stack, self.line)
        decoration = LINE_DECORATION + len(kind) + _LENGTH_OVERHEAD * len(self._lengths)
        self.cost = ENTRY_OVERHEAD + strings_size(strings) + decoration

    def numbered(self, entry_id: int) -> None:
        """Take the id the journal gives, and render the list line with it."""
        self.id = entry_id
        head = f"msgid={entry_id} [{self.type}] "
        tail = f" ({self.args_count} args)"
        self.line = f"{head}{self.line}{tail}"
        self._start, self._tail = len(head), len(tail)

    @property
    def text(self) -> str:
        """The message as one line of text (the arguments joined, for console calls)."""
        return self.line[self._start : len(self.line) - self._tail]

    @property
    def args(self) -> tuple[str, ...]:
        """The arguments, as text."""
        if self._own_args is not None:
            return self._own_args
        if not self._lengths:  # one argument, or none
            return (self.text,)[: self.args_count]
        text, args, start = self.text, [], 0
        for length in self._lengths:
            args.append(text[start : start + length])
            start += length + 1
        return tuple(args)

    def stack_lines(self) -> list[str]:
        """The stack trace, one frame per line (1-based line and column numbers)."""
        lines = list(self.stack)
        if self.more_frames:
            lines.append(f"... and {self.more_frames} more frames")
        return lines


class NetworkRequest:
    """One request (one hop of a redirect chain) with its response's metadata; never its body."""

    __slots__ = (
        "id",
        "cdp_id",
        "loader_id",
        "frame_id",
        "method",
        "url",
        "resource_type",
        "request_headers",
        "has_post_data",
        "status",
        "status_text",
        "response_headers",
        "raw_response_headers",
        "raw_request_headers",
        "extra_info_due",
        "mime_type",
        "failure",
        "finished",
        "body_size",
        "redirected",
        "redirected_from",
        "cost",
    )

    def __init__(self, params: dict, headers: tuple[tuple[str, str], ...]):
        request = params.get("request", {})
        self.id = 0
        self.cdp_id = params["requestId"]
        self.loader_id = params.get("loaderId")
        self.frame_id = params.get("frameId")
        self.method = request.get("method", "GET")
        self.url = clip(request.get("url", "") + request.get("urlFragment", ""), MAX_FIELD)
        self.resource_type = (params.get("type") or "Other").lower()
        self.request_headers = headers
        self.has_post_data = bool(request.get("hasPostData") or request.get("postData"))
        self.status: int | None = None
        self.status_text = ""
        self.response_headers: tuple[tuple[str, str], ...] = ()
        self.raw_response_headers = False
        self.raw_request_headers = False
        #: Chrome said the raw headers (with Set-Cookie) follow in a separate, later event.
        self.extra_info_due = False
        self.mime_type = ""
        self.failure: str | None = None
        self.finished = False
        self.body_size = 0
        self.redirected = False
        self.redirected_from: NetworkRequest | None = None
        self.cost = ENTRY_OVERHEAD + strings_size((self.url,)) + headers_size(headers)

    def numbered(self, entry_id: int) -> None:
        """Take the id the journal gives."""
        self.id = entry_id

    @property
    def status_label(self) -> str:
        """``200``, ``failed - net::ERR_...`` or ``pending``."""
        if self.status is not None:
            return str(self.status)
        if self.failure is not None:
            return f"failed - {self.failure}"
        return "pending"

    def redirect_chain(self) -> list["NetworkRequest"]:
        """The earlier hops that led here, first hop first."""
        chain = []
        hop = self.redirected_from
        while hop is not None:
            chain.append(hop)
            hop = hop.redirected_from
        return chain[::-1]


def strings_size(strings: Iterable[str]) -> int:
    return sum(_STRING_OVERHEAD + len(text) for text in strings)


def headers_size(headers: Iterable[tuple[str, str]]) -> int:
    return sum(_HEADER_OVERHEAD + len(name) + len(value) for name, value in headers)


# -- turning CDP values into text ---------------------------------------------------------------


def _number(value) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return json.dumps(value)


def _preview_value(prop: dict) -> str:
    kind = prop.get("type")
    value = prop.get("value", "")
    if kind == "string":
        return json.dumps(value, ensure_ascii=False)
    if kind == "object" and prop.get("subtype") != "null":
        return value or "{…}"
    return value


def _from_preview(preview: dict) -> str:
    """A JSON-like one-liner from an object preview (what Chrome sends anyway; no extra calls)."""
    props = preview.get("properties", ())
    more = ",…" if preview.get("overflow") else ""
    if preview.get("subtype") == "array":
        return "[" + ",".join(_preview_value(p) for p in props) + more + "]"
    return "{" + ",".join(f"{json.dumps(p.get('name', ''))}:{_preview_value(p)}" for p in props) + more + "}"


def describe(value: dict) -> str:
    """A console argument (a CDP RemoteObject) as text, from what the event already carries."""
    if "unserializableValue" in value:
        return value["unserializableValue"]
    kind = value.get("type")
    if kind == "string":
        return value.get("value", "")
    if kind in ("number", "boolean"):
        return _number(value.get("value"))
    if kind == "undefined":
        return "undefined"
    subtype = value.get("subtype")
    if subtype == "null":
        return "null"
    preview = value.get("preview")
    if kind == "object" and preview and (subtype == "array" or value.get("className") == "Object"):
        return _from_preview(preview)
    return value.get("description") or value.get("className") or kind or "?"


def substituted(args: list[dict]) -> str | None:
    """The text of a console call whose first argument has format specifiers (%s, %d, %o, %c...)."""
    if not args or args[0].get("type") != "string" or "%" not in args[0].get("value", ""):
        return None
    rest = list(args[1:])

    def replace(match: re.Match) -> str:
        spec = match.group(0)
        if spec == "%%":
            return "%"
        if not rest:
            return spec
        arg = rest.pop(0)
        if spec == "%c":
            return ""
        if spec in ("%d", "%i") and arg.get("type") == "number":
            return str(int(arg.get("value", 0)))
        return describe(arg)

    return " ".join([_FORMAT.sub(replace, args[0]["value"]), *(describe(a) for a in rest)])


def stack_frames(stack_trace: dict | None) -> tuple[tuple[str, ...], int]:
    """Stack frames as text (1-based positions), at most MAX_FRAMES, and how many were left out."""
    frames = (stack_trace or {}).get("callFrames", ())
    lines = tuple(
        f"at {frame.get('functionName') or '<anonymous>'} "
        f"({clip(frame.get('url', ''), MAX_FIELD)}:{frame.get('lineNumber', 0) + 1}:{frame.get('columnNumber', 0) + 1})"
        for frame in frames[:MAX_FRAMES]
    )
    return lines, max(0, len(frames) - MAX_FRAMES)
