"""Declaring tools (`mcproxy.tools.declare`) and listing them with ``python -m mcproxy.tools --list``."""

import io
import os
import subprocess
import sys

import pytest

from mcproxy.config import ToolsConfig
from mcproxy.tools import schema as s
from mcproxy.tools.__main__ import main
from mcproxy.tools.declare import ToolSet
from mcproxy.tools.registry import default_tools


async def _run(call):
    return call


def test_page_tool_puts_a_required_page_id_first():
    tools = ToolSet("testing")
    declared = tools.page_tool(
        "poke",
        title="Poke",
        description="Poke a page.",
        params={"how": s.string("How.")},
        required=("how",),
        secret=("how",),
    )(_run)
    (spec,) = tools
    assert declared is _run
    assert list(spec.input_schema["properties"]) == ["pageId", "how"]
    assert spec.input_schema["required"] == ["pageId", "how"]
    assert (spec.category, spec.page_bound, spec.exclusive, spec.secret_args) == (
        "testing",
        True,
        True,
        frozenset({"how"}),
    )


def test_browser_tool_takes_no_page_and_category_can_be_overridden():
    tools = ToolSet("testing")
    tools.browser_tool("look", title="Look", description="Look.", read_only=True, category="other")(_run)
    (spec,) = tools
    assert spec.input_schema["properties"] == {} and "required" not in spec.input_schema
    assert (spec.category, spec.page_bound, spec.read_only, spec.takes_page) == ("other", False, True, False)


def test_a_page_tool_may_leave_page_id_optional_or_resolve_it_itself():
    tools = ToolSet("testing")
    tools.page_tool("a", title="A", description="A.", page_optional=True)(_run)
    tools.page_tool("b", title="B", description="B.", resolve_page=False)(_run)
    a, b = tools
    assert "required" not in a.input_schema and a.page_bound
    assert b.input_schema["required"] == ["pageId"] and not b.page_bound and b.takes_page


def test_a_secret_argument_must_be_one_the_tool_takes():
    with pytest.raises(ValueError, match="password"):
        ToolSet("testing").page_tool("a", title="A", description="A.", secret=("password",))


def test_list_prints_every_declared_tool():
    out = io.StringIO()
    assert main(["--list"], out=out) == 0
    lines = out.getvalue().splitlines()
    assert lines[0].split()[:4] == ["NAME", "CATEGORY", "ACTS", "ON"]
    listed = [line.split()[0] for line in lines[1:]]
    every = [tool.name for tool in default_tools(ToolsConfig(lighthouse_command="lighthouse"))]
    assert listed == every
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows["list_pages"][1:4] == ["navigation", "browser", "read-only"]
    assert rows["click"][1:4] == ["input", "page", "acts"]
    assert rows["lighthouse_audit"][-1] == "configured)"


def test_list_runs_as_a_module():
    checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [checkout, os.environ.get("PYTHONPATH")])))
    done = subprocess.run(
        [sys.executable, "-m", "mcproxy.tools", "--list"], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "take_snapshot" in done.stdout
