"""The audit trail: one JSON object per line for every tool call and every admin action.

Fields of a tool call (``audit.path``; see docs/architecture.rst): ``time``, ``userId``, ``tokenId``,
``client``, ``sessionId``, ``browser``, ``tool``, ``arguments`` (redacted), ``outcome``,
``durationMs``; admin actions carry ``action`` and ``target`` instead of the tool fields.
Lines are written whole, in batches every `mcproxy.logs.FLUSH_SECONDS` by a thread of
their own, so a crash loses at most that last moment's lines; ``reopen()`` (on SIGHUP)
follows a log rotation.
"""

import functools
import math
import re
from datetime import UTC, datetime
from typing import Any

from twisted.application.service import Service

from mcproxy import logs, wirejson

#: Argument names whose values are credentials wherever they appear.
SECRET_KEY = re.compile(r"pass(word|wd)?|secret|token|authori[sz]ation|cookie|api[-_]?key|credential", re.I)
#: Values that are credentials whatever their key: API tokens, JWTs, Bearer/Basic headers.
SECRET_VALUE = re.compile(
    r"mcpx_[0-9a-f]{16}_[A-Za-z0-9_-]+|eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*|(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]+"
)
MAX_VALUE_CHARS = 2000
#: Characters past the cut still read by the redaction, so a credential that straddles
#: the cut is recognised (and hidden) whole.
CUT_MARGIN = 256
#: Characters of argument text one audit record keeps in all; the rest is left out. Long
#: arguments (typed text, form values) would otherwise cost the reactor seconds per call.
MAX_RECORD_CHARS = 16384
MAX_ITEMS = 100
LEFT_OUT = "…"


def redact(value: Any, sensitive: frozenset[str] = frozenset(), key: str = "") -> Any:
    """A copy of ``value`` with credentials, and the arguments named in ``sensitive``,
    replaced; strings are cut to `MAX_VALUE_CHARS` and the whole to `MAX_RECORD_CHARS`."""
    return _redact(value, sensitive, key, [MAX_RECORD_CHARS])


def _redact(value: Any, sensitive: frozenset[str], key: str, budget: list[int]) -> Any:
    if key and (key in sensitive or _is_secret_key(key)):
        return logs.REDACTED
    if isinstance(value, dict):
        items = list(value.items())
        kept = {k: _redact(v, sensitive, str(k), budget) for k, v in items[:MAX_ITEMS]}
        if len(items) > MAX_ITEMS:
            kept[LEFT_OUT] = f"{len(items) - MAX_ITEMS} more"
        return kept
    if isinstance(value, list):
        listed = [_redact(item, sensitive, "", budget) for item in value[:MAX_ITEMS]]
        return [*listed, f"{LEFT_OUT} {len(value) - MAX_ITEMS} more"] if len(value) > MAX_ITEMS else listed
    if isinstance(value, str):
        room = min(MAX_VALUE_CHARS, budget[0])
        if room <= 0:
            return LEFT_OUT
        text = value[: room + CUT_MARGIN]
        if logs.may_hold_secret(text):  # which SECRET_VALUE needs too
            # Then the log rules, which also know ``password=...`` pairs and passwords in URLs.
            text = logs.redact(SECRET_VALUE.sub(logs.REDACTED, text))
        text = text if len(text) <= room and len(value) <= room + CUT_MARGIN else text[:room] + LEFT_OUT
        budget[0] -= len(text)
        return text
    return value


@functools.lru_cache(maxsize=4096)
def _is_secret_key(key: str) -> bool:
    """Whether an argument named ``key`` holds a credential (tools use a few names over and over)."""
    return SECRET_KEY.search(key) is not None


def _iso(timestamp: float) -> str:
    """``2026-12-07T14:22:26.123Z``: the time to the millisecond, in UTC."""
    fraction, whole = math.modf(timestamp)  # rounded to the microsecond as datetime does
    seconds, micro = divmod(int(whole) * 1_000_000 + round(fraction * 1_000_000), 1_000_000)
    return f"{_iso_second(seconds)}.{micro // 1000:03d}Z"


@functools.lru_cache(maxsize=4)
def _iso_second(seconds: int) -> str:
    """The date and time of one second: a busy second's calls share it."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")


class AuditLog(Service):
    """Appends audit events to ``path`` (created 0600) while the service runs; an empty
    path keeps no file. Lines are written in batches off the reactor (`mcproxy.logs.LineFile`)."""

    def __init__(self, path: str, clock):
        self._path = path
        self._lines = logs.LineFile(path, clock)
        self._clock = clock

    def startService(self) -> None:
        super().startService()
        self.reopen()

    def stopService(self) -> None:
        super().stopService()
        self.close()

    def reopen(self) -> None:
        """(Re)open the file, e.g. after logrotate moved it away."""
        if self._path:
            self._lines.reopen()

    def close(self) -> None:
        """Write what is waiting and close the file."""
        self._lines.close()

    def write(self, event: dict) -> None:
        """Append one event, stamped with the time; a write error is logged, never raised."""
        if not self._lines.is_open:
            return
        self._lines.write(wirejson.dumps({"time": _iso(self._clock.seconds()), **event}, default=str) + b"\n")

    def tool_call(self, record) -> None:
        """Audit one finished tool call (a `mcproxy.tools.registry.ToolCallRecord`)."""
        if not self._lines.is_open:
            return  # nothing to write: do not pay for the redaction
        context = record.context
        self.write(
            {
                "kind": "tool_call",
                "userId": context.principal.user_id,
                "tokenId": context.principal.token_id,
                "client": context.client,
                "sessionId": context.session.session_id,
                "requestId": context.request_id,
                "browser": record.browser_url,
                "tool": record.tool,
                "arguments": redact(record.arguments, record.sensitive),
                "outcome": record.outcome,
                "durationMs": round(record.duration * 1000, 3),
            }
        )

    def admin_action(self, principal, client: str | None, action: str, target: str | None, outcome: str) -> None:
        """Audit one admin API action (token creation, registration, deletion, ...)."""
        self.write(
            {
                "kind": "admin",
                "userId": principal.user_id if principal is not None else None,
                "tokenId": principal.token_id if principal is not None else None,
                "client": client,
                "action": action,
                "target": target,
                "outcome": outcome,
            }
        )
