"""Text snapshots of a page's accessibility tree, with stable element uids.

A snapshot lists the page's elements as indented lines ``uid=<snapshotId>_<n> role "name"
attributes``; the model passes a uid back to click, fill, evaluate or screenshot it. An
element that was in the previous snapshot of the page keeps its uid (matched by its
``backendDOMNodeId``), so a model that remembered "1_4" can keep using it after a click.

`format_snapshot` renders the nodes of ``Accessibility.getFullAXTree``; `take_snapshot`
and `resolve_uid` talk to the page.

The tree comes from the browser, so it is untrusted: it is walked without recursion, each
node at most once (a child listed twice, or a cycle, is cut), at most `MAX_NODES` nodes and
`MAX_DEPTH` levels deep, into at most `MAX_CHARS` characters, each name or value cut at
`MAX_FIELD`; a snapshot cut by a bound says so in its last line. A tree of more than
`THREAD_NODES` nodes is rendered in a thread; the uid maps are only read and replaced on
the reactor.
"""

from typing import Any

import attrs

from mcproxy.errors import CDPError, ToolError
from mcproxy.threads import thread_runner
from mcproxy.tools.page_state import tool_state

#: Nodes walked per snapshot (big real pages have a few thousand).
MAX_NODES = 20_000
#: Levels below the root (real pages stay well under a hundred).
MAX_DEPTH = 200
#: Characters of one snapshot's text, and of one name, value or description in it.
MAX_CHARS = 2_000_000
MAX_FIELD = 10_000
#: Trees with more nodes than this are rendered in a thread, not in a reactor turn.
THREAD_NODES = 2_000

# Roles that are (almost) always things the model acts on.
_CONTROL_ROLES = frozenset(
    "button checkbox ColorWell combobox DisclosureTriangle listbox menu menubar menuitem "
    "menuitemcheckbox menuitemradio radio scrollbar searchbox slider spinbutton switch tab "
    "textbox tree treeitem".split()
)
_LANDMARK_ROLES = frozenset("banner complementary contentinfo form main navigation region search".split())
_TEXT_ROLES = frozenset(("LineBreak", "text", "InlineTextBox", "StaticText"))
_ATOMIC_ROLES = frozenset("doc-cover graphics-symbol img image Meter scrollbar slider separator progressbar".split())
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
    #: Whether a descendant (in the walked tree) is focusable; set bottom-up by `_walk`.
    focusable_child: bool = False

    @property
    def backend_id(self) -> int | None:
        backend = self.raw.get("backendDOMNodeId")
        return backend if isinstance(backend, int) and not isinstance(backend, bool) else None

    @property
    def ignored(self) -> bool:
        return bool(self.raw.get("ignored")) or self.role in ("none", "Ignored")

    @property
    def focusable(self) -> bool:
        return bool(self.properties.get("focusable"))

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
        if self.focusable_child:
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


def _value(raw: dict, key: str) -> Any:
    """``raw[key]["value"]`` when the browser sent that shape, else None."""
    field = raw.get(key)
    return field.get("value") if isinstance(field, dict) else None


def _text(value: Any) -> str:
    text = "" if value is None else str(value)
    return text if len(text) <= MAX_FIELD else text[:MAX_FIELD] + "..."


def _node(raw: dict) -> _Node:
    properties = {}
    listed = raw.get("properties")
    for prop in listed if isinstance(listed, list) else ():
        if isinstance(prop, dict) and isinstance(prop.get("name"), str):
            properties[prop["name"]] = _value(prop, "value")
    return _Node(raw=raw, role=_text(_value(raw, "role")), name=_text(_value(raw, "name")), properties=properties)


def _key(value: Any) -> str | int | None:
    """A node id as the browser should send it (a string), or None for anything unhashable."""
    return value if isinstance(value, (str, int)) else None


def _walk(ax_nodes: Any) -> tuple[_Node | None, str | None]:
    """The tree under the root, each node once, within `MAX_NODES` and `MAX_DEPTH`; and
    why it was cut (None when whole)."""
    by_id: dict[str | int, dict] = {}
    for raw in ax_nodes if isinstance(ax_nodes, list) else ():
        if isinstance(raw, dict) and _key(raw.get("nodeId")) is not None:
            by_id.setdefault(raw["nodeId"], raw)
    root_id = next((i for i, raw in by_id.items() if _key(raw.get("parentId")) not in by_id), None)
    if root_id is None:
        return None, None
    root = _node(by_id[root_id])
    order = [root]
    visited = {root_id}
    cut = None
    stack = [(root, 0)]
    while stack and cut != "nodes":
        node, depth = stack.pop()
        child_ids = node.raw.get("childIds")
        for child_id in child_ids if isinstance(child_ids, list) else ():
            child_id = _key(child_id)
            if child_id is None or child_id in visited or child_id not in by_id:
                continue
            if depth >= MAX_DEPTH:
                cut = cut or "depth"
                break
            if len(order) >= MAX_NODES:
                cut = "nodes"
                break
            visited.add(child_id)
            child = _node(by_id[child_id])
            node.children.append(child)
            order.append(child)
            stack.append((child, depth + 1))
    # Children come after their parent in `order`, so this sees each child's flag first.
    for node in reversed(order):
        node.focusable_child = any(child.focusable or child.focusable_child for child in node.children)
    return root, cut


def _attributes(node: _Node) -> str:
    """The ``key="value"`` and flag words after the name, ordered by key."""
    found: dict[str, str] = {}
    props = node.properties
    value = _value(node.raw, "value")
    if value not in (None, ""):
        found["value"] = f'value="{_text(value)}"'
    description = _value(node.raw, "description")
    if description:
        found["description"] = f'description="{_text(description)}"'
    for key in _TOKEN_PROPERTIES:
        if props.get(key) not in (None, "", "false", False):
            found[key.lower()] = f'{key.lower()}="{_text(props[key])}"'
    for key in _NUMBER_PROPERTIES:
        if props.get(key) is not None:
            found[key] = f'{key}="{_text(props[key])}"'
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


_CUT_NOTES = {
    "nodes": f"the page has more than {MAX_NODES} accessibility nodes",
    "depth": f"parts of the page are nested more than {MAX_DEPTH} levels deep",
    "chars": f"the snapshot reached {MAX_CHARS} characters",
}


def render(
    ax_nodes: Any, previous: dict[int, str], snapshot_id: int, verbose: bool = False
) -> tuple[str, dict[str, int], dict[int, str]]:
    """The snapshot text and its uid maps (uid to backend node id and back). Pure, so it
    can run in a thread: elements in ``previous`` (backend node id to uid) keep their uid;
    new ones get ``<snapshot_id>_<n>``, ``n`` counting only the new uids."""
    root, cut = _walk(ax_nodes)
    uid_to_backend: dict[str, int] = {}
    backend_to_uid: dict[int, str] = {}
    lines: list[str] = []
    chars = 0
    counter = 0
    stack = [(root, 0, False)] if root is not None else []
    while stack:
        node, depth, inside_control = stack.pop()
        if verbose or node is root or node.is_interesting(inside_control):
            backend = node.backend_id
            uid = previous.get(backend) if backend is not None else None
            if uid is None or uid in uid_to_backend:
                uid = f"{snapshot_id}_{counter}"
                counter += 1
            if backend is not None:
                uid_to_backend[uid] = backend
                backend_to_uid[backend] = uid
            line = "  " * depth + _line(node, uid)
            chars += len(line) + 1
            if chars > MAX_CHARS:
                cut = "chars"
                break
            lines.append(line)
            depth += 1
        if not verbose and node.is_leaf():
            continue
        inside_control = inside_control or node.role in _CONTROL_ROLES
        stack.extend((child, depth, inside_control) for child in reversed(node.children))
    if cut is not None:
        lines.append(
            f"Note: this snapshot is incomplete: {_CUT_NOTES[cut]}, and the rest was left out. "
            "Use evaluate_script to inspect the page further."
        )
    return "\n".join(lines) + "\n", uid_to_backend, backend_to_uid


def _next_snapshot(state: "SnapshotState") -> int:
    state.last_id += 1
    return state.last_id


def _install(state: "SnapshotState", rendered: tuple[str, dict[str, int], dict[int, str]]) -> str:
    text, state.uid_to_backend, state.backend_to_uid = rendered
    state.snapshot_document = state.documents
    return text


def format_snapshot(ax_nodes: list[dict], state: SnapshotState, *, verbose: bool = False) -> str:
    """Render a snapshot and make it the page's latest (``state`` is updated)."""
    snapshot_id = _next_snapshot(state)
    return _install(state, render(ax_nodes, state.backend_to_uid, snapshot_id, verbose))


def snapshot_state(page) -> SnapshotState:
    """The page's snapshot state, created on first use (it then follows the page's navigations)."""
    tools = tool_state(page)
    state = tools.snapshot
    if state is None:
        state = tools.snapshot = SnapshotState()

        def navigated(_: str, params: dict) -> None:
            if not params.get("frame", {}).get("parentId"):
                state.documents += 1

        page.subscribe("Page.frameNavigated", navigated)
    return state


async def take_snapshot(page, *, verbose: bool = False, timeout: float | None = None) -> str:
    """Fetch the accessibility tree and render it as the page's latest snapshot (in a
    thread when it is big)."""
    tree = await page.send("Accessibility.getFullAXTree", {}, timeout=timeout)
    nodes = tree.get("nodes")
    state = snapshot_state(page)
    run = thread_runner(page.browser.clock) if isinstance(nodes, list) and len(nodes) > THREAD_NODES else None
    if run is None:
        return format_snapshot(nodes, state, verbose=verbose)
    snapshot_id = _next_snapshot(state)
    return _install(state, await run(render, nodes, state.backend_to_uid, snapshot_id, verbose))


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
