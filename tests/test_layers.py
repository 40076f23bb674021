"""The import rules of docs/architecture.rst: each layer imports only the layers below it."""

import ast
import pathlib

import mcproxy

PACKAGE = pathlib.Path(mcproxy.__file__).parent

#: What each package of mcproxy must never import (``mcproxy.<name>``). The composition
#: root (`mcproxy.service`), ``twistd``'s entry (`mcproxy.tap`), the admin command and the
#: shipped test helpers may import anything.
FORBIDDEN = {
    "storage": {"auth", "browser", "tools", "mcp", "session", "web", "cluster"},
    "auth": {"browser", "tools", "mcp", "session", "web", "cluster"},
    "browser": {"auth", "storage", "tools", "mcp", "session", "web", "cluster"},
    "tools": {"storage", "mcp", "session", "web", "cluster"},
    "mcp": {"storage", "browser", "tools", "session", "web", "cluster"},
    "session": {"storage", "browser", "tools", "web", "cluster"},
    "web": {"tools", "cluster"},
    "artifacts": {"auth", "storage", "browser", "tools", "session", "web", "cluster"},
    "cluster": {"tools"},
    "tunnel": {"tools", "mcp", "session", "cluster"},
}
ROOTS = {"service", "tap"}
MAY_IMPORT_ROOTS = {"tap", "testing", "admin"}


def imports_of(path: pathlib.Path) -> set[str]:
    """The ``mcproxy.*`` modules a file imports, at its top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name == "mcproxy" or name.startswith("mcproxy.")}


def package_of(module: str) -> str | None:
    """``mcproxy.web.site`` -> ``web``; ``mcproxy.errors`` -> ``errors``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def violations(package: pathlib.Path) -> list[str]:
    found = []
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package)
        own = relative.parts[0].removesuffix(".py")
        for module in sorted(imports_of(path)):
            target = package_of(module)
            if target in FORBIDDEN.get(own, ()) or (target in ROOTS and own not in MAY_IMPORT_ROOTS | ROOTS):
                found.append(f"{relative} imports {module}")
    return found


def test_every_layer_imports_only_what_is_below_it():
    assert violations(PACKAGE) == []


def test_a_forbidden_import_is_found(tmp_path):
    (tmp_path / "mcp").mkdir()
    (tmp_path / "mcp" / "protocol.py").write_text("def f():\n    from mcproxy.tools.registry import ToolRegistry\n")
    (tmp_path / "errors.py").write_text("import mcproxy.service\n")
    assert violations(tmp_path) == [
        "errors.py imports mcproxy.service",
        "mcp/protocol.py imports mcproxy.tools.registry",
    ]
