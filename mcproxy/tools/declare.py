"""Declaring tools: one decorator per tool, with what tools of a kind share added once.

A module of tools makes one `ToolSet` named for its category and declares each tool on
the coroutine that runs it::

    tools = ToolSet("navigation")

    @tools.page_tool("wait_for", title="Wait for text", description="...",
                     params={"text": ...}, required=("text",), read_only=True)
    async def wait_for(call: ToolCall) -> Response: ...

A page tool gets the ``pageId`` parameter (first, required) and ``call.page``; a browser
tool gets neither. The order of declaration is the order of ``tools/list``.
"""

from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import attrs
import mcp_types

from mcproxy.tools import schema as s

Run = TypeVar("Run", bound=Callable[[Any], Awaitable[Any]])


@attrs.frozen
class ToolSpec:
    """One tool: what clients see in ``tools/list`` and the coroutine that runs it.

    ``run(call)`` receives a `mcproxy.tools.call.ToolCall` and returns a
    `mcproxy.tools.call.Response`. Tools with ``page_bound`` get ``call.page`` resolved
    from ``pageId`` and, when ``exclusive``, run inside that page's FIFO. A page-bound tool
    is refused at once while a JavaScript dialog blocks its page, unless ``dialog_safe``
    (it does not need the page's JavaScript, or it is how the page gets unblocked).
    ``secret_args`` names arguments whose values never reach a log, however the call ends
    (a tool marks others at run time in ``call.sensitive``).
    """

    name: str
    category: str
    description: str
    input_schema: dict
    run: Callable[[Any], Awaitable[Any]]
    read_only: bool = False
    page_bound: bool = True
    exclusive: bool = True
    title: str | None = None
    output_schema: dict | None = None
    dialog_safe: bool = False
    secret_args: frozenset[str] = frozenset()

    @property
    def takes_page(self) -> bool:
        """Whether the tool acts on a page named by ``pageId`` (resolved for it or by it)."""
        return "pageId" in self.input_schema["properties"]

    def describe(self) -> mcp_types.Tool:
        """The tool as ``tools/list`` shows it."""
        # chrome-devtools-mcp puts the category in the annotations, but the MCP wire types
        # (and the per-version sieve) drop unknown annotation keys, so it travels in _meta.
        return mcp_types.Tool(
            name=self.name,
            title=self.title,
            description=self.description,
            input_schema=self.input_schema,
            output_schema=self.output_schema,
            annotations=mcp_types.ToolAnnotations(title=self.title, read_only_hint=self.read_only),
            _meta={"category": self.category},
        )


class ToolSet:
    """The tools one module declares, in the order it declares them.

    ``category`` is every tool's unless a declaration names another.
    """

    def __init__(self, category: str):
        self.category = category
        self._specs: list[ToolSpec] = []

    def __iter__(self) -> Iterator[ToolSpec]:
        return iter(self._specs)

    def page_tool(
        self,
        name: str,
        *,
        title: str,
        description: str,
        params: dict[str, dict] | None = None,
        required: tuple[str, ...] = (),
        page_id: dict | None = None,
        page_optional: bool = False,
        resolve_page: bool = True,
        exclusive: bool = True,
        dialog_safe: bool = False,
        read_only: bool = False,
        secret: tuple[str, ...] = (),
        category: str | None = None,
        output_schema: dict | None = None,
    ) -> Callable[[Run], Run]:
        """Declare a tool that acts on one page.

        ``pageId`` (described by ``page_id``) comes first and is required unless
        ``page_optional`` (the tool can run elsewhere, e.g. in a service worker). The
        registry resolves it to ``call.page`` unless ``resolve_page`` is false (the tool
        resolves it itself, e.g. to reach a page closed meanwhile); see `ToolSpec` for
        ``exclusive`` and ``dialog_safe``.
        """
        properties = {"pageId": page_id or s.page_id(), **(params or {})}
        return self._declare(
            name,
            category=category,
            title=title,
            description=description,
            input_schema=s.obj(properties, required if page_optional else ("pageId", *required)),
            read_only=read_only,
            page_bound=resolve_page,
            exclusive=exclusive,
            dialog_safe=dialog_safe,
            secret=secret,
            output_schema=output_schema,
        )

    def browser_tool(
        self,
        name: str,
        *,
        title: str,
        description: str,
        params: dict[str, dict] | None = None,
        required: tuple[str, ...] = (),
        read_only: bool = False,
        secret: tuple[str, ...] = (),
        category: str | None = None,
        output_schema: dict | None = None,
    ) -> Callable[[Run], Run]:
        """Declare a tool that acts on the browser as a whole, not on one page."""
        return self._declare(
            name,
            category=category,
            title=title,
            description=description,
            input_schema=s.obj(params or {}, required),
            read_only=read_only,
            page_bound=False,
            secret=secret,
            output_schema=output_schema,
        )

    def _declare(self, name: str, *, category: str | None, secret: tuple[str, ...], **fields) -> Callable[[Run], Run]:
        unknown = set(secret) - set(fields["input_schema"]["properties"])
        if unknown:
            raise ValueError(f"{name} marks as secret arguments it does not take: {sorted(unknown)}")

        def declare(run: Run) -> Run:
            spec = ToolSpec(
                name=name, category=category or self.category, run=run, secret_args=frozenset(secret), **fields
            )
            self._specs.append(spec)
            return run

        return declare
