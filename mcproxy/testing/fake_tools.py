"""A fake `IToolProvider` and authenticator for testing the MCP layer without a browser.

Tools: ``echo`` (returns its text), ``slow`` (waits ``seconds`` on the injected clock and
records whether it was cancelled), ``progress`` (reports ``steps`` progress updates),
``log`` (one log message per RFC 5424 level), ``big`` (an image of ``size`` bytes),
``fail`` (an ``isError`` result).
"""

import base64

import mcp_types as types
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import deferLater
from zope.interface import implementer

from mcproxy.auth.principal import ALL_TOOLS, Principal
from mcproxy.errors import Unauthorized
from mcproxy.interfaces import IToolProvider
from mcproxy.mcp.notifications import LOG_LEVELS


def _schema(**properties) -> dict:
    return {"type": "object", "properties": properties}


_TOOLS = [
    types.Tool(name="echo", description="Return the text.", input_schema=_schema(text={"type": "string"})),
    types.Tool(name="slow", description="Wait, then answer.", input_schema=_schema(seconds={"type": "number"})),
    types.Tool(name="progress", description="Report progress.", input_schema=_schema(steps={"type": "integer"})),
    types.Tool(name="log", description="Log at every level.", input_schema=_schema()),
    types.Tool(name="big", description="A large image.", input_schema=_schema(size={"type": "integer"})),
    types.Tool(name="fail", description="Always fails.", input_schema=_schema()),
]


def _text(text: str, *, error: bool = False) -> dict:
    return {"content": [{"type": "text", "text": text}], "isError": error}


@implementer(IToolProvider)
class FakeToolProvider:
    """Deterministic tools; ``calls`` lists (name, arguments, context) and ``cancelled`` the
    names of calls whose work was cancelled."""

    def __init__(self, clock):
        self.clock = clock
        self.calls: list[tuple[str, dict, object]] = []
        self.cancelled: list[str] = []
        self._started: list[Deferred] = []

    def list_tools(self, principal: Principal) -> list[types.Tool]:
        return list(_TOOLS)

    def when_started(self) -> Deferred:
        """Fires when the next ``slow`` call has begun waiting."""
        d: Deferred[None] = Deferred()
        self._started.append(d)
        return d

    def call_tool(self, name: str, arguments: dict, context) -> Deferred:
        self.calls.append((name, arguments, context))
        return Deferred.fromCoroutine(self._run(name, arguments, context))

    async def _run(self, name: str, arguments: dict, context) -> dict:
        if name == "echo":
            return _text(str(arguments.get("text", "")))
        if name == "slow":
            return await self._slow(float(arguments.get("seconds", 1)))
        if name == "progress":
            steps = int(arguments.get("steps", 3))
            for step in range(1, steps + 1):
                context.report_progress(step, total=steps, message=f"step {step} of {steps}")  # as documented
            return _text(f"done in {steps} steps")
        if name == "log":
            for level in LOG_LEVELS:
                context.log(level, f"a {level} message")
            return _text("logged")
        if name == "big":
            size = int(arguments.get("size", 1024))
            data = base64.b64encode(b"\x89PNG" + b"\0" * max(0, size - 4)).decode("ascii")
            return {"content": [{"type": "image", "data": data, "mimeType": "image/png"}], "isError": False}
        if name == "fail":
            return _text("this tool always fails", error=True)
        return _text(f"Unknown tool: {name}", error=True)

    async def _slow(self, seconds: float) -> dict:
        waiting = deferLater(self.clock, seconds, lambda: None)
        started, self._started = self._started, []
        for d in started:
            d.callback(None)
        try:
            await waiting
        except CancelledError:
            self.cancelled.append("slow")
            raise
        return _text(f"waited {seconds}s")


async def fake_authenticate(request) -> Principal:
    """Trust ``Authorization: Bearer user:<id>``; no credential means user ``local``."""
    header = request.getHeader(b"authorization")
    if header is None:
        return Principal("local", frozenset({ALL_TOOLS}))
    scheme, _, value = header.decode("latin-1").partition(" ")
    if scheme.lower() != "bearer" or not value.startswith("user:") or len(value) <= 5:
        raise Unauthorized("bad credential", reason="invalid")
    return Principal(value[5:], frozenset({ALL_TOOLS}))
