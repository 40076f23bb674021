"""What a tool call carries across layers: the caller, their MCP session's view, the
callbacks that talk back to the client.

The MCP layer (`mcproxy.mcp`, `mcproxy.web`) builds these and any `IToolProvider` reads
them, so they live beside `mcproxy.interfaces` rather than in either layer.
"""

from typing import Any, Protocol

import attrs

from mcproxy.auth.principal import Principal


class ProgressReporter(Protocol):
    """Sends ``notifications/progress`` for the call, when the client asked for them."""

    def __call__(self, progress: float, total: float | None = None, message: str | None = None) -> None: ...


class LogSender(Protocol):
    """Sends ``notifications/message`` at ``level``, filtered by the session's ``logging/setLevel``."""

    def __call__(self, level: str, data: Any, logger: str | None = None) -> None: ...


def _no_progress(progress: float, total: float | None = None, message: str | None = None) -> None:
    """A call nobody watches reports to no one."""


def _no_log(level: str, data: Any, logger: str | None = None) -> None:
    """A call without a client session logs to no one."""


@attrs.define
class SessionView:
    """Per-MCP-session state that tools read and write.

    The 2026-07-28 revision has no sessions: there ``session_id`` is None and a fresh
    view is made per request, so nothing may be kept here that a later call needs.
    """

    session_id: str | None
    selected_page_id: int | None = None
    opened_page_ids: set[int] = attrs.field(factory=set)


@attrs.define
class CallContext:
    """Everything a tool call needs besides its arguments.

    ``report_progress`` is a no-op unless the client asked for progress; ``log`` sends at
    or above the session's level only.
    """

    principal: Principal
    session: SessionView
    protocol_version: str | None
    report_progress: ProgressReporter = _no_progress
    log: LogSender = _no_log
    request_id: str | None = None
    client: str | None = None
