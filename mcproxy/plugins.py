"""Extensions found through Twisted's plugin system and switched on by name.

A package extends mcproxy by shipping a module in a ``twisted/plugins/`` directory (one
without ``__init__.py``, as Twisted's convention wants) that holds an object providing
`twisted.plugin.IPlugin` and one of the plugin interfaces below. Nothing installed runs
by itself: ``plugins.enabled`` names the plugins to build, and ``plugins.settings`` gives
them options as ``"NAME.KEY=VALUE"`` strings (lists inside a value are space-separated,
so the comma-separated environment variable form still works).

Start-up has two steps. `find_plugins` (before the reactor runs) discovers the plugins
and checks the names and settings, so a typo stops the daemon with a `PluginError` (a
`ConfigError`) listing what is installed. `load_plugins` (once the store and metrics
exist) calls each plugin's ``make``; a ``make`` that raises fails the start with a message
naming the plugin. The resulting `Plugins` hands the built objects to the daemon's parts,
each hook guarded so a failing plugin is logged and never breaks a request.
"""

import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping

import attrs
from twisted.internet.defer import maybeDeferred
from twisted.logger import Logger
from twisted.plugin import getPlugins
from zope.interface import Attribute, Interface

from mcproxy.config import ConfigError
from mcproxy.lifecycle import AsyncService
from mcproxy.metrics import route_label

log = Logger()

NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
SETTING = re.compile(r"^(?P<plugin>[a-z0-9][a-z0-9_-]*)\.(?P<key>[a-z][a-z0-9_]*)\s*=(?P<value>.*)$", re.S)


class PluginError(ConfigError):
    """A plugin that is not installed, badly configured, or failed to build; names the key."""


class IMCProxyPlugin(Interface):
    """What every mcproxy plugin object has (it also provides `twisted.plugin.IPlugin`)."""

    name = Attribute("The name ``plugins.enabled`` uses: 1-64 of a-z 0-9 _ -, unique among installed plugins.")
    description = Attribute("One line saying what the plugin does, shown when a name is not found.")
    options = Attribute("The keys this plugin reads from ``plugins.settings``; any other key is refused.")


class IAuthenticatorPlugin(IMCProxyPlugin):
    """Adds a kind of credential (e.g. an SSO header set by a trusted reverse proxy)."""

    def make(config, store, reactor):
        """An `mcproxy.interfaces.IAuthenticator`, tried after the built-in ones.

        ``config`` is this plugin's `PluginConfig`; ``store`` the daemon's `IStore`. Must not
        block; I/O belongs in an optional ``start()`` (may return a Deferred) and ``stop()``.
        """


class IAuditSink(Interface):
    """Receives every audit event the daemon writes to ``audit.path`` (e.g. syslog, a webhook).

    Calls come on the reactor thread and must not block: queue slow work. Optional
    ``start()`` / ``stop()`` may return Deferreds.
    """

    def tool_call(record):
        """One finished tool call, a `mcproxy.tools.registry.ToolCallRecord` (arguments
        unredacted: redact with `mcproxy.audit.redact` before they leave the process)."""

    def admin_action(principal, client, action, target, outcome):
        """One admin API action, with the same arguments as `mcproxy.audit.AuditLog.admin_action`."""


class IAuditSinkPlugin(IMCProxyPlugin):
    """Builds an `IAuditSink`."""

    def make(config, reactor):
        """An `IAuditSink`; ``config`` is this plugin's `PluginConfig`."""


class IObserver(Interface):
    """Metrics and tracing hooks (e.g. an OpenTelemetry exporter). Every method is optional:
    the daemon calls the ones the object has, on the reactor thread, and they must not block.
    """

    def tool_call_started(tool):
        """A tool call named ``tool`` began (the name as the client sent it)."""

    def tool_call_finished(record):
        """A tool call ended: a `mcproxy.tools.registry.ToolCallRecord`."""

    def http_request(route, code):
        """An HTTP request was answered; ``route`` is the bounded label of `mcproxy.metrics.route_label`."""

    def start():
        """Begin background work (export loops, connections). May return a Deferred."""

    def stop():
        """Flush and end background work at shutdown. May return a Deferred."""


class IObservabilityPlugin(IMCProxyPlugin):
    """Builds an `IObserver`."""

    def make(config, reactor, metrics):
        """An `IObserver`; ``metrics`` is the daemon's `mcproxy.metrics.Metrics` (its
        ``registry`` takes extra collectors)."""


#: Each kind: its interface and the methods the built object must have.
KINDS: dict[str, tuple[type[Interface], tuple[str, ...]]] = {
    "authenticator": (IAuthenticatorPlugin, ("authenticate",)),
    "audit sink": (IAuditSinkPlugin, ("tool_call", "admin_action")),
    "observer": (IObservabilityPlugin, ()),
}


def _kind_of(plugin) -> str | None:
    return next((kind for kind, (interface, _) in KINDS.items() if interface.providedBy(plugin)), None)


def discover(package=None) -> dict[str, list]:
    """Installed plugins by name (a list, to see clashes); ``package`` defaults to ``twisted.plugins``."""
    found: dict[str, list] = {}
    for plugin in getPlugins(IMCProxyPlugin, package):
        name = getattr(plugin, "name", None)
        if not isinstance(name, str) or not NAME.match(name) or _kind_of(plugin) is None:
            log.warn("Ignoring the mcproxy plugin {plugin!r}: it needs a valid name and one plugin kind", plugin=plugin)
            continue
        found.setdefault(name, []).append(plugin)
    return found


def parse_settings(lines: Iterable[str]) -> dict[str, dict[str, str]]:
    """``["sso-header.header=X-Remote-User"]`` -> ``{"sso-header": {"header": "X-Remote-User"}}``."""
    settings: dict[str, dict[str, str]] = {}
    for line in lines:
        match = SETTING.match(line.strip())
        if not match:
            raise PluginError(
                f'plugins.settings: {line!r} is not "NAME.KEY=VALUE" (e.g. "sso-header.header=X-Remote-User")'
            )
        own = settings.setdefault(match["plugin"], {})
        if match["key"] in own:
            raise PluginError(f"plugins.settings: {match['plugin']}.{match['key']} is given twice")
        own[match["key"]] = match["value"].strip()
    return settings


def _listing(found: Mapping[str, list]) -> str:
    if not found:
        return "no mcproxy plugins are installed"
    return "installed: " + "; ".join(
        f"{name} ({_kind_of(plugins[0])}: {getattr(plugins[0], 'description', '')})"
        for name, plugins in sorted(found.items())
    )


def find_plugins(enabled: Iterable[str], settings: Iterable[str] = (), package=None) -> list:
    """The plugin objects ``enabled`` names, in that order, with names and settings checked.

    Call it before the reactor runs: every mistake is a `PluginError` naming the key.
    Without enabled plugins nothing is scanned.
    """
    enabled, parsed = list(enabled), parse_settings(settings)
    if not enabled and not parsed:
        return []
    found = discover(package)
    chosen: list = []
    for name in enabled:
        if name not in found:
            raise PluginError(f"plugins.enabled: no plugin named {name!r} is installed; {_listing(found)}")
        if len(found[name]) > 1:
            raise PluginError(
                f"plugins.enabled: {len(found[name])} installed plugins are named {name!r}; uninstall all but one"
            )
        if name in (getattr(plugin, "name", None) for plugin in chosen):
            raise PluginError(f"plugins.enabled: {name!r} is listed twice")
        chosen.append(found[name][0])
    for name, values in parsed.items():
        if name not in found:
            raise PluginError(f"plugins.settings: no plugin named {name!r} is installed; {_listing(found)}")
        allowed = tuple(getattr(found[name][0], "options", ()))
        for key in values:
            if key not in allowed:
                known = ", ".join(allowed) or "none"
                raise PluginError(f"plugins.settings: {name}.{key}: unknown key (the plugin reads: {known})")
    return chosen


@attrs.frozen
class PluginConfig:
    """What one plugin's ``make`` gets: its own settings and the daemon's whole `Config`."""

    name: str
    daemon: object
    settings: Mapping[str, str] = attrs.field(factory=dict)

    def error(self, key: str, problem: str) -> PluginError:
        """A start failure naming this plugin's setting ``key``."""
        return PluginError(f"plugins.settings: {self.name}.{key}: {problem}")

    def get(self, key: str, default: str = "") -> str:
        return self.settings.get(key, default)

    def require(self, key: str) -> str:
        """The value of ``key``; its absence fails the start."""
        value = self.settings.get(key, "")
        if not value:
            raise self.error(key, "is required")
        return value

    def words(self, key: str, default: Iterable[str] = ()) -> tuple[str, ...]:
        """A space-separated list."""
        return tuple(self.settings[key].split()) if key in self.settings else tuple(default)

    def networks(self, key: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """A required space-separated list of CIDR networks."""
        try:
            return tuple(ipaddress.ip_network(word, strict=False) for word in self.require(key).split())
        except ValueError as e:
            raise self.error(key, f"not a list of CIDR networks ({e})") from None


@attrs.frozen
class LoadedPlugin:
    """One built plugin: its name, kind and the object its ``make`` returned."""

    name: str
    kind: str
    instance: object


def _guarded(plugin: LoadedPlugin, hook: str) -> Callable[..., None]:
    """``plugin.instance.<hook>`` that logs instead of raising: a plugin never breaks a request."""
    method = getattr(plugin.instance, hook)

    def call(*args) -> None:
        try:
            method(*args)
        except Exception:
            log.failure("Plugin {plugin} failed in {hook}", plugin=plugin.name, hook=hook)

    return call


class _SiteMetrics:
    """What `mcproxy.web.site.ProxySite` calls as ``metrics``: the daemon's metrics, then the plugins."""

    def __init__(self, metrics, hooks: tuple[Callable[[str, int], None], ...]):
        self._metrics = metrics
        self._hooks = hooks

    def http_request(self, path: bytes | str, code: int) -> None:
        if self._metrics is not None:
            self._metrics.http_request(path, code)
        route = route_label(path)
        for hook in self._hooks:
            hook(route, code)


class Plugins(AsyncService):
    """The built plugins, and the hooks to hand to the daemon's parts; starting the service
    starts them."""

    def __init__(self, loaded: Iterable[LoadedPlugin] = ()):
        self.loaded = tuple(loaded)
        self.authenticators = self._of("authenticator")
        self.audit_sinks = self._of("audit sink")
        self.observers = self._of("observer")

    def _of(self, kind: str) -> tuple:
        return tuple(plugin.instance for plugin in self.loaded if plugin.kind == kind)

    def _hooks(self, kinds: tuple[str, ...], hook: str) -> tuple[Callable[..., None], ...]:
        return tuple(
            _guarded(plugin, hook)
            for plugin in self.loaded
            if plugin.kind in kinds and callable(getattr(plugin.instance, hook, None))
        )

    def call_started_observers(self) -> tuple[Callable[[str], None], ...]:
        """For `ToolRegistry` ``on_call_started``."""
        return self._hooks(("observer",), "tool_call_started")

    def call_finished_observers(self) -> tuple[Callable[[object], None], ...]:
        """For `ToolRegistry` ``on_call_finished``: the audit sinks, then the observers."""
        return self._hooks(("audit sink",), "tool_call") + self._hooks(("observer",), "tool_call_finished")

    def admin_audit(self, builtin: Callable[..., None]) -> Callable[..., None]:
        """An ``AdminDependencies.audit`` calling ``builtin`` (the audit log) and every sink."""
        sinks = self._hooks(("audit sink",), "admin_action")

        def audit(principal, client, action, target, outcome) -> None:
            builtin(principal, client, action, target, outcome)
            for sink in sinks:
                sink(principal, client, action, target, outcome)

        return audit

    def site_metrics(self, metrics):
        """What to pass as ``ProxySite(metrics=...)``: ``metrics`` alone when no plugin listens."""
        hooks = self._hooks(("observer",), "http_request")
        return _SiteMetrics(metrics, hooks) if hooks else metrics

    async def start(self) -> None:
        """Call every plugin's ``start()``, in order; one that fails fails the daemon's start."""
        for plugin in self.loaded:
            start = getattr(plugin.instance, "start", None)
            if callable(start):
                try:
                    await maybeDeferred(start)
                except Exception as e:
                    raise PluginError(f"plugins.enabled: plugin {plugin.name!r} could not start: {e}") from e

    async def stop(self) -> None:
        """Call every ``stop()`` in reverse order; failures are logged so the others still stop."""
        for plugin in reversed(self.loaded):
            stop = getattr(plugin.instance, "stop", None)
            if callable(stop):
                try:
                    await maybeDeferred(stop)
                except Exception:
                    log.failure("Plugin {plugin} failed to stop", plugin=plugin.name)


def _make(plugin, kind: str, config: PluginConfig, store, reactor, metrics):
    if kind == "authenticator":
        return plugin.make(config, store, reactor)
    if kind == "audit sink":
        return plugin.make(config, reactor)
    return plugin.make(config, reactor, metrics)


def load_plugins(
    enabled: Iterable[str], config, store, reactor, metrics, package=None, settings: Iterable[str] = ()
) -> Plugins:
    """Build the ``enabled`` plugins (see `find_plugins`) with their ``plugins.settings``.

    A ``make`` that raises, or returns an object without the methods of its kind, is a
    `PluginError` naming the plugin. Call `Plugins.start` next, `Plugins.stop` at shutdown.
    """
    settings = list(settings)
    parsed = parse_settings(settings)
    loaded = []
    for plugin in find_plugins(enabled, settings, package):
        kind = _kind_of(plugin)
        if kind is None:  # discover() passes only plugins of a known kind
            raise PluginError(f"plugins.enabled: plugin {plugin.name!r} is of no known kind")
        own = PluginConfig(plugin.name, config, parsed.get(plugin.name, {}))
        try:
            instance = _make(plugin, kind, own, store, reactor, metrics)
        except PluginError:
            raise
        except Exception as e:
            raise PluginError(f"plugins.enabled: plugin {plugin.name!r} ({kind}) failed to build: {e!r}") from e
        missing = [m for m in KINDS[kind][1] if not callable(getattr(instance, m, None))]
        if missing:
            raise PluginError(f"plugins.enabled: plugin {plugin.name!r} made a {kind} without {', '.join(missing)}()")
        loaded.append(LoadedPlugin(plugin.name, kind, instance))
        log.info("Plugin {plugin} ({kind}) enabled", plugin=plugin.name, kind=kind)
    return Plugins(loaded)
