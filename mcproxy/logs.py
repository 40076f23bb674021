"""Log output: JSON lines for machines, readable lines for people, secrets never.

`make_observer` formats `twisted.logger` events: one JSON object per line when the
stream is not a terminal (the journal, a file, a pipe), text otherwise. Every string
that reaches the stream goes through `redact` first, and fields whose names say they
hold secrets are dropped to ``[REDACTED]``.

Request ids: the site runs each request inside `in_request` (a copied `contextvars`
context); Twisted coroutines keep the context they were started in, so every event a
request causes, even after awaits, carries its ``request_id``.
"""

import base64
import binascii
import contextvars
import json as jsonlib
import os
import queue
import re
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TextIO

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
)
from twisted.python import logfile
from zope.interface import implementer

_log = Logger()

REDACTED = "[REDACTED]"

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("mcproxy_request_id", default=None)

# The level filter of the daemon's observer; live reload may change it in place.
LEVELS = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)

# Event keys that belong to Twisted's bookkeeping or the legacy log API, not to us.
_INTERNAL_KEYS = frozenset({"message", "format", "isError", "system", "time", "failure", "why", "printed"})
_SECRET_FIELD = re.compile(
    r"(?:^|_)(?:password|passwd|pwd|secret|token|authorization|cookie|credentials?|api_?key|private_?key)$"
)
# A name is tried only from the start of its run of name characters (the leftmost match
# starts there anyway): tried from every position inside the run, the lazy prefix made
# redaction quadratic in a long word (20 KB of "token": 10 s).
_RUN_START = r"(?<![\w-])"
_SECRET_NAME = r"[\w-]*?(?:authorization|cookie|password|passwd|secret|token|api[_-]?key)"
# ``name: "value"``, ``'name': 'value'``, ``b'name': [b'value']`` (reprs, JSON).
_QUOTED_PAIR = re.compile(rf"(?i)({_RUN_START}{_SECRET_NAME}['\"]?\s*[:=]\s*\[?\s*b?)(['\"])(?:\\.|(?!\2).)*\2")
# ``Authorization: ...`` and ``Cookie: ...`` header lines: the rest of the line.
_HEADER_LINE = re.compile(r"(?i)\b((?:proxy-)?authorization|(?:set-)?cookie)(\s*[:=]\s*)(?![\"'\[])[^\r\n\"'}\]]+")
# ``token=...``, ``password: ...`` in URLs, forms and prose: up to a separator.
_BARE_PAIR = re.compile(rf"(?i)({_RUN_START}-*\b{_SECRET_NAME})(\s*[:=]\s*)(?![\"'\[\s])[^\s&#,;\"'}}\]]+")
_BEARER = re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9\-._~+/]+=*")
_BASIC = re.compile(r"(?i)\b(basic)\s+([A-Za-z0-9+/]{4,}=*)")
# A JWT from its first "eyJ" word start to the end of its run of base64url characters. The
# run is checked once from its start (lookahead), so that a long run of "eyJ-eyJ-..." is
# not scanned again from each of them; the text before the "eyJ" (group 1) is kept.
_JWT = re.compile(
    r"(?<![A-Za-z0-9_-])(?=[A-Za-z0-9_-]*+\.[A-Za-z0-9_-]+\.)([A-Za-z0-9_-]*?)\beyJ[A-Za-z0-9_-]*+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"
)
_API_TOKEN = re.compile(r"\bmcpx_[A-Za-z0-9_-]*")
_API_TOKEN_WITH_ID = re.compile(r"mcpx_([0-9a-f]{16})_.+")
# A scheme is short (RFC 3986); bounding it keeps a long "a.a.a..." run from costing O(n²).
_URL_PASSWORD = re.compile(r"(?i)([a-z][a-z0-9+.-]{0,31}://[^/\s:@]+):[^/\s@]+@")


def _basic(match: re.Match) -> str:
    """Only a real ``Basic`` credential (base64 of ``user:password``), not the English word."""
    try:
        decoded = base64.b64decode(match.group(2), validate=True)
    except (binascii.Error, ValueError):
        return match.group(0)
    return f"{match.group(1)} {REDACTED}" if b":" in decoded else match.group(0)


def _api_token(match: re.Match) -> str:
    """An API token keeps its (public) token id so a log line still says which one it was."""
    well_formed = _API_TOKEN_WITH_ID.match(match.group(0))
    return f"mcpx_{well_formed.group(1)}_{REDACTED}" if well_formed else f"mcpx_{REDACTED}"


# Named pairs first (their whole value goes), then credentials wherever they stand.
_RULES: tuple[tuple[re.Pattern, str | Callable[[re.Match], str]], ...] = (
    (_QUOTED_PAIR, rf"\1\2{REDACTED}\2"),
    (_HEADER_LINE, rf"\1\2{REDACTED}"),
    (_BARE_PAIR, rf"\1\2{REDACTED}"),
    (_BEARER, rf"\1 {REDACTED}"),
    (_BASIC, _basic),
    (_JWT, rf"\1{REDACTED}"),
    (_API_TOKEN, _api_token),
    (_URL_PASSWORD, rf"\1:{REDACTED}@"),
)


#: What every rule's match holds somewhere (a secret's name, a scheme's word, a token's
#: prefix, a URL): text without any of it is left as it is after one scan instead of eight.
_MAY_HOLD_SECRET = re.compile(r"(?i)authorization|cookie|passw|secret|token|api[_-]?key|bearer|basic|eyj|mcpx_|://")


def may_hold_secret(text: str) -> bool:
    """Whether `redact` could change ``text`` (False means it would not)."""
    return _MAY_HOLD_SECRET.search(text) is not None


def redact(text: str) -> str:
    """``text`` with every credential-looking part replaced by ``[REDACTED]``."""
    if not may_hold_secret(text):
        return text
    for pattern, replacement in _RULES:
        if pattern is _URL_PASSWORD and "://" not in text:
            continue  # the costliest rule, and it needs a URL
        text = pattern.sub(replacement, text)
    return text


def is_secret_field(name: str) -> bool:
    """Whether a field named ``name`` (snake, kebab or camel case) holds a secret."""
    snake = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).replace("-", "_").lower()
    return _SECRET_FIELD.search(snake) is not None


def in_request(request_id: str, function: Callable, /, *args, **kwargs):
    """Call ``function`` in a copy of the current context where `REQUEST_ID` is ``request_id``."""
    context = contextvars.copy_context()
    context.run(REQUEST_ID.set, request_id)
    return context.run(function, *args, **kwargs)


def _safe_value(name: str, value: Any) -> Any:
    if is_secret_field(name):
        return REDACTED
    if isinstance(value, str):
        return redact(value)
    return value


def event_fields(event: dict) -> dict[str, Any]:
    """The event's own scalar fields (ids, names, counts), redacted; objects are left out."""
    fields = {
        key: _safe_value(key, value)
        for key, value in event.items()
        if not key.startswith("log_")
        and key not in _INTERNAL_KEYS
        and isinstance(value, (str, int, float, bool, type(None)))
    }
    if "request_id" not in fields:
        current = REQUEST_ID.get()
        if current is not None:
            fields["request_id"] = current
    return fields


def _timestamp(event: dict) -> datetime:
    return datetime.fromtimestamp(event.get("log_time") or time.time(), UTC)


def _traceback(event: dict) -> str | None:
    failure = event.get("log_failure")
    return redact(failure.getTraceback()) if failure is not None else None


def _message(event: dict) -> str:
    """The formatted message, with secret-named fields masked before they are put in."""
    masked = {key: REDACTED for key in event if not key.startswith("log_") and is_secret_field(key)}
    return redact(formatEvent({**event, **masked} if masked else event))


def _level(event: dict) -> str:
    level = event.get("log_level")
    return level.name if level is not None else "info"


def _as_json(event: dict) -> str:
    record = {
        "time": _timestamp(event).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "level": _level(event),
        "namespace": event.get("log_namespace", "-"),
        "message": _message(event),
    }
    for key, value in event_fields(event).items():
        record.setdefault(key, value)
    traceback = _traceback(event)
    if traceback:
        record["traceback"] = traceback
    return jsonlib.dumps(record, default=str, ensure_ascii=False) + "\n"


_TEXT_CONTEXT = ("request_id", "user_id", "session_id", "tool")


def _as_text(event: dict) -> str:
    stamp = _timestamp(event).astimezone().strftime("%Y-%m-%d %H:%M:%S")
    fields = event_fields(event)
    context = " ".join(f"{key}={fields[key]}" for key in _TEXT_CONTEXT if key in fields)
    line = f"{stamp} {_level(event):<5} [{event.get('log_namespace', '-')}] {_message(event)}"
    if context:
        line += f"  ({context})"
    traceback = _traceback(event)
    return line + "\n" + (traceback if traceback else "")


@implementer(ILogObserver)
class _StreamObserver:
    """Writes each event to ``stream``; never lets a formatting problem escape to Twisted."""

    def __init__(self, stream: TextIO, formatter: Callable[[dict], str]):
        self.stream = stream
        self._format = formatter

    def __call__(self, event: dict) -> None:
        try:
            line = self._format(event)
        except Exception as e:
            line = jsonlib.dumps({"level": "error", "message": f"unformattable log event: {type(e).__name__}"}) + "\n"
        self.stream.write(line)
        self.stream.flush()


def make_observer(stream: TextIO, json: bool | None = None) -> ILogObserver:
    """An observer writing to ``stream``: JSON lines unless ``stream`` is a terminal (or ``json`` says)."""
    if json is None:
        isatty = getattr(stream, "isatty", None)
        json = not (isatty is not None and isatty())
    return _StreamObserver(stream, _as_json if json else _as_text)


def twistd_observer(server_options) -> ILogObserver:
    """The daemon's observer where twistd would log: stdout in the foreground, else the log file.

    Filtered by `LEVELS`. ``server_options`` are twistd's own options (``nodaemon``, ``logfile``).
    """
    name = server_options.get("logfile")
    if name == "-" or (server_options.get("nodaemon") and not name):
        stream = sys.stdout
    else:
        stream = logfile.LogFile.fromFullPath(name or "twistd.log")
    return FilteringLogObserver(make_observer(stream), [LEVELS])


def observer() -> ILogObserver:
    """For ``twistd --logger=mcproxy.logs.observer``: the daemon's observer on stdout."""
    return twistd_observer({"nodaemon": True})


# twistd resolves ``--logger`` from a dotted name after the subcommand's options are
# parsed, so the options `twistd_logger` needs can only be handed over here.
_twistd_options: dict = {"nodaemon": True}


def twistd_logger() -> ILogObserver:
    """The ``--logger`` factory `use_for_twistd` installs: `twistd_observer` for twistd's options."""
    return twistd_observer(_twistd_options)


def use_for_twistd(server_options) -> None:
    """Make twistd log through `twistd_observer` unless its command line chose otherwise.

    Call from the plugin's ``Options.postOptions`` with ``self.parent`` (twistd's options,
    parsed before the subcommand's); ``--logger`` and ``--syslog`` still win.
    """
    global _twistd_options
    if server_options is None or server_options.get("logger") or server_options.get("syslog"):
        return
    _twistd_options = server_options
    server_options["logger"] = f"{__name__}.twistd_logger"


#: How long a line may wait in a `LineFile`'s buffer before it is written.
FLUSH_SECONDS = 0.2
_CLOSE = object()


class LineFile:
    """A file of lines (the audit trail, the access log) written in batches by a thread of its own.

    ``write`` only appends to a list: the lines of ``interval`` seconds go to the file in
    one ``os.write``, made by the writer thread, so that neither a system call per line nor
    a slow disk holds up the reactor. A crash loses at most the last ``interval``'s lines.
    ``path`` is created with ``mode``; `reopen` follows a log rotation, `close` writes what
    is left and waits for it.
    """

    def __init__(self, path: str, clock, interval: float = FLUSH_SECONDS, mode: int = 0o600):
        self.path = path
        self._clock = clock
        self._interval = interval
        self._mode = mode
        self._fd: int | None = None
        self._pending: list[bytes] = []
        self._timer: Any = None
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    @property
    def is_open(self) -> bool:
        return self._fd is not None

    def open(self) -> None:
        """(Re)open the file, e.g. after logrotate moved it away; lines written before go to the old one."""
        self.flush()
        old, self._fd = self._fd, None
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), mode=0o700, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, self._mode)
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"lines:{self.path}", daemon=True)
            self._thread.start()
        if old is not None:
            self._queue.put((old, None))

    reopen = open

    def write(self, line: bytes) -> None:
        """Queue ``line`` (UTF-8, ending in a newline) for the next batch."""
        if self._fd is None:
            return
        self._pending.append(line)
        if self._timer is None:
            self._timer = self._clock.callLater(self._interval, self.flush)

    def flush(self) -> None:
        """Hand the waiting lines to the writer thread now."""
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
        if self._pending and self._fd is not None:
            self._queue.put((self._fd, b"".join(self._pending)))
        self._pending = []

    def close(self) -> None:
        """Write what is left, close the file and stop the thread (waiting for both)."""
        self.flush()
        if self._fd is not None:
            self._queue.put((self._fd, None))
            self._fd = None
        if self._thread is not None:
            self._queue.put(_CLOSE)
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while (item := self._queue.get()) is not _CLOSE:
            fd, data = item
            try:
                if data is None:
                    os.close(fd)
                    continue
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            except OSError as e:
                _log.error("Could not write to {path}: {error}", path=self.path, error=e)
