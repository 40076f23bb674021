"""Tab scope: which pages a caller may see and use, and how a page is listed to them.

``tools.tab_scope``: ``session`` shows the pages this MCP session opened, ``user`` the pages
opened through the proxy for this user, ``browser`` every tab. Without a protocol session
(2026-07-28) ``session`` falls back to ``user``. A page outside the scope is reported exactly
like a page that does not exist (see ``docs/architecture.rst``). A page a tool lists or uses
is visible to a caller from then on: console and network collection starts for it
(`mcproxy.browser.collect.make_visible`).
"""

from typing import TYPE_CHECKING, Any

from mcproxy.browser.collect import make_visible
from mcproxy.errors import CDPError, ToolError

if TYPE_CHECKING:
    from mcproxy.tools.call import ToolCall


async def fresh_listing(call: "ToolCall", infos: list[dict] | None = None) -> list[tuple[int, str, str]]:
    """``(page_id, url, title)`` of the visible pages, with titles as Chrome has them now.

    Title change events can trail a page's load event, so ask Chrome (one call) unless
    ``infos`` is its answer already.
    """
    pages = visible_pages(call)
    if not pages:
        return []
    if infos is None:
        try:
            infos = (await call.browser.send("Target.getTargets")).get("targetInfos", [])
        except CDPError:
            infos = []
    by_target = {info["targetId"]: info for info in infos}
    listing = []
    for page in pages:
        make_visible(page)
        info = by_target.get(page.target_id, {})
        listing.append(
            (page.page_id, info.get("url") or page.url or "about:blank", info.get("title", page.title) or "")
        )
    return listing


def page_line(page_id: int, url: str, title: str, selected: bool, page=None, browser=None) -> str:
    """One page of a ``## Pages`` section, marked when selected, crashed or isolated."""
    line = f"{page_id}: {url}" if not title or title == url else f"{page_id}: {title} ({url})"
    if selected:
        line += " [selected]"
    if page is not None and page.crashed:
        line += " [crashed]"
    context = browser.context_name(page) if page is not None else None
    return f"{line} isolatedContext={context}" if context else line


def visible_pages(call: "ToolCall") -> list:
    """The open pages the caller may see and act on, by page id."""
    return [page for page in call.browser.pages() if _in_scope(call, page)]


def _in_scope(call: "ToolCall", page) -> bool:
    if page.closed:
        return False
    scope = call.config.tab_scope
    session_id = call.context.session.session_id
    if scope == "browser":
        return True
    if scope == "session" and session_id is not None:
        return page.opener == session_id
    return page.via_proxy


def resolve_page(call: "ToolCall", page_id: Any):
    """The page ``page_id`` names, if the caller may use it; else the unknown-page error
    (the same for a page that exists outside the caller's scope)."""
    for page in call.browser.pages():
        if page.page_id == page_id and _in_scope(call, page):
            make_visible(page)
            return page
    shown = int(page_id) if isinstance(page_id, float) and page_id.is_integer() else page_id
    raise ToolError(f"No page with id {shown}. Call list_pages to see the pages you can use.")
