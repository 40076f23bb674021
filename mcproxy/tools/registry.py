"""The tool provider the MCP layer calls: lists tools per principal and runs them.

Results are dicts in their wire shape (see `mcproxy.tools.call.Response.to_result`).
Every failure a model can act on (unknown tool, refused permission, bad arguments, a page
outside its scope, a browser that is away, Chrome refusing a call) comes back as an
``isError`` result with a readable text. Anything unexpected is logged and reported as an
internal error, never with a traceback. Cancelling the returned Deferred cancels the CDP
calls the tool is waiting on.
"""

from collections.abc import Awaitable, Callable, Iterable

import attrs
import mcp_types
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mcproxy.browser.policy import PolicyBook
from mcproxy.calls import CallContext
from mcproxy.config import BrowsingConfig, ToolsConfig
from mcproxy.errors import BrowserUnavailable, LimitReached, RateLimited, ToolError
from mcproxy.interfaces import IToolProvider
from mcproxy.tools import (
    console,
    debugging,
    emulation,
    extensions,
    lighthouse,
    navigation,
    network,
    performance,
    screencast,
    styles,
)
from mcproxy.tools import input as input_tools
from mcproxy.tools.call import ToolCall, error_result
from mcproxy.tools.declare import ToolSpec
from mcproxy.tools.dialogs import add_dialog_note, require_no_dialog
from mcproxy.tools.schema import validate
from mcproxy.tools.scope import resolve_page

log = Logger()

DEFAULT_TOOLS: tuple[ToolSpec, ...] = (
    *navigation.tools,
    *input_tools.tools,
    *debugging.tools,
    *emulation.tools,
    *styles.tools,
    *console.tools,
    *network.tools,
    *performance.tools,
    *extensions.tools,
)


def default_tools(config: ToolsConfig) -> tuple[ToolSpec, ...]:
    """What this server offers with ``config``: the fixed tools, screencasts (encoded with the
    configured ffmpeg) and, when an operator configured its command, Lighthouse."""
    return (
        *DEFAULT_TOOLS,
        *screencast.screencast_tools(config.ffmpeg),
        *lighthouse.lighthouse_tools(config.lighthouse_command, config.lighthouse_timeout),
    )


@implementer(IToolProvider)
class ToolRegistry:
    """Runs the chrome-devtools-mcp compatible tools on the caller's own browser.

    ``get_browser(user_id)`` is a coroutine function returning the user's `IUserBrowser`
    (raising ToolError or BrowserUnavailable when there is none or it is away);
    ``artifacts`` is the `mcproxy.artifacts.store.ArtifactStore` tools save files to; ``limits``
    the `mcproxy.auth.ratelimit.RequestLimits` whose per-tool buckets apply. Observers:
    ``on_call_started(tool_name)`` and ``on_call_finished(ToolCallRecord)`` (audit, metrics).
    ``tools.categories`` restricts the offer to those categories; tools named in
    ``tools.own_permission`` need ``tools:<name>`` itself (``tools:*`` is not enough).
    ``policies`` (a `mcproxy.browser.policy.PolicyBook`) says where each user may navigate.
    """

    def __init__(
        self,
        get_browser: Callable[[str], Awaitable],
        config: ToolsConfig,
        clock,
        tools: Iterable[ToolSpec] | None = None,
        artifacts=None,
        limits=None,
        on_call_started: Iterable[Callable[[str], None]] = (),
        on_call_finished: Iterable[Callable[["ToolCallRecord"], None]] = (),
        policies: PolicyBook | None = None,
    ):
        self._get_browser = get_browser
        self._config = config
        self._clock = clock
        self._artifacts = artifacts
        self._limits = limits
        self._on_started = tuple(on_call_started)
        self._on_finished = tuple(on_call_finished)
        self._policies = policies or PolicyBook(BrowsingConfig())
        self._tools = {tool.name: tool for tool in (default_tools(config) if tools is None else tools)}
        self._described = {name: tool.describe() for name, tool in self._tools.items()}
        self._configure(config)

    def reconfigure(self, config) -> None:
        """Apply new ``tools.*`` values (live reload); calls already running keep the old ones."""
        self._configure(config.tools)

    def _configure(self, config: ToolsConfig) -> None:
        offered = {tool.category for tool in self._tools.values()}
        self._categories = frozenset(config.categories) & offered if config.categories else offered
        self._config = config

    def list_tools(self, principal) -> list[mcp_types.Tool]:
        """The tools ``principal`` may call, in a stable order."""
        return [
            self._described[tool.name]
            for tool in self._tools.values()
            if tool.category in self._categories and self._may_call(principal, tool)
        ]

    def is_read_only(self, name: str) -> bool:
        """Whether tool ``name`` only reads (False for an unknown name)."""
        tool = self._tools.get(name)
        return tool is not None and tool.read_only

    def _may_call(self, principal, tool: ToolSpec) -> bool:
        own_permission = tool.name in self._config.own_permission
        return principal.may_call_tool(tool.name, tool.category, explicit_only=own_permission)

    def _broader_grants(self, tool: ToolSpec) -> str:
        if tool.name in self._config.own_permission:
            return " (this server requires it by name)"
        return f', "tools:category:{tool.category}" or "tools:*"'

    def _cap_timeout(self, args: dict) -> str | None:
        """Lower a ``timeout`` argument (ms) above ``tools.max_timeout``; the note that says so."""
        limit = round(self._config.max_timeout * 1000)
        asked = args.get("timeout")
        if asked is None or asked <= limit:
            return None
        args["timeout"] = limit
        return (
            f"Note: the timeout of {int(asked)} ms was lowered to {limit} ms, the longest wait this server "
            "allows (tools.max_timeout)."
        )

    def call_tool(self, name: str, arguments: dict | None, context: CallContext) -> Deferred:
        """Run a tool. Deferred[dict], its result; cancellation reaches the browser. The
        observers hear how it went, whatever happened."""
        for observe in self._on_started:
            observe(name)
        attempt = _Attempt(started=self._clock.seconds())
        d = Deferred.fromCoroutine(self._run(name, arguments, context, attempt))
        d.addBoth(self._finished, name, arguments, context, attempt)
        return d

    def _finished(
        self, outcome: dict | Failure, name: str, arguments: dict | None, context: CallContext, attempt: "_Attempt"
    ) -> dict | Failure:
        """Tell the observers how the call went; its outcome goes on as it is."""
        if isinstance(outcome, Failure) and outcome.check(CancelledError):
            attempt.outcome = "cancelled"
        elif isinstance(outcome, Failure) and outcome.check(RateLimited):
            attempt.outcome = "rate_limited"
        record = ToolCallRecord(
            tool=name,
            arguments=arguments if isinstance(arguments, dict) else {},
            context=context,
            outcome=attempt.outcome,
            duration=self._clock.seconds() - attempt.started,
            browser_url=attempt.browser_url,
            sensitive=self._sensitive(name, attempt),
        )
        for observe_finished in self._on_finished:
            try:
                observe_finished(record)
            except Exception:
                log.failure("A tool call observer failed for {tool}", tool=name)
        return outcome

    def _sensitive(self, name: str, attempt: "_Attempt") -> frozenset[str]:
        """The arguments of this call to keep out of logs: the tool's secret ones, and those it marked."""
        tool = self._tools.get(name)
        declared = tool.secret_args if tool is not None else frozenset()
        return (declared | attempt.call.sensitive) if attempt.call is not None else declared

    async def _run(self, name: str, arguments: dict | None, context: CallContext, attempt: "_Attempt") -> dict:
        principal = context.principal
        tool = self._tools.get(name)
        if tool is None or tool.category not in self._categories:
            attempt.outcome = "unknown_tool"
            return error_result(f'Unknown tool "{name}". Call tools/list to see the tools you can use.')
        if not self._may_call(principal, tool):
            attempt.outcome = "denied"
            return error_result(
                f'You are not allowed to call "{name}": your credential needs the permission '
                f'"tools:{name}"{self._broader_grants(tool)}, and no rule that denies it.'
            )
        if self._limits is not None:
            self._limits.check_tool(principal.user_id, name)  # RateLimited: a JSON-RPC error
        attempt.outcome = "error"
        try:
            args = validate(tool.input_schema, arguments)
            timeout_note = self._cap_timeout(args)
            # A serviceWorkerId runs the tool in that extension service worker, not on a page.
            on_page = tool.page_bound and not args.get("serviceWorkerId")
            if on_page and "pageId" not in args:
                raise ToolError('Missing required argument "pageId". Call list_pages to see the pages you can use.')
            browser = await self._get_browser(principal.user_id)
            attempt.browser_url = browser.browser_url
            # A browser just registered (or reconnecting) has no page list yet.
            await browser.connected(self._config.navigation_timeout)
            call = attempt.call = ToolCall(
                args=args,
                context=context,
                browser=browser,
                config=self._config,
                clock=self._clock,
                artifacts=self._artifacts,
                policy=self._policies.policy_for(principal.user_id),
            )
            if not on_page:
                response = await tool.run(call)
            else:
                page = call.page = resolve_page(call, args["pageId"])
                if not tool.dialog_safe:
                    require_no_dialog(page)
                if tool.exclusive:
                    response = await page.run_exclusive(tool.run, call)
                else:
                    response = await tool.run(call)
                if not page.closed:
                    add_dialog_note(page, response)
            if timeout_note:
                response.add(timeout_note)
        except CancelledError:
            raise
        except (ToolError, BrowserUnavailable, LimitReached) as e:
            return error_result(e.message)
        except Exception:
            attempt.outcome = "internal_error"
            log.failure(
                "Tool {tool} failed for user {user_id} (session {session_id})",
                tool=name,
                user_id=principal.user_id,
                session_id=context.session.session_id,
            )
            return error_result(f'Internal error while running "{name}". The failure was logged; try again.')
        attempt.outcome = "ok"
        return response.to_result(context.protocol_version)


@attrs.define
class _Attempt:
    """What `ToolRegistry._run` learned on the way, for the record (even when it failed)."""

    started: float
    outcome: str = "error"
    browser_url: str | None = None
    call: ToolCall | None = None


@attrs.frozen
class ToolCallRecord:
    """One finished tool call, as audit and metrics see it.

    ``outcome`` is "ok", "error" (a tool error the model can act on), "denied",
    "unknown_tool", "rate_limited", "cancelled" or "internal_error"; ``arguments`` are the
    client's, unredacted (``sensitive`` names those the tool marked as secret, e.g. text
    typed into a password field).
    """

    tool: str
    arguments: dict
    context: CallContext
    outcome: str
    duration: float
    browser_url: str | None
    sensitive: frozenset[str]
