"""What the tools keep of one page between calls, beside what the browser keeps
(`mcproxy.browser.page.PageState`, whose ``tools`` field holds it)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from mcproxy.tools.performance import TraceState
    from mcproxy.tools.snapshot import SnapshotState
    from mcproxy.tools.styles import StyleSheets


@attrs.define
class ToolPageState:
    """A part left None has not started: its tool creates it on first use."""

    #: The take_snapshot uids and document counter (`mcproxy.tools.snapshot`).
    snapshot: SnapshotState | None = None
    #: The stylesheet headers get_css_styles knows (`mcproxy.tools.styles`).
    styles: StyleSheets | None = None
    #: The performance trace recording or analysed (`mcproxy.tools.performance`).
    trace: TraceState | None = None


def tool_state(page) -> ToolPageState:
    """The tools' state of ``page``, created on first use."""
    if page.state.tools is None:
        page.state.tools = ToolPageState()
    return page.state.tools
