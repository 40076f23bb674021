"""Calling tools the way the MCP layer does, for tests against a real browser."""

import inspect
import re

from mcproxy.auth.principal import Principal
from mcproxy.calls import CallContext, SessionView
from mcproxy.config import ToolsConfig


def make_registry(
    reactor, browser, *, artifacts=None, policies=None, on_call_finished=(), user_id="alice", **tools_config
):
    """A ToolRegistry with every default tool, running on ``browser`` for ``user_id`` only."""
    from mcproxy.tools.registry import ToolRegistry

    async def get_browser(asked_for):
        assert asked_for == user_id, f"tool asked for the browser of {asked_for!r}"
        return browser

    return ToolRegistry(
        get_browser,
        ToolsConfig(**tools_config),
        reactor,
        artifacts=artifacts,
        policies=policies,
        on_call_finished=on_call_finished,
    )


def make_context(session_id="s1", permissions=("tools:*",), user_id="alice"):
    """The CallContext of one MCP session of ``user_id``."""
    return CallContext(
        principal=Principal(user_id, frozenset(permissions)),
        session=SessionView(session_id),
        protocol_version="2025-11-25",
    )


def text_of(result: dict) -> str:
    """The text of a tool result's first content block."""
    return result["content"][0]["text"]


async def ok(registry, context, name, **arguments):
    """Call a tool and insist it succeeded; the result."""
    result = await registry.call_tool(name, arguments, context)
    assert not result["isError"], text_of(result)
    return result


async def failed(registry, context, name, **arguments) -> str:
    """Call a tool and insist it failed with an ``isError`` result; its text."""
    result = await registry.call_tool(name, arguments, context)
    assert result["isError"], f"{name} unexpectedly succeeded: {text_of(result)}"
    return text_of(result)


def uid_of(snapshot: str, line_pattern: str) -> str:
    """The uid on the snapshot line matching ``line_pattern``."""
    match = re.search(r"uid=(\d+_\d+) " + line_pattern, snapshot)
    assert match, f"no line matching {line_pattern!r} in:\n{snapshot}"
    return match.group(1)


async def sleep(reactor, seconds: float) -> None:
    """Let ``seconds`` of reactor time pass."""
    from twisted.internet.task import deferLater

    await deferLater(reactor, seconds, lambda: None)


async def until(reactor, check, timeout: float = 15.0, seen=None, *, what: str = "condition"):
    """Wait for ``check()`` (events arrive asynchronously; it may be a coroutine function)
    to return something true; that value. AssertionError when it has not within ``timeout``
    seconds, naming ``what`` was awaited and saying what ``seen()`` (when given) says was
    there instead."""
    deadline = reactor.seconds() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if reactor.seconds() > deadline:
            raise AssertionError(f"{what} not met within {timeout:g} s" + (f"; seen: {seen()!r}" if seen else ""))
        await sleep(reactor, 0.05)
