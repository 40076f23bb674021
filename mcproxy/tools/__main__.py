"""``python -m mcproxy.tools --list``: every tool this server can offer, read from its declaration.

For operators choosing ``tools.categories`` and ``tools.own_permission``, and for reviewers
checking what a change offers, without starting the daemon or a browser.
"""

import argparse
import re
import sys
from typing import TextIO

from mcproxy.config import ToolsConfig
from mcproxy.tools.declare import ToolSpec
from mcproxy.tools.registry import default_tools

#: Settings under which every tool is declared; the command is never run here.
_EVERY_TOOL = ToolsConfig(lighthouse_command="lighthouse")


_SENTENCE_END = re.compile(r"(?<!e\.g\.)(?<!i\.e\.)(?<=\.)\s+(?=[A-Z])")


def _summary(description: str) -> str:
    """The description's first sentence."""
    return _SENTENCE_END.split(description, maxsplit=1)[0]


def _row(tool: ToolSpec, offered_by_default: bool) -> tuple[str, ...]:
    summary = _summary(tool.description)
    if not offered_by_default:
        summary += " (offered only when configured)"
    return (
        tool.name,
        tool.category,
        "page" if tool.takes_page else "browser",
        "read-only" if tool.read_only else "acts",
        summary,
    )


def main(argv: list[str] | None = None, out: TextIO = sys.stdout) -> int:
    parser = argparse.ArgumentParser(prog="python -m mcproxy.tools", description="The tools mcproxy offers.")
    parser.add_argument("--list", action="store_true", help="list every tool: name, category, scope, access, summary")
    options = parser.parse_args(argv)
    if not options.list:
        parser.error("nothing to do; pass --list")
    by_default = {tool.name for tool in default_tools(ToolsConfig())}
    rows: list[tuple[str, ...]] = [("NAME", "CATEGORY", "ACTS ON", "ACCESS", "SUMMARY")]
    rows += [_row(tool, tool.name in by_default) for tool in default_tools(_EVERY_TOOL)]
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    for row in rows:
        out.write("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[4] + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
