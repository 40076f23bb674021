"""Text snapshots of a page's accessibility tree, with stable element uids.

A snapshot lists the page's elements as indented lines ``uid=<snapshotId>_<n> role "name"
attributes``; the model passes a uid back to click, fill, evaluate or screenshot it. An
element that was in the previous snapshot of the page keeps its uid (matched by its
``backendDOMNodeId``), so a model that remembered "1_4" can keep using it after a click.

`format_snapshot` is pure (it takes the nodes of ``Accessibility.getFullAXTree``);
`take_snapshot` and `resolve_uid` talk to the page.
"""

from typing import Any

import attrs

from mcproxy.errors import CDPError, ToolError

STATE_KEY = "mcproxy.snapshot"

# Roles that are (almost) always things the model acts on.
_CONTROL_ROLES = frozenset(
    "button checkbox ColorWell combobox DisclosureTriangle listbox menu menubar menuitem "
    "menuitemcheckbox menuitemradio radio scrollbar searchbox slider spinbutton switch tab "
    "textbox tree treeitem".split()
)
_LANDMARK_ROLES = frozenset(
    "banner complementary contentinfo form main navigation region search".split()
)
_TEXT_ROLES = frozenset(("LineBreak", "text", "InlineTextBox", "StaticText"))
_ATOMIC_ROLES = frozenset(
    "doc-cover graphics-symbol img image Meter scrollbar slider separator progressbar".split()
)
# AX properties shown as key="value" (Chrome spells ``hasPopup`` in camelCase).
_TOKEN_PROPERTIES = ("autocomplete", "hasPopup", "invalid", "keyshortcuts", "orientation", "url", "valuetext")
_NUMBER_PROPERTIES = ("level", "valuemax", "valuemin")
_FLAG_PROPERTIES = ("disabled", "modal", "multiline", "multiselectable", "readonly", "required", "selected")
_TRISTATE_PROPERTIES = ("checked", "pressed")


@attrs.define
class SnapshotState:
    """What a page remembers of its snapshots: the counter and the latest uid map.

    ``documents`` counts main-frame document changes; a snapshot's uids are only valid
    in the document it was taken in (``snapshot_document``), even when the old document
    still lives in the back/forward cache.
    """

    last_id: int = 0
    uid_to_backend: dict[str, int] = attrs.field(factory=dict)
    backend_to_uid: dict[int, str] = attrs.field(factory=dict)
    documents: int = 0
    snapshot_document: int = 0


@attrs.define
class _Node:
    raw: dict
    role: str
    name: str
    properties: dict[str, Any]
    children: list["_Node"] = attrs.field(factory=list)
    _focusable_child: bool | None = None

    @property
    def backend_id(self) -> int | None:
        return self.raw.get("backendDOMNodeId")

    @property
    def ignored(self) -> bool:
        return bool(self.raw.get("ignored")) or self.role in ("none", "Ignored")

    @property
    def focusable(self) -> bool:
        return bool(self.properties.get("focusable"))

    def has_focusable_child(self) -> bool:
        if self._focusable_child is None:
            self._focusable_child = any(c.focusable or c.has_focusable_child() for c in self.children)
        return self._focusable_child

    def is_plain_text_field(self) -> bool:
        if self.properties.get("editable") == "richtext":
            return False
        return bool(self.properties.get("editable")) or self.role in ("textbox", "searchbox")

    def is_leaf(self) -> bool:
        """Whether the model gains nothing from this node's descendants."""
        if not self.children or self.is_plain_text_field() or self.role in _TEXT_ROLES:
            return True
        if self.role in _ATOMIC_ROLES:
            return True
        if self.has_focusable_child():
            return False
        return bool(self.name) and (self.focusable or self.role == "heading")

    def is_interesting(self, inside_control: bool) -> bool:
        if self.ignored or self.properties.get("hidden"):
            return False
        if self.focusable or self.properties.get("editable") == "richtext":
            return True
        if self.role in _CONTROL_ROLES or self.role in _LANDMARK_ROLES:
            return True
        if inside_control:
            return False
        return self.is_leaf() and bool(self.name)


def _build_tree(ax_nodes: list[dict]) -> _Node | None:
    by_id: dict[str, _Node] = {}
    for raw in ax_nodes:
        properties = {p["name"]: p.get("value", {}).get("value") for p in raw.get("properties", ())}
        by_id[raw["nodeId"]] = _Node(
            raw=raw,
            role=str(raw.get("role", {}).get("value", "")),
            name=str(raw.get("name", {}).get("value") or ""),
            properties=properties,
        )
    for node in by_id.values():
        node.children = [by_id[c] for c in node.raw.get("childIds", ()) if c in by_id]
    roots = [n for n in by_id.values() if n.raw.get("parentId") not in by_id]
    return roots[0] if roots else None


def _attributes(node: _Node) -> str:
    """The ``key="value"`` and flag words after the name, ordered by key."""
    found: dict[str, str] = {}
    props = node.properties
    value = node.raw.get("value", {}).get("value")
    if value not in (None, ""):
        found["value"] = f'value="{value}"'
    description = node.raw.get("description", {}).get("value")
    if description:
        found["description"] = f'description="{description}"'
    for key in _TOKEN_PROPERTIES:
        if props.get(key) not in (None, "", "false", False):
            found[key.lower()] = f'{key.lower()}="{props[key]}"'
    for key in _NUMBER_PROPERTIES:
        if props.get(key) is not None:
            found[key] = f'{key}="{props[key]}"'
    for key in _FLAG_PROPERTIES:
        if props.get(key) is True:
            found[key] = key
    for key in _TRISTATE_PROPERTIES:
        state = props.get(key)
        if state in ("true", True):
            found[key] = key
        elif state == "mixed":
            found[key] = f'{key}="mixed"'
    if "expanded" in props:
        found["expanded"] = "expandable expanded" if props["expanded"] else "expandable"
    # The root reports whether its frame has focus, which says nothing about the element.
    if props.get("focused") and node.role != "RootWebArea":
        found["focused"] = "focusable focused"
    return " ".join(found[key] for key in sorted(found))


def _line(node: _Node, uid: str) -> str:
    parts = [f"uid={uid}"]
    if node.ignored:
        parts.append("ignored")
    elif node.role != "StaticText":
        parts.append(node.role)
    if node.name and not node.ignored:
        parts.append(f'"{node.name}"')
    attributes = _attributes(node)
    if attributes:
        parts.append(attributes)
    return " ".join(parts)


def _select(root: _Node, verbose: bool) -> set[int]:
    """ids (``id()``) of the nodes to show; non-verbose keeps what a model can use."""
    chosen: set[int] = set()

    def visit(node: _Node, inside_control: bool) -> None:
        if verbose or node is root or node.is_interesting(inside_control):
            chosen.add(id(node))
        if not verbose and node.is_leaf():
            return
        inside_control = inside_control or node.role in _CONTROL_ROLES
        for child in node.children:
            visit(child, inside_control)

    visit(root, False)
    return chosen


def format_snapshot(ax_nodes: list[dict], state: SnapshotState, *, verbose: bool = False) -> str:
    """Render a snapshot and make it the page's latest (``state`` is updated).

    Elements of the previous snapshot keep their uids; new ones get ``<id>_<n>`` with a
    fresh snapshot id and ``n`` counting only the new uids.
    """
    snapshot_id = state.last_id + 1
    root = _build_tree(ax_nodes)
    uid_to_backend: dict[str, int] = {}
    backend_to_uid: dict[int, str] = {}
    lines: list[str] = []
    counter = 0
    if root is not None:
        chosen = _select(root, verbose)

        def emit(node: _Node, depth: int) -> None:
            nonlocal counter
            if id(node) in chosen:
                backend = node.backend_id
                uid = state.backend_to_uid.get(backend) if backend is not None else None
                if uid is None or uid in uid_to_backend:
                    uid = f"{snapshot_id}_{counter}"
                    counter += 1
                if backend is not None:
                    uid_to_backend[uid] = backend
                    backend_to_uid[backend] = uid
                lines.append("  " * depth + _line(node, uid))
                depth += 1
            for child in node.children:
                emit(child, depth)

        emit(root, 0)
    state.last_id = snapshot_id
    state.snapshot_document = state.documents
    state.uid_to_backend = uid_to_backend
    state.backend_to_uid = backend_to_uid
    return "\n".join(lines) + "\n"


def snapshot_state(page) -> SnapshotState:
    """The page's snapshot state, created on first use (it then follows the page's navigations)."""
    state = page.state.get(STATE_KEY)
    if state is None:
        state = page.state[STATE_KEY] = SnapshotState()

        def navigated(_: str, params: dict) -> None:
            if not params.get("frame", {}).get("parentId"):
                state.documents += 1

        page.subscribe("Page.frameNavigated", navigated)
    return state


async def take_snapshot(page, *, verbose: bool = False, timeout: float | None = None) -> str:
    """Fetch the accessibility tree and render it as the page's latest snapshot."""
    tree = await page.send("Accessibility.getFullAXTree", {}, timeout=timeout)
    return format_snapshot(tree.get("nodes", []), snapshot_state(page), verbose=verbose)


def resolve_uid(page, uid: str) -> int:
    """The backend DOM node id behind ``uid`` in the page's latest snapshot."""
    state = snapshot_state(page)
    if state.last_id == 0:
        raise ToolError(f"No snapshot of page {page.page_id} yet. Call take_snapshot first, then use a uid from it.")
    backend = state.uid_to_backend.get(uid)
    if backend is not None and state.snapshot_document != state.documents:
        raise ToolError(
            f'Element uid "{uid}" is from before page {page.page_id} loaded a new document. '
            "Take a new snapshot (take_snapshot) and use a uid from it."
        )
    if backend is None:
        raise ToolError(
            f'Element uid "{uid}" not found on page {page.page_id}. '
            "Take a new snapshot (take_snapshot) and use a uid from it."
        )
    return backend


async def resolve_element(page, uid: str, *, timeout: float | None = None) -> tuple[int, str]:
    """``(backendNodeId, objectId)`` for a live element, or a ToolError saying the uid is stale."""
    backend = resolve_uid(page, uid)
    try:
        result = await page.send("DOM.resolveNode", {"backendNodeId": backend}, timeout=timeout)
    except CDPError:
        raise stale_error(page, uid) from None
    object_id = result.get("object", {}).get("objectId")
    if not object_id:
        raise stale_error(page, uid)
    return backend, object_id


def stale_error(page, uid: str) -> ToolError:
    """The uid named an element that is no longer in the page."""
    return ToolError(
        f'Element uid "{uid}" no longer exists on page {page.page_id} (the page has changed). '
        "Take a new snapshot (take_snapshot) and use a uid from it."
    )


def element_error(page, uid: str, error: CDPError) -> ToolError:
    """Explain a failed DOM call on a snapshot element: gone from the page, or not rendered."""
    text = str(error)
    if "No node" in text or "detached" in text or "not found" in text:
        return stale_error(page, uid)
    return ToolError(f'Element uid "{uid}" on page {page.page_id} is not rendered, so it cannot be used ({text}).')
