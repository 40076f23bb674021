"""Notifications a request sends while it runs: progress, and log messages at the client's level.

Both go through the request's ``notify`` (to wherever its answer goes) and stop the moment
the request is answered: ``live`` is a one-item list the session clears then.
"""

from collections.abc import Callable, Mapping
from typing import Any

from mcp_types.version import is_version_at_least

from mcproxy.calls import LogSender, ProgressReporter
from mcproxy.mcp.jsonrpc import Request, notification_message

LOG_LEVELS = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")
"""RFC 5424 severities, least severe first (the order `logging/setLevel` filters by)."""

Notify = Callable[[dict], None]


def progress_reporter(request: Request, protocol_version: str | None, notify: Notify, live: list) -> ProgressReporter:
    """``report_progress(progress, total=None, message=None)`` for ``request``: silent
    unless the client gave a progress token; the message only where the version has one."""
    meta = (request.params or {}).get("_meta")
    token = meta.get("progressToken") if isinstance(meta, Mapping) else None
    with_message = (
        token is not None and protocol_version is not None and is_version_at_least(protocol_version, "2025-03-26")
    )

    def report_progress(progress: float, total: float | None = None, message: str | None = None) -> None:
        if token is None or not live[0]:
            return
        params: dict = {"progressToken": token, "progress": progress}
        if total is not None:
            params["total"] = total
        if message is not None and with_message:
            params["message"] = message
        notify(notification_message("notifications/progress", params))

    return report_progress


def log_sender(threshold: Callable[[], str | None], notify: Notify, live: list) -> LogSender:
    """``send_log(level, data, logger=None)``: a log message when ``level`` is at least
    ``threshold()`` (the level the client set, read at each call; None sends nothing)."""

    def send_log(level: str, data: Any, logger: str | None = None) -> None:
        if level not in LOG_LEVELS:
            raise ValueError(f"unknown log level {level!r}")
        least = threshold()
        if least is None or not live[0] or LOG_LEVELS.index(level) < LOG_LEVELS.index(least):
            return
        params: dict = {"level": level, "data": data}
        if logger is not None:
            params["logger"] = logger
        notify(notification_message("notifications/message", params))

    return send_log
