"""Configuration cannot drift: every key is read by some part, and every key declared live
(`mcproxy.config.live`) changes the running daemon when a reload changes it."""

import ast
import ipaddress
import pathlib
from collections.abc import Iterable

import attrs
import pytest

import mcproxy
from mcproxy import config as configuration
from mcproxy import logs
from mcproxy.config import SECTIONS
from mcproxy.reload import LIVE_KEYS
from mcproxy.service import MCProxyService

PACKAGE = pathlib.Path(mcproxy.__file__).parent


def keys_read(sources: Iterable[str]) -> set[tuple[str, str]]:
    """``(section, key)`` pairs the sources read: ``<...>.<section>.<key>``; ``<...>.<key>`` in a
    module that names the section's class (a part handed one section, e.g. ``ToolsConfig``);
    or ``<...>config.<key>`` for a key no other section has."""
    sections_of: dict[str, set[str]] = {}
    for section, cls in SECTIONS.items():
        for field in attrs.fields(cls):
            sections_of.setdefault(field.name, set()).add(section)
    found = set()
    for text in sources:
        handed = {name for name, cls in SECTIONS.items() if cls.__name__ in text}
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Attribute):
                owner = ast.unparse(node.value).rsplit(".", 1)[-1]
                found.update((section, node.attr) for section in SECTIONS if owner == section or section in handed)
                only = sections_of.get(node.attr, set())
                if owner.endswith("config") and len(only) == 1:
                    found.add((next(iter(only)), node.attr))
    return found


def unread_keys(sources: Iterable[str]) -> list[str]:
    read = keys_read(sources)
    return [f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in attrs.fields(cls) if (s, f.name) not in read]


def package_sources() -> list[str]:
    """Every module of mcproxy but the one that declares (and validates) the keys."""
    return [path.read_text() for path in sorted(PACKAGE.rglob("*.py")) if path != PACKAGE / "config.py"]


def test_every_key_is_read_by_some_part():
    assert unread_keys(package_sources()) == []


def test_a_key_read_by_nothing_is_found():
    sources = ["def f(config, call):\n    return config.server.listen, call.config.tab_scope\n"]
    unread = unread_keys(sources)
    assert "server.listen" not in unread and "tools.tab_scope" not in unread
    assert "server.request_timeout" in unread


# -- live keys: a reload that changes one changes the running daemon ---------------------------

#: A valid value other than the default, for the keys a generic change cannot make.
CHANGED = {
    "server.allowed_hosts": ("proxy.example",),
    "server.log_level": "debug",
    "server.access_log": "/dev/null",
    "ratelimit.limits": ("tool:click=1/2",),
    "cors.allowed_origins": ("https://ide.example",),
    "network.ip_allow": ("10.99.0.0/16",),
    "network.ip_deny": ("10.98.0.0/16",),
    "network.trusted_proxies": ("10.97.0.1/32",),
    "tools.tab_scope": "user",
    "tools.categories": ("navigation",),
    "tools.own_permission": ("click",),
    "browsing.schemes": ("http", "https"),
    "browsing.allow": ("*.corp.example",),
    "browsing.deny": ("*.evil.example",),
    "browsing.user_rules": ("alice allow *.corp.example",),
    "browser.user_networks": ("alice 10.1.2.0/24",),
    "metrics.allowed_networks": ("10.96.0.0/16",),
}


def changed_value(key: str, current):
    if key in CHANGED:
        return CHANGED[key]
    if isinstance(current, bool):
        return not current
    if isinstance(current, (int, float)):
        return current + 7
    raise AssertionError(f"add a changed value for {key} to CHANGED")


def fingerprint(roots: dict, skip: set[int]) -> dict[str, str]:
    """``path -> value`` of every plain value reachable from ``roots`` through mcproxy's own
    objects, Twisted's, containers and bound methods (not through functions, the reactor or
    ``skip``); other
    objects count by their repr when it is not just an address."""
    found: dict[str, str] = {}
    seen: set[int] = set(skip)
    todo = [(name, value, 0) for name, value in roots.items()]
    while todo:
        path, value, depth = todo.pop()
        if value is None or isinstance(value, (str, bytes, int, float, bool)):
            found[path] = repr(value)
            continue
        if isinstance(value, (ipaddress.IPv4Network, ipaddress.IPv6Network, ipaddress._BaseAddress)):
            found[path] = str(value)
            continue
        if hasattr(value, "__func__"):  # a bound method: what it is bound to
            todo.append((f"{path}.__self__", value.__self__, depth + 1))
            continue
        if id(value) in seen or depth > 24 or (callable(value) and not hasattr(value, "__dict__")):
            continue
        seen.add(id(value))
        if isinstance(value, dict):
            todo.extend((f"{path}[{key!r}]", item, depth + 1) for key, item in value.items())
        elif isinstance(value, (list, tuple)):
            todo.extend((f"{path}[{i}]", item, depth + 1) for i, item in enumerate(value))
        elif isinstance(value, (set, frozenset)):
            todo.extend((f"{path}{{{i}}}", item, depth + 1) for i, item in enumerate(sorted(value, key=repr)))
        elif type(value).__module__.split(".")[0] in ("mcproxy", "twisted", "re"):
            fields = getattr(value, "__dict__", {}) | {
                name: getattr(value, name) for name in getattr(type(value), "__slots__", ()) if hasattr(value, name)
            }
            todo.extend((f"{path}.{name}", item, depth + 1) for name, item in fields.items())
        elif " at 0x" not in repr(value):
            found[path] = repr(value)  # a value of another library that says what it is (a log level)
    return found


@pytest.fixture
def daemon(tmp_path, reactor):
    config = configuration.load(
        None,
        environ={},
        overrides={"server": {"data_dir": str(tmp_path)}, "store": {"url": "memory:"}, "audit": {"path": ""}},
    )
    return MCProxyService.from_config(reactor, config)


def state_of(daemon: MCProxyService, reactor) -> dict[str, str]:
    roots = {"daemon": {k: v for k, v in vars(daemon).items() if k != "config"}, "log levels": logs.LEVELS}
    return fingerprint(roots, skip={id(reactor), id(daemon.config)})


@pytest.mark.parametrize("key", sorted(LIVE_KEYS))
def test_a_live_key_changes_the_running_daemon(daemon, reactor, key):
    base = daemon.config
    section, name = key.split(".")
    before = state_of(daemon, reactor)
    daemon.reconfigure(base)
    assert state_of(daemon, reactor) == before, "applying the same configuration changed the daemon"
    changed = base.replace(**{section: {name: changed_value(key, getattr(getattr(base, section), name))}})
    daemon.reconfigure(changed)
    after = state_of(daemon, reactor)
    daemon.reconfigure(base)
    assert after != before, f"{key} is declared live but nothing applies it"
    assert state_of(daemon, reactor) == before
