"""``jsonl-audit``: a second, flat audit trail (one JSON object per line) for a log shipper.

Setting: ``path`` (required). Arguments are redacted like the built-in audit log's.
"""

import json

from twisted.plugin import IPlugin
from zope.interface import implementer

from mcproxy.audit import redact
from mcproxy.plugins import IAuditSink, IAuditSinkPlugin


@implementer(IAuditSink)
class JsonLinesSink:
    def __init__(self, path: str, clock):
        self._file = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 -- open for the plugin's life
        self._clock = clock

    def _write(self, event: str, **fields) -> None:
        self._file.write(json.dumps({"event": event, "at": self._clock.seconds(), **fields}) + "\n")

    def tool_call(self, record) -> None:
        self._write(
            "tool_call",
            user=record.context.principal.user_id,
            tool=record.tool,
            outcome=record.outcome,
            arguments=redact(record.arguments, record.sensitive),
        )

    def admin_action(self, principal, client, action, target, outcome) -> None:
        self._write(
            "admin", user=principal.user_id if principal else None, action=action, target=target, outcome=outcome
        )

    def stop(self) -> None:
        self._file.close()


@implementer(IPlugin, IAuditSinkPlugin)
class JsonLinesAuditPlugin:
    name = "jsonl-audit"
    description = "appends a flat JSON line per audit event to a file"
    options = ("path",)

    def make(self, config, reactor):
        path = config.require("path")
        try:
            return JsonLinesSink(path, reactor)
        except OSError as e:
            raise config.error("path", f"cannot open {path}: {e.strerror}") from None


jsonl_audit = JsonLinesAuditPlugin()
