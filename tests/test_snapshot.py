"""The snapshot formatter on accessibility trees recorded from headless Chromium.

tools_ax_before.json is tests/fixtures/tools_form.html as loaded; tools_ax_after.json is the
same page after filling the name ("Alice"), ticking the checkbox, choosing "blue", focusing
Submit and changing the output paragraph to "clicked Alice" (a new text node).
"""

import json
import os

import pytest

from mcproxy.browser.page import PageState
from mcproxy.errors import ToolError
from mcproxy.testing.fake_cdp import ax_cycle, ax_deep, ax_duplicated, ax_node, ax_wide
from mcproxy.tools.snapshot import MAX_DEPTH, MAX_FIELD, MAX_NODES, SnapshotState, format_snapshot, resolve_uid

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def recorded(name):
    with open(os.path.join(FIXTURES, name)) as f:
        return json.load(f)["nodes"]


BEFORE = """\
uid=1_0 RootWebArea "Tools Test Page" url="http://127.0.0.1:8765/tools_form.html"
  uid=1_1 heading "Hello MCP" level="1"
  uid=1_2 form
    uid=1_3 "Name"
    uid=1_4 textbox "Name"
    uid=1_5 checkbox "Agree"
    uid=1_6 combobox "Color" expandable haspopup="menu" value="red"
      uid=1_7 option "red" selected
      uid=1_8 option "blue"
    uid=1_9 textbox "Notes" multiline
    uid=1_10 button "Submit"
  uid=1_11 button "Alert"
  uid=1_12 button "Later"
  uid=1_13 button "Busy"
  uid=1_14 button "Go"
  uid=1_15 "not clicked"
  uid=1_16 "no ticks"
  uid=1_17 link "Second page" url="http://127.0.0.1:8765/tools_second.html"
"""

AFTER = """\
uid=1_0 RootWebArea "Tools Test Page" url="http://127.0.0.1:8765/tools_form.html"
  uid=1_1 heading "Hello MCP" level="1"
  uid=1_2 form
    uid=1_3 "Name"
    uid=1_4 textbox "Name" value="Alice"
    uid=1_5 checkbox "Agree" checked
    uid=1_6 combobox "Color" expandable haspopup="menu" value="blue"
      uid=1_7 option "red"
      uid=1_8 option "blue" selected
    uid=1_9 textbox "Notes" multiline
    uid=1_10 button "Submit" focusable focused
  uid=1_11 button "Alert"
  uid=1_12 button "Later"
  uid=1_13 button "Busy"
  uid=1_14 button "Go"
  uid=2_0 "clicked Alice"
  uid=1_16 "no ticks"
  uid=1_17 link "Second page" url="http://127.0.0.1:8765/tools_second.html"
"""


def test_first_snapshot_keeps_what_a_model_can_use():
    state = SnapshotState()
    assert format_snapshot(recorded("tools_ax_before.json"), state) == BEFORE
    assert state.last_id == 1
    assert state.uid_to_backend["1_4"] == 2  # the <input id="name"> node
    assert len(state.uid_to_backend) == 18


def test_known_elements_keep_their_uids_and_new_ones_get_the_new_snapshot_id():
    state = SnapshotState()
    format_snapshot(recorded("tools_ax_before.json"), state)
    assert format_snapshot(recorded("tools_ax_after.json"), state) == AFTER
    assert state.last_id == 2
    # The replaced text node's uid is gone from the latest map.
    assert "1_15" not in state.uid_to_backend and "2_0" in state.uid_to_backend


def test_verbose_shows_every_node_and_nodes_without_dom_ids_get_fresh_uids():
    state = SnapshotState()
    format_snapshot(recorded("tools_ax_after.json"), state)
    text = format_snapshot(recorded("tools_ax_after.json"), state, verbose=True)
    lines = text.splitlines()
    assert lines[0].startswith("uid=1_0 RootWebArea")
    assert lines[1] == "  uid=2_0 ignored"
    assert '      uid=1_1 heading "Hello MCP" level="1"' in lines
    assert '        uid=2_2 "Hello MCP"' in lines
    assert '          uid=2_3 InlineTextBox "Hello MCP"' in lines
    assert "        uid=2_4 LabelText" in lines
    assert "          uid=2_6 generic" in lines
    assert "          uid=2_9 MenuListPopup" in lines
    nodes = recorded("tools_ax_after.json")
    uids = [line.split()[0] for line in lines]
    assert len(uids) == len(set(uids)) == len(nodes) == 46
    # InlineTextBox nodes have no DOM node: they are not addressable.
    boxes = [n for n in nodes if n["role"]["value"] == "InlineTextBox"]
    assert all("backendDOMNodeId" not in n for n in boxes)
    assert len(state.uid_to_backend) == len(nodes) - len(boxes)


def test_empty_tree_and_hidden_nodes():
    state = SnapshotState()
    assert format_snapshot([], state) == "\n"
    # fmt: off
    nodes = [
        {
            "nodeId": "1", "role": {"value": "RootWebArea"}, "name": {"value": "T"}, "childIds": ["2", "3"],
            "backendDOMNodeId": 1,
        },
        {
            "nodeId": "2", "parentId": "1", "role": {"value": "button"}, "name": {"value": "Hidden"},
            "properties": [{"name": "hidden", "value": {"type": "boolean", "value": True}}], "backendDOMNodeId": 2,
        },
        {
            "nodeId": "3", "parentId": "1", "role": {"value": "checkbox"}, "name": {"value": "Mixed"},
            "properties": [
                {"name": "checked", "value": {"type": "tristate", "value": "mixed"}},
                {"name": "disabled", "value": {"type": "boolean", "value": True}},
                {"name": "focused", "value": {"type": "boolean", "value": False}},
            ],
            "description": {"value": "tri"},
            "backendDOMNodeId": 3,
        },
    ]
    # fmt: on
    assert format_snapshot(nodes, state) == (
        'uid=2_0 RootWebArea "T"\n  uid=2_1 checkbox "Mixed" checked="mixed" description="tri" disabled\n'
    )


class _Page:
    page_id = 7

    def __init__(self):
        self.state = PageState()
        self.subscribers = {}

    def subscribe(self, method, callback):
        self.subscribers.setdefault(method, []).append(callback)
        return lambda: None


def test_resolve_uid_errors_tell_the_model_what_to_do():
    from mcproxy.tools.snapshot import snapshot_state

    page = _Page()
    with pytest.raises(ToolError, match=r"No snapshot of page 7 yet\. Call take_snapshot first"):
        resolve_uid(page, "1_4")
    state = snapshot_state(page)
    format_snapshot(recorded("tools_ax_before.json"), state)
    assert resolve_uid(page, "1_4") == 2
    with pytest.raises(ToolError, match=r'Element uid "9_99" not found on page 7\. Take a new snapshot'):
        resolve_uid(page, "9_99")
    for callback in page.subscribers["Page.frameNavigated"]:
        callback("Page.frameNavigated", {"frame": {"id": "sub", "parentId": "main"}})
    assert resolve_uid(page, "1_4") == 2, "a child frame's navigation keeps the snapshot"
    for callback in page.subscribers["Page.frameNavigated"]:
        callback("Page.frameNavigated", {"frame": {"id": "main"}})
    with pytest.raises(ToolError, match=r"new document\. Take a new snapshot"):
        resolve_uid(page, "1_4")


# -- trees a hostile browser may send (more through a WebSocket in test_hostile_browser.py) ----


def test_a_child_listed_twice_per_level_is_shown_once():
    # 2**20 paths to the last node: a walk without a visited set never ends.
    lines = format_snapshot(ax_duplicated(20), SnapshotState(), verbose=True).splitlines()
    assert lines == [f'{"  " * i}uid=1_{i} generic "level {i}"' for i in range(21)]


def test_a_cycle_is_cut_where_it_closes():
    state = SnapshotState()
    assert format_snapshot(ax_cycle(), state, verbose=True) == (
        'uid=1_0 generic "root"\n  uid=1_1 generic "one"\n    uid=1_2 generic "two"\n'
    )
    # Not verbose: only the named leaf stays, under its known uid.
    assert format_snapshot(ax_cycle(), state) == 'uid=1_0 generic "root"\n  uid=1_2 generic "two"\n'


def test_a_huge_tree_is_cut_at_the_node_bound_and_says_so():
    lines = format_snapshot(ax_wide(200_000), SnapshotState()).splitlines()
    assert len(lines) == MAX_NODES + 1
    assert lines[-2] == f'  uid=1_{MAX_NODES - 1} button "b{MAX_NODES - 1}"'
    assert lines[-1].startswith(f"Note: this snapshot is incomplete: the page has more than {MAX_NODES} accessibility")


def test_a_deep_tree_is_cut_at_the_depth_bound_without_recursion():
    lines = format_snapshot(ax_deep(200_000), SnapshotState(), verbose=True).splitlines()
    assert len(lines) == MAX_DEPTH + 2
    assert lines[-2] == "  " * MAX_DEPTH + f'uid=1_{MAX_DEPTH} generic "d{MAX_DEPTH}"'
    assert "nested more than 200 levels deep" in lines[-1]


def test_nodes_of_the_wrong_shape_are_skipped_or_read_as_empty():
    # fmt: off
    nodes = [
        "not a node",
        {"role": {"value": "button"}},  # no nodeId
        {"nodeId": ["unhashable"], "childIds": []},
        {
            "nodeId": "1", "role": "RootWebArea", "name": {"value": "T" * (MAX_FIELD + 50)},
            "childIds": ["2", ["x"], {"y": 1}, "404", "3"], "properties": "nope", "backendDOMNodeId": True,
        },
        {
            "nodeId": "2", "parentId": ["1"], "role": {"value": "button"}, "name": {"value": "Go"},
            "properties": [5, {"name": 3}, {"name": "focusable", "value": "x"}, {"name": "disabled", "value": True}],
            "value": [1], "backendDOMNodeId": 2,
        },
        {"nodeId": "3", "parentId": "1", "role": {"value": "textbox"}, "childIds": "abc", "backendDOMNodeId": 3},
    ]
    # fmt: on
    state = SnapshotState()
    text = format_snapshot(nodes, state)
    lines = text.splitlines()
    assert lines[0].startswith('uid=1_0  "' + "T" * 10) and lines[0].endswith('T..."')
    assert lines[1:] == ['  uid=1_1 button "Go"', "  uid=1_2 textbox"]
    assert state.uid_to_backend == {"1_1": 2, "1_2": 3}
    assert format_snapshot({"nodes": "x"}, SnapshotState()) == "\n"
    assert format_snapshot([ax_node("n1", parent="n1")], SnapshotState()) == "\n"  # no root at all
