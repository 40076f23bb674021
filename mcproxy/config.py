"""Configuration: TOML file, then ``MCPROXY_<SECTION>_<KEY>`` environment variables, then flags.

The result is one frozen `Config`. Every problem is a `ConfigError` that names the key.
"""

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from typing import Any

import attrs

LOOPBACK_AND_PRIVATE = (
    "127.0.0.0/8",
    "::1/128",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "fc00::/7",
)


class ConfigError(ValueError):
    """A configuration value is missing, malformed or contradictory; names the key."""


def _section(cls):
    return attrs.field(factory=cls)


#: attrs metadata key of the fields a running daemon takes on at a reload (`mcproxy.reload`).
LIVE = "mcproxy.live"


def live(default: Any) -> Any:
    """A configuration field whose new value a reload applies to the running daemon: the
    parts that read it apply it in their ``reconfigure(config)``. Other keys need a restart."""
    return attrs.field(default=default, metadata={LIVE: True})


@attrs.frozen
class ServerConfig:
    listen: tuple[str, ...] = ("tcp:3000:interface=127.0.0.1",)
    data_dir: str = "./var"
    public_url: str = ""
    allowed_hosts: tuple[str, ...] = live(())
    hsts_max_age: int = live(31536000)
    max_body_bytes: int = live(4 * 1024 * 1024)
    drain_timeout: float = live(30.0)
    request_timeout: float = live(120.0)
    header_timeout: float = live(10.0)
    body_timeout: float = live(30.0)
    keepalive_timeout: float = live(60.0)
    max_connections_per_address: int = live(64)
    sse_keepalive: float = live(15.0)
    log_level: str = live("info")
    access_log: str = live("")


@attrs.frozen
class StoreConfig:
    url: str = "sqlite:./var/mcproxy.sqlite3"


@attrs.frozen
class AuthConfig:
    mode: str = "tokens"
    jwt_secret: str = ""
    jwks_url: str = ""
    jwt_audience: str = ""
    jwt_issuer: str = ""
    user_claim: str = "sub"
    permissions_claim: str = "scope"
    authorization_servers: tuple[str, ...] = ()
    basic: bool = False
    jwt_leeway: float = 30.0
    jwks_timeout: float = 2.0


@attrs.frozen
class RateLimitConfig:
    user_rate: float = live(20.0)
    user_burst: int = live(40)
    address_rate: float = live(50.0)
    address_burst: int = live(100)
    limits: tuple[str, ...] = live(())


@attrs.frozen
class CorsConfig:
    allowed_origins: tuple[str, ...] = live(())


@attrs.frozen
class NetworkConfig:
    ip_allow: tuple[str, ...] = live(())
    ip_deny: tuple[str, ...] = live(())
    trusted_proxies: tuple[str, ...] = live(())


@attrs.frozen
class BrowserConfig:
    allowed_networks: tuple[str, ...] = LOOPBACK_AND_PRIVATE
    health_interval: float = 30.0
    backoff_initial: float = 1.0
    backoff_max: float = 30.0
    backoff_factor: float = 2.0
    max_attempts: int = 0
    call_timeout: float = 30.0
    connect_timeout: float = 10.0
    max_message_bytes: int = 64 * 1024 * 1024
    user_networks: tuple[str, ...] = live(())
    require_tunnel: bool = False


@attrs.frozen
class SessionConfig:
    idle_timeout: float = live(1800.0)
    max_in_flight: int = live(16)


@attrs.frozen
class ToolsConfig:
    tab_scope: str = live("session")
    navigation_timeout: float = live(10.0)
    categories: tuple[str, ...] = live(())
    own_permission: tuple[str, ...] = live(())
    redact_headers: tuple[str, ...] = ("authorization", "cookie", "set-cookie", "proxy-authorization")
    collect_browser_max_bytes: int = 64 * 1024 * 1024
    ffmpeg: str = ""
    lighthouse_command: str = ""
    lighthouse_timeout: float = 120.0
    max_timeout: float = 120.0


@attrs.frozen
class MetricsConfig:
    allowed_networks: tuple[str, ...] = live(())


@attrs.frozen
class LimitsConfig:
    max_sessions_per_user: int = live(20)
    max_sessions: int = live(10000)
    max_pages_per_user: int = live(50)
    max_users: int = live(1000)
    max_metadata_bytes: int = live(16384)


@attrs.frozen
class BrowsingConfig:
    schemes: tuple[str, ...] = live(("http", "https", "about", "data", "blob"))
    allow: tuple[str, ...] = live(())
    deny: tuple[str, ...] = live(())
    user_rules: tuple[str, ...] = live(())
    intercept: bool = False


@attrs.frozen
class PluginsConfig:
    enabled: tuple[str, ...] = ()
    settings: tuple[str, ...] = ()


@attrs.frozen
class AuditConfig:
    path: str = "./var/audit.jsonl"


@attrs.frozen
class ArtifactsConfig:
    max_bytes: int = 104857600
    ttl: float = 86400.0
    max_files_per_user: int = 1000
    max_bytes_per_user: int = 1073741824
    shared_dir: str = ""


@attrs.frozen
class ClusterConfig:
    """Several processes acting as one proxy (`mcproxy.cluster`); off unless ``enabled``."""

    enabled: bool = False
    node_id: str = ""
    internal_listen: str = ""
    advertise_url: str = ""
    secret: str = ""
    secret_file: str = ""
    node_ttl: float = 10.0
    renew_interval: float = 2.0
    failover_wait: float = 12.0
    claim_grace: float = 10.0
    forward_connect_timeout: float = 1.0
    max_forward_connections: int = 1024


@attrs.frozen
class LaunchConfig:
    """Browsers the proxy starts on its own host (`mcproxy.browser.launch`); off unless ``enabled``."""

    enabled: bool = False
    chromium: str = ""
    max_browsers: int = 4
    idle_timeout: float = 600.0
    memory_mb: int = 0
    args: tuple[str, ...] = ()


@attrs.frozen
class Config:
    """Everything the daemon reads from outside, validated."""

    server: ServerConfig = _section(ServerConfig)
    store: StoreConfig = _section(StoreConfig)
    auth: AuthConfig = _section(AuthConfig)
    ratelimit: RateLimitConfig = _section(RateLimitConfig)
    cors: CorsConfig = _section(CorsConfig)
    network: NetworkConfig = _section(NetworkConfig)
    browser: BrowserConfig = _section(BrowserConfig)
    session: SessionConfig = _section(SessionConfig)
    tools: ToolsConfig = _section(ToolsConfig)
    metrics: MetricsConfig = _section(MetricsConfig)
    browsing: BrowsingConfig = _section(BrowsingConfig)
    limits: LimitsConfig = _section(LimitsConfig)
    audit: AuditConfig = _section(AuditConfig)
    artifacts: ArtifactsConfig = _section(ArtifactsConfig)
    plugins: PluginsConfig = _section(PluginsConfig)
    cluster: ClusterConfig = _section(ClusterConfig)
    launch: LaunchConfig = _section(LaunchConfig)

    def replace(self, **sections: dict) -> "Config":
        """A copy with some keys changed: ``config.replace(store={"url": "memory:"})``."""
        raw = {name: attrs.asdict(getattr(self, name)) for name in SECTIONS}
        for name, values in sections.items():
            raw[name].update(values)
        return _build(raw)


SECTIONS: dict[str, type] = {f.name: f.type for f in attrs.fields(Config) if f.type is not None}


def live_keys() -> frozenset[str]:
    """``section.key`` of every field declared with `live`."""
    return frozenset(
        f"{section}.{field.name}"
        for section, cls in SECTIONS.items()
        for field in attrs.fields(cls)
        if field.metadata.get(LIVE)
    )


def _coerce(key: str, kind: Any, value: Any) -> Any:
    """Convert a TOML or environment value to the field's type, naming the key on failure."""
    from_env = isinstance(value, str)
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            if from_env and value.lower() in ("1", "true", "yes", "on"):
                return True
            if from_env and value.lower() in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(value)
        if kind is int:
            if isinstance(value, bool):
                raise ValueError(value)
            return int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if kind is str:
            if not isinstance(value, str):
                raise ValueError(value)
            return value
        if kind == tuple[str, ...]:
            if from_env:
                return tuple(item.strip() for item in value.split(",") if item.strip())
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise ValueError(value)
            return tuple(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: expected {_kind_name(kind)}, got {value!r}") from None
    raise AssertionError(f"unhandled config type {kind!r}")


def _kind_name(kind: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(kind, "a list of strings")


def _build(raw: dict[str, dict]) -> Config:
    sections = {}
    for name, cls in SECTIONS.items():
        given = dict(raw.get(name, {}))
        fields = attrs.fields_dict(cls)
        for key in given:
            if key not in fields:
                raise ConfigError(f"{name}.{key}: unknown key")
        values = {key: _coerce(f"{name}.{key}", fields[key].type, value) for key, value in given.items()}
        sections[name] = cls(**values)
    config = Config(**sections)
    validate(config)
    return config


def load(path: str | None = None, environ: Mapping[str, str] | None = None, overrides: dict | None = None) -> Config:
    """Read the TOML file (if any), apply environment variables, then ``overrides``.

    ``overrides`` maps section to ``{key: value}``, the shape the command-line flags produce.
    """
    raw: dict[str, dict] = {name: {} for name in SECTIONS}
    if path:
        try:
            with open(path, "rb") as f:
                document = tomllib.load(f)
        except OSError as e:
            raise ConfigError(f"cannot read configuration file {path}: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from None
        for name, values in document.items():
            if name not in SECTIONS or not isinstance(values, dict):
                raise ConfigError(f"{name}: unknown section")
            raw[name].update(values)
    variables: Mapping[str, str] = os.environ if environ is None else environ
    for name, cls in SECTIONS.items():
        for key in attrs.fields_dict(cls):
            variable = f"MCPROXY_{name}_{key}".upper()
            if variable in variables:
                raw[name][key] = variables[variable]
    for name, values in (overrides or {}).items():
        raw[name].update(values)
    return _build(raw)


LOG_LEVELS = ("debug", "info", "warn", "error")
LIMIT_KINDS = ("endpoint", "tool")
ENDPOINT_CLASSES = ("mcp", "admin")
_LIMIT = re.compile(r"^(?P<kind>[a-z]+):(?P<name>[A-Za-z0-9_*-]+)=(?P<rate>[0-9.]+)/(?P<burst>[0-9]+)$")


def parse_limit(text: str) -> tuple[str, str, float, int]:
    """``"tool:take_screenshot=0.5/5"`` -> ("tool", "take_screenshot", 0.5, 5); ValueError says why."""
    match = _LIMIT.match(text.strip())
    if not match:
        raise ValueError(f'{text!r} is not KIND:NAME=RATE/BURST (e.g. "tool:take_screenshot=0.5/5")')
    kind, name = match["kind"], match["name"]
    if kind not in LIMIT_KINDS:
        raise ValueError(f"{text!r}: the kind must be one of {', '.join(LIMIT_KINDS)}")
    if kind == "endpoint" and name not in ENDPOINT_CLASSES:
        raise ValueError(f"{text!r}: endpoint classes are {', '.join(ENDPOINT_CLASSES)}")
    try:
        rate = float(match["rate"])
    except ValueError:
        raise ValueError(f"{text!r}: the rate is not a number") from None
    burst = int(match["burst"])
    if rate <= 0 or burst < 1:
        raise ValueError(f"{text!r}: the rate must be positive and the burst at least 1")
    return kind, name, rate, burst


def parse_user_rule(text: str) -> tuple[str, str, str]:
    """``"alice allow *.corp.example"`` -> ("alice", "allow", "*.corp.example"); ValueError says why."""
    parts = text.split()
    if len(parts) != 3 or parts[1] not in ("allow", "deny"):
        raise ValueError(f'{text!r} is not "USER allow|deny PATTERN" (e.g. "alice allow *.corp.example")')
    return parts[0], parts[1], parts[2].lower()


def parse_user_network(text: str) -> tuple[str, str]:
    """``"alice 10.1.2.0/24"`` or ``"alice http://10.1.2.3:9222"`` -> ("alice", target); ``*`` as
    the user means every user without entries of their own. ValueError says why."""
    parts = text.split()
    if len(parts) == 2:
        user, target = parts
        if re.match(r"^(https?|wss?)://", target):
            return user, target
        try:
            ipaddress.ip_network(target, strict=False)
            return user, target
        except ValueError:
            pass
    raise ValueError(
        f'{text!r} is not "USER CIDR" or "USER URL" (e.g. "alice 10.1.2.0/24", "bob http://10.1.2.3:9222")'
    )


def _check_host_patterns(key: str, patterns) -> None:
    """A host pattern with a ``/`` is a CIDR; a malformed one would silently match nothing
    (a quiet hole in a deny list), so it is refused."""
    for pattern in patterns:
        if "/" in pattern:
            try:
                ipaddress.ip_network(pattern.strip("[]"), strict=False)
            except ValueError:
                raise ConfigError(f"{key}: {pattern!r} is neither a host pattern nor a CIDR network") from None


def _check_networks(key: str, networks: tuple[str, ...]) -> None:
    for network in networks:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise ConfigError(f"{key}: {network!r} is not a CIDR network") from None


def validate(config: Config) -> None:
    """Cross-field and range checks."""
    if config.auth.mode not in ("tokens", "none"):
        raise ConfigError(f'auth.mode: expected "tokens" or "none", got {config.auth.mode!r}')
    if config.tools.tab_scope not in ("session", "user", "browser"):
        raise ConfigError(f'tools.tab_scope: expected "session", "user" or "browser", got {config.tools.tab_scope!r}')
    if config.server.log_level not in LOG_LEVELS:
        raise ConfigError(f"server.log_level: expected one of {', '.join(LOG_LEVELS)}, got {config.server.log_level!r}")
    if not config.server.listen:
        raise ConfigError("server.listen: at least one endpoint is needed")
    store = config.store.url
    if not (store == "memory:" or store.startswith(("sqlite:", "redis://"))):
        raise ConfigError(f"store.url: expected sqlite:PATH, memory: or redis://HOST:PORT/DB, got {store!r}")
    for key, value in (
        ("server.max_body_bytes", config.server.max_body_bytes),
        ("ratelimit.user_burst", config.ratelimit.user_burst),
        ("ratelimit.address_burst", config.ratelimit.address_burst),
        ("session.max_in_flight", config.session.max_in_flight),
        ("tools.collect_browser_max_bytes", config.tools.collect_browser_max_bytes),
        ("artifacts.max_files_per_user", config.artifacts.max_files_per_user),
        ("artifacts.max_bytes_per_user", config.artifacts.max_bytes_per_user),
    ):
        if value < 1:
            raise ConfigError(f"{key}: must be at least 1, got {value}")
    for key, seconds_or_rate in (
        ("ratelimit.user_rate", config.ratelimit.user_rate),
        ("ratelimit.address_rate", config.ratelimit.address_rate),
        ("browser.health_interval", config.browser.health_interval),
        ("browser.backoff_initial", config.browser.backoff_initial),
        ("browser.backoff_max", config.browser.backoff_max),
        ("browser.call_timeout", config.browser.call_timeout),
        ("session.idle_timeout", config.session.idle_timeout),
        ("server.request_timeout", config.server.request_timeout),
        ("server.header_timeout", config.server.header_timeout),
        ("server.body_timeout", config.server.body_timeout),
        ("server.keepalive_timeout", config.server.keepalive_timeout),
    ):
        if seconds_or_rate <= 0:
            raise ConfigError(f"{key}: must be positive, got {seconds_or_rate}")
    for key in attrs.fields_dict(LimitsConfig):
        if getattr(config.limits, key) < 0:
            raise ConfigError(f"limits.{key}: must be 0 (no limit) or more")
    if config.tools.max_timeout < config.tools.navigation_timeout:
        raise ConfigError(
            f"tools.max_timeout: must be at least tools.navigation_timeout ({config.tools.navigation_timeout}), "
            f"got {config.tools.max_timeout}"
        )
    if config.server.drain_timeout < 0:
        raise ConfigError("server.drain_timeout: must be 0 (stop at once) or more")
    if config.server.max_connections_per_address < 0:
        raise ConfigError("server.max_connections_per_address: must be 0 (no cap) or more")
    if config.server.hsts_max_age < 0:
        raise ConfigError("server.hsts_max_age: must be 0 (no header) or more")
    if config.browser.max_attempts < 0:
        raise ConfigError("browser.max_attempts: must be 0 (forever) or more")
    if config.launch.max_browsers < 1:
        raise ConfigError(f"launch.max_browsers: must be at least 1, got {config.launch.max_browsers}")
    if config.launch.idle_timeout < 0:
        raise ConfigError("launch.idle_timeout: must be 0 (never stop an idle browser) or more")
    if config.launch.memory_mb < 0:
        raise ConfigError("launch.memory_mb: must be 0 (no limit) or more")
    for limit in config.ratelimit.limits:
        try:
            parse_limit(limit)
        except ValueError as e:
            raise ConfigError(f"ratelimit.limits: {e}") from None
    for rule in config.browsing.user_rules:
        try:
            parse_user_rule(rule)
        except ValueError as e:
            raise ConfigError(f"browsing.user_rules: {e}") from None
        _check_host_patterns("browsing.user_rules", [parse_user_rule(rule)[2]])
    _check_host_patterns("browsing.allow", config.browsing.allow)
    _check_host_patterns("browsing.deny", config.browsing.deny)
    for entry in config.browser.user_networks:
        try:
            parse_user_network(entry)
        except ValueError as e:
            raise ConfigError(f"browser.user_networks: {e}") from None
    _check_networks("browser.allowed_networks", config.browser.allowed_networks)
    _check_networks("network.ip_allow", config.network.ip_allow)
    _check_networks("network.ip_deny", config.network.ip_deny)
    _check_networks("network.trusted_proxies", config.network.trusted_proxies)
    _check_networks("metrics.allowed_networks", config.metrics.allowed_networks)
    if config.cluster.enabled:
        _check_cluster(config)


def _check_cluster(config: Config) -> None:
    """Cluster mode needs Redis, an internal listener and timers that leave a renewal several
    chances within one lease (the secret is read and checked as the node is built:
    `mcproxy.cluster.service.cluster_secret`)."""
    cluster = config.cluster
    if not config.store.url.startswith("redis://"):
        raise ConfigError(
            f"cluster.enabled: cluster mode shares its state through Redis; store.url is {config.store.url!r}"
        )
    if not cluster.internal_listen:
        raise ConfigError(
            "cluster.internal_listen: cluster mode needs an internal endpoint, e.g. tcp:3201:interface=10.0.0.5"
        )
    if cluster.node_id and not re.fullmatch(r"[A-Za-z0-9._:-]{1,100}", cluster.node_id):
        raise ConfigError(f"cluster.node_id: letters, digits and . _ : - only (at most 100), got {cluster.node_id!r}")
    if cluster.advertise_url and not re.match(r"^https?://[^/]+/?$", cluster.advertise_url):
        raise ConfigError(f"cluster.advertise_url: expected http(s)://HOST:PORT, got {cluster.advertise_url!r}")
    for key in ("node_ttl", "renew_interval", "failover_wait", "claim_grace", "forward_connect_timeout"):
        if getattr(cluster, key) <= 0:
            raise ConfigError(f"cluster.{key}: must be positive, got {getattr(cluster, key)}")
    if cluster.renew_interval * 3 > cluster.node_ttl:
        raise ConfigError(
            f"cluster.renew_interval: at most a third of cluster.node_ttl ({cluster.node_ttl:g} s), so a lease "
            f"survives a missed renewal; got {cluster.renew_interval:g}"
        )
    if cluster.max_forward_connections < 1:
        raise ConfigError("cluster.max_forward_connections: must be at least 1")
