"""What a tool call sees: the caller, their browser, their MCP session's view of it."""

from typing import Any, Callable

import attrs

from mcproxy.auth.principal import Principal


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

    ``report_progress(progress, total=None, message=None)`` sends a progress notification
    when the client asked for them (a no-op otherwise); ``log(level, data)`` sends a
    ``notifications/message`` filtered by the session's ``logging/setLevel``.
    """

    principal: Principal
    session: SessionView
    protocol_version: str
    report_progress: Callable[..., None] = lambda progress, total=None, message=None: None
    log: Callable[[str, Any], None] = lambda level, data: None
    request_id: str | None = None
    client: str | None = None
