"""The composition root: builds every part of the daemon from one `Config`."""

import gc
import ipaddress
import os
import signal
import sys
import threading
from typing import Protocol, TypeVar, cast

from twisted.application.service import IService
from twisted.internet import defer, error
from twisted.logger import Logger

from mcproxy import systemd
from mcproxy.activity import ActivityLog
from mcproxy.artifacts.resources import ArtifactResources
from mcproxy.artifacts.store import ArtifactStore
from mcproxy.audit import AuditLog
from mcproxy.auth.admission import Admission
from mcproxy.auth.basic import BasicAuthenticator
from mcproxy.auth.bootstrap import AdminTokenService
from mcproxy.auth.chain import AuthenticationChain
from mcproxy.auth.jwks import JWKSCache
from mcproxy.auth.jwt import JWTAuthenticator, audiences_for
from mcproxy.auth.ratelimit import RequestLimits
from mcproxy.auth.tokens import TokenAuthenticator
from mcproxy.browser.collect import Collector
from mcproxy.browser.connect import open_cdp_link
from mcproxy.browser.dialogs import track_dialogs
from mcproxy.browser.emulation import emulation_listener
from mcproxy.browser.launch import LaunchedBrowsers
from mcproxy.browser.policy import PolicyBook
from mcproxy.browser.pool import BrowserPool
from mcproxy.browser.registered import RegisteredBrowsers
from mcproxy.cluster.artifacts import HeldArtifacts
from mcproxy.cluster.events import TOKEN_REVOKED
from mcproxy.cluster.limits import SharedLimits
from mcproxy.cluster.metrics import ClusterMetrics
from mcproxy.cluster.routing import EdgePlacement, OwnerCheck, TrustedOrigins
from mcproxy.cluster.service import ClusterNode, fenced_links, internal_address
from mcproxy.config import Config, ConfigError
from mcproxy.interfaces import IStore
from mcproxy.lifecycle import StartInOrder
from mcproxy.metrics import Metrics
from mcproxy.plugins import find_plugins, load_plugins
from mcproxy.reload import ConfigSource, apply_log_level, plan
from mcproxy.session.registry import SessionRegistry
from mcproxy.session.revocation import RevocationWatch
from mcproxy.storage import store_for_url
from mcproxy.storage.service import StoreService
from mcproxy.tools.registry import ToolRegistry
from mcproxy.tunnel.endpoint import TunnelEndpoint
from mcproxy.tunnel.registry import Tunnels
from mcproxy.web.admin import AdminDependencies
from mcproxy.web.dashboard import Dashboard, Overview
from mcproxy.web.front import build_router
from mcproxy.web.listener import Listener, endpoint_fields
from mcproxy.web.metrics import MetricsEndpoint
from mcproxy.web.oauth import ProtectedResource, WellKnown
from mcproxy.web.origins import OriginPolicy
from mcproxy.web.site import ProxySite
from mcproxy.web.transports import McpTransports

log = Logger()

ServiceT = TypeVar("ServiceT", bound=IService)


class Reconfigurable(Protocol):
    """A part that reads live configuration keys (`mcproxy.config.live`)."""

    def reconfigure(self, config: Config) -> None:
        """Apply the live keys this part reads; the rest of ``config`` is ignored."""


PartT = TypeVar("PartT", bound=Reconfigurable)


def page_listeners(config: Config, policies: PolicyBook) -> list:
    """What the daemon sets up on every page: dialog tracking, emulation that survives
    reconnects, the browsing policy, console and network collection. Tests that drive a
    browser without the whole daemon use the same list."""
    return [
        track_dialogs,
        emulation_listener,
        policies.guard,
        Collector(redact_headers=config.tools.redact_headers, max_browser_bytes=config.tools.collect_browser_max_bytes),
    ]


def _endpoint_is_loopback(description: str) -> bool:
    """Whether a listen endpoint string only accepts connections from this machine."""
    kind, _, named = endpoint_fields(description)
    if kind == "unix":
        return True
    if kind not in ("tcp", "tcp6", "ssl") or "interface" not in named:
        return False
    address = named["interface"]
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address == "localhost"


def check_deployment(config: Config) -> None:
    """Refuse configurations that would be unsafe to start with."""
    if config.auth.mode == "none":
        exposed = [e for e in config.server.listen if not _endpoint_is_loopback(e)]
        if exposed:
            raise ConfigError(
                'auth.mode: "none" trusts X-User-Id and is only allowed when every listener is on a '
                f"loopback interface; these are not: {', '.join(exposed)}"
            )


def identity_providers(reactor, config: Config, store) -> list:
    """The authenticators besides API tokens that ``auth.*`` switches on: JWTs, Basic."""
    auth = config.auth
    providers: list = []
    if auth.jwt_secret or auth.jwks_url:
        jwks = JWKSCache.for_url(reactor, auth.jwks_url, timeout=auth.jwks_timeout) if auth.jwks_url else None
        providers.append(
            JWTAuthenticator(
                reactor,
                secret=auth.jwt_secret,
                jwks=jwks,
                audiences=audiences_for(auth.jwt_audience, config.server.public_url),
                issuer=auth.jwt_issuer,
                user_claim=auth.user_claim,
                permissions_claim=auth.permissions_claim,
                leeway=auth.jwt_leeway,
            )
        )
    if auth.basic:
        providers.append(BasicAuthenticator(store, reactor))
    return providers


def _exit_failed() -> None:
    """End the process with status 1, once the reactor has shut down."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


#: The cycle collector's thresholds for the running daemon. Python's default (700) starts a
#: young collection every few hundred objects a request leaves alive for a moment: under load
#: that is about one per call and a tenth of the daemon's CPU, all of it finding no garbage
#: (a call's objects die by reference counting). Once every ten thousand, the collections of
#: a load run cost 0.05 s of CPU in 10 s instead of 1 s; what cycles there are go at the
#: latest ten thousand objects later (a few calls under load, a little more memory idle).
GC_THRESHOLDS = (10_000, 10, 10)


def _freeze_what_started(_) -> None:
    """The daemon's start built what lives as long as the process (modules, configuration, tool
    schemas): out of the cycle collector's sight, the collector's full passes no longer stall
    the reactor scanning it (under load, the p99 latency at 16 connections fell from 67 to
    17 ms); and the collector runs less often (`GC_THRESHOLDS`). Not for a service started
    inside another program (`MCProxyService.start`), whose collector is that program's."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


class MCProxyService(StartInOrder):
    """The daemon: its parts as child services, started in the order they are added and
    stopped in reverse (see `mcproxy.lifecycle`). `from_config` is the table of contents."""

    # The parts tests, benchmarks and plugins reach, set by `from_config`.
    store: IStore
    artifacts: ArtifactStore
    sessions: SessionRegistry
    metrics: Metrics
    activity: ActivityLog
    pool: BrowserPool
    tools: ToolRegistry
    #: This process as a node of a cluster (None unless ``cluster.enabled``).
    cluster: ClusterNode | None
    #: The live tunnels of browsers that dial in (``mcproxy-connect``).
    tunnels: Tunnels
    #: The browsers this process launches for users registered with ``launch: true``.
    launched: LaunchedBrowsers

    def __init__(self, reactor, config: Config, source: ConfigSource | None = None):
        super().__init__()
        self.reactor = reactor
        self.config = config
        #: Where ``config`` came from; a live reload reads it again (None: nothing to reload).
        self.source = source
        self.drain_timeout = config.server.drain_timeout
        self.notifier = systemd.Notifier(reactor)
        #: The parts that take on a reloaded configuration's live keys (see `reconfigure`).
        self.reconfigurable: list[Reconfigurable] = []
        self.listeners: list[Listener] = []
        self.cluster = None
        #: Where the public listeners send each user's requests, in a cluster.
        self.placement: EdgePlacement | None = None
        self._draining: defer.Deferred | None = None
        self._told_stopping = False

    @classmethod
    def from_config(cls, reactor, config: Config, source: ConfigSource | None = None) -> "MCProxyService":
        """Validate what can be validated before the reactor runs, then build every part.

        Nothing here does I/O: the store opens, plugins start, browsers connect and the
        listeners listen when the service starts, in this order.
        """
        check_deployment(config)
        find_plugins(config.plugins.enabled, config.plugins.settings)
        systemd.check_socket_activation(reactor, config.server.listen)
        daemon = cls(reactor, config, source)
        attach, live = daemon.attach, daemon.live

        daemon.store = store = attach(
            StoreService(store_for_url(config.store.url, reactor), config.server.data_dir)
        ).store
        attach(AdminTokenService(store, config.server.data_dir, reactor))
        audit = attach(AuditLog(config.audit.path, reactor))
        node_id = internal_address(config)[0] if config.cluster.enabled else ""
        daemon.artifacts = artifacts = attach(
            ArtifactStore(config.server.data_dir, config.artifacts, reactor, node_id=node_id)
        )
        daemon.sessions = sessions = live(SessionRegistry.from_config(reactor, config))
        daemon.metrics = metrics = attach(
            Metrics(
                reactor,
                sessions=sessions.counts,
                browsers=lambda: pool.status_counts(),  # built below; read at scrape time
                registered_users=store.count_users,
            )
        )
        plugins = attach(
            load_plugins(config.plugins.enabled, config, store, reactor, metrics, settings=config.plugins.settings)
        )
        daemon.activity = activity = ActivityLog(reactor)
        policies = live(PolicyBook(config.browsing))
        # A user's tunnel arriving has their browser connect at once (the pool is built below).
        daemon.tunnels = tunnels = Tunnels(reactor, config.browser, on_arrival=lambda user: pool.connect_now(user))
        # An idle launched browser's link closes before the browser stops; a call of a user
        # whose launched browser ended has it connect at once (the pool is built below).
        daemon.launched = launched = LaunchedBrowsers.from_config(
            reactor,
            config,
            on_idle=lambda user: daemon.pool.forget(user),
            wake=lambda user: daemon.pool.connect_now(user),
        )
        open_link = metrics.counting_reconnects(tunnels.links(launched.links(open_cdp_link)))
        if config.cluster.enabled:
            # The node is built below, from the pool; its users' links ask it at every command,
            # and its users' browsers keep their page books in Redis through it.
            open_link = fenced_links(
                open_link, lambda user_id: daemon.cluster is not None and daemon.cluster.owns(user_id)
            )
        daemon.pool = pool = live(
            BrowserPool(
                reactor,
                config.browser,
                open_link=open_link,
                status_listeners=[activity.browser_status],
                max_users=config.limits.max_users,
                max_pages_per_user=config.limits.max_pages_per_user,
                page_listeners=page_listeners(config, policies),
                page_books=(lambda user_id: cast(ClusterNode, daemon.cluster).page_book(user_id))
                if config.cluster.enabled
                else None,
            )
        )
        # Stopped after the pool has closed every link, so no link restarts a launched browser.
        attach(launched)
        browsers = attach(
            RegisteredBrowsers(pool, store, reactor, connect_at_start=not config.cluster.enabled, on_use=launched.used)
        )
        attach(tunnels)
        attach(sessions)
        revocation = attach(RevocationWatch(sessions, store, reactor, also=[tunnels]))
        limits = live(RequestLimits(reactor, config.ratelimit, on_limited=metrics.rate_limited))
        daemon.tools = tools = live(
            ToolRegistry(
                browsers.browser_for,
                config.tools,
                reactor,
                artifacts=artifacts,
                limits=limits,
                on_call_started=[
                    metrics.tool_call_started,
                    activity.tool_call_started,
                    *plugins.call_started_observers(),
                ],
                on_call_finished=[
                    audit.tool_call,
                    metrics.tool_call_finished,
                    activity.tool_call_finished,
                    *plugins.call_finished_observers(),
                ],
                policies=policies,
            )
        )
        daemon.cluster = None
        if config.cluster.enabled:
            # Tool limits stay in `limits` (see mcproxy.cluster.limits); the per-user ones are shared.
            shared = live(SharedLimits(reactor, config.ratelimit, limits, on_limited=metrics.rate_limited))
            daemon.cluster = ClusterNode(reactor, config, store=store, pool=pool, sessions=sessions, limits=shared)
            daemon.cluster.let_go += [tunnels.let_go, launched.let_go]
            artifacts.index = daemon.cluster.artifact_index
        site = daemon._web(
            store, pool, sessions, tools, limits, metrics, plugins, activity, audit, artifacts, revocation
        )
        if daemon.cluster is not None:
            internal = daemon._internal_site(metrics, plugins, audit, artifacts)
            attach(
                Listener.from_config(reactor, config.cluster.internal_listen, internal, key="cluster.internal_listen")
            )
            attach(daemon.cluster)
            metrics.registry.register(ClusterMetrics(daemon.cluster, daemon.placement))
        daemon.listeners = [attach(Listener.from_config(reactor, endpoint, site)) for endpoint in config.server.listen]
        return daemon

    def attach(self, part: ServiceT) -> ServiceT:
        """Add ``part`` as the next child to start (and the first of those to stop after it)."""
        part.setServiceParent(self)
        return part

    def live(self, part: PartT) -> PartT:
        """Hand ``part`` every configuration a reload makes (its ``reconfigure(config)``)."""
        self.reconfigurable.append(part)
        return part

    def _web(
        self, store, pool, sessions, tools, limits, metrics, plugins, activity, audit, artifacts, revocation
    ) -> ProxySite:
        """The HTTP side: who calls (`Admission`), the MCP transports, the admin API and
        dashboard, /metrics, the OAuth metadata, and the site that serves them."""
        config, reactor, live, cluster = self.config, self.reactor, self.live, self.cluster
        api_tokens = TokenAuthenticator(store, reactor)

        def revoked_here(token_id: str) -> defer.Deferred:
            """Stop honouring a revoked token in this process at once: its cached verdicts go,
            and the sessions opened with it end (the store decides whether it is revoked yet)."""
            api_tokens.forget(token_id)
            return defer.Deferred.fromCoroutine(revocation.check_token(token_id))

        async def token_revoked(token_id: str) -> None:
            await revoked_here(token_id)
            if cluster is not None:
                await cluster.events.publish(TOKEN_REVOKED, token=token_id)

        if cluster is not None:
            cluster.on_token_revoked(revoked_here)
            cluster.on_reload(self._reload_logged)
            cluster.events.on_resubscribed(lambda: defer.Deferred.fromCoroutine(revocation.check()))
        metadata = ProtectedResource(config.server.public_url, config.auth.authorization_servers)
        chain = AuthenticationChain(
            [api_tokens, *identity_providers(reactor, config, store), *plugins.authenticators],
            config.auth.mode,
            reactor,
            resource_metadata=metadata.metadata_url,
            offer_basic=config.auth.basic,
        )
        self.transports = transports = live(
            McpTransports(
                reactor,
                config,
                tools,
                sessions,
                resources=ArtifactResources(artifacts),
                records=self.cluster.session_records if self.cluster is not None else None,
            )
        )
        origins = live(OriginPolicy(config))
        started_at = reactor.seconds()
        self.admin = admin = live(
            AdminDependencies.from_config(
                reactor,
                config,
                store=store,
                pool=pool,
                sessions=sessions,
                started_at=started_at,
                token_revoked=token_revoked,
                reload_config=self.reload,
                cluster=self.cluster,
                tunnel_source=self.tunnels.source,
                tunnel_unregistered=self.tunnels.unregistered,
                launched=self.launched,
            )
        )
        metrics_endpoint = live(MetricsEndpoint(metrics, config.metrics.allowed_networks))
        place = None
        if cluster is not None:
            self.placement = EdgePlacement(
                reactor,
                cluster,
                failover_wait=config.cluster.failover_wait,
                max_body=config.server.max_body_bytes,
                read_only=tools.is_read_only,
                watch_interval=config.cluster.renew_interval,
            )
            place = self.placement.place
        overview = Overview(
            clock=reactor,
            store=store,
            pool=pool,
            sessions=sessions,
            activity=activity,
            started_at=started_at,
            cluster=self.cluster,
        )
        admission = Admission(
            chain.authenticate,
            limits.check_user if cluster is None else cluster.limits.check_user,
            metrics.auth_failure,
        )
        root = build_router(
            origins=origins,
            admission=admission,
            transports=transports,
            admin=admin,
            metrics=metrics_endpoint,
            well_known=WellKnown(metadata),
            dashboard=Dashboard(overview),
            audit=plugins.admin_audit(audit.admin_action),
            place=place,
            tunnel=TunnelEndpoint(
                reactor,
                config.browser,
                self.tunnels,
                authenticate=admission.authenticate,
                store=store,
                pool=pool,
                pull=cluster.pull if cluster is not None else None,
            ).area(),
        )
        return live(
            ProxySite.from_config(
                root,
                config,
                check_address=limits.check_address,
                metrics=plugins.site_metrics(metrics),
                registry=metrics.registry,
                reactor=reactor,
            )
        )

    def _internal_site(self, metrics, plugins, audit, artifacts) -> ProxySite:
        """The internal listener's site: the routes a user's owner serves (the MCP endpoints,
        a user's registration, status and removal) and the files of the artifacts this
        process holds, for requests the other processes signed.
        Host, Origin, client address rules and rate limits were applied where they arrived."""
        config, cluster = self.config, self.cluster
        assert cluster is not None
        root = build_router(
            origins=TrustedOrigins(),
            admission=cluster.internal_admission(refused=metrics.auth_failure),
            transports=self.transports,
            admin=self.admin,
            audit=plugins.admin_audit(audit.admin_action),
            place=OwnerCheck(cluster).place,
            internal=HeldArtifacts(artifacts).routes(),
        )
        # Other processes keep their connections for a minute: ours stay open longer, so a
        # forward never lands on a connection this side is closing.
        internal = config.replace(
            server={"keepalive_timeout": 300.0, "max_connections_per_address": 0, "hsts_max_age": 0, "access_log": ""},
            network={"ip_allow": (), "ip_deny": (), "trusted_proxies": ()},
        )
        return ProxySite.from_config(root, internal, metrics=plugins.site_metrics(metrics), reactor=self.reactor)

    @property
    def ports(self) -> list:
        """The listening ports (for tests and logs): empty before the start and after a drain."""
        return [listener.port for listener in self.listeners if listener.running and listener.port is not None]

    def startService(self):
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGHUP, lambda *_: self.reactor.callFromThread(self.on_hangup))
            # After the reactor's own handlers (installed as it starts), which would stop at
            # once and make twistd re-raise the signal: SIGTERM drains, then exits 0.
            self.reactor.callWhenRunning(
                signal.signal, signal.SIGTERM, lambda *_: self.reactor.callFromThread(self.on_terminate)
            )
        super().startService()
        started = self.started
        if started is not None:  # set by StartInOrder.startService
            started.addCallback(self._ready)
            started.addCallback(_freeze_what_started)
            started.addErrback(self._start_failed)

    async def start(self) -> None:
        """Start every part in order (what `startService` does), for tests and benchmarks
        that run the daemon in their own reactor; raises what stopped the start."""
        super().startService()
        if self.started is not None:  # set by StartInOrder.startService
            await self.started
        self._ready(None)

    def _ready(self, _) -> None:
        for listener in self.listeners:
            log.info("mcproxy listening on {endpoint}", endpoint=listener.description)
        self.notifier.ready(f"Listening on {', '.join(self.config.server.listen)}")

    def _start_failed(self, failure):
        if failure.check(defer.CancelledError):
            return  # stopped while starting: nothing went wrong
        log.failure("mcproxy could not start", failure)
        if self.reactor.running:
            # twistd exits 0 after any stop; a start that failed must not look like a clean
            # stop to systemd (Restart=on-failure) or to whoever started the process.
            self.reactor.addSystemEventTrigger("after", "shutdown", _exit_failed)
            try:
                self.reactor.stop()
            except error.ReactorNotRunning:
                pass  # already stopping

    def on_hangup(self) -> None:
        """SIGHUP: reopen the audit log (after logrotate moved it), then reload the configuration."""
        for part in self:
            if isinstance(part, AuditLog) and part.running:
                part.reopen()
                log.info("Reopened the audit log {path}", path=self.config.audit.path)
        if not self.started or not self.started.called:
            log.warn("SIGHUP while mcproxy is still starting: the configuration is not reloaded")
            return
        self._reload_logged()

    def _reload_logged(self) -> None:
        """`reload`, for a signal or another process of the cluster: nobody to answer, so a
        refused configuration is only logged."""
        try:
            self.reload()
        except ConfigError:
            pass  # logged by reload; the running configuration stays

    def reload(self) -> list[str]:
        """Re-read the configuration and apply what can change while running (`mcproxy.reload`).

        The whole new configuration is validated before anything changes; an invalid one
        raises `ConfigError` (naming the key) and the running one stays. Sessions and
        browser connections are untouched. Returns the changed keys that need a restart.
        """
        try:
            if self.source is None:
                raise ConfigError("this daemon was not started from a configuration it could read again")
            new = self.source.load()
            check_deployment(new)
        except ConfigError as e:
            log.error("Configuration reload refused, the running configuration stays: {error}", error=str(e))
            raise
        effective, applied, restart_needed = plan(self.config, new)
        for key in restart_needed:
            log.warn("Configuration key {key} changed: it needs a restart, the running value stays", key=key)
        self.reconfigure(effective)
        log.info(
            "Configuration reloaded from {path}: {changed}",
            path=self.source.path or "(no file: environment and flags)",
            changed=", ".join(applied) or "no live key changed",
        )
        return restart_needed

    def reconfigure(self, config: Config) -> None:
        """Hand a validated configuration to every part that reads a live key; the daemon
        itself applies ``server.drain_timeout`` and ``server.log_level``."""
        for part in self.reconfigurable:
            part.reconfigure(config)
        self.drain_timeout = config.server.drain_timeout
        apply_log_level(config.server.log_level)
        self.config = config

    def on_terminate(self) -> None:
        """SIGTERM: drain, then stop the reactor, so twistd exits 0; a second SIGTERM cuts the wait short."""
        if self._draining is not None:
            log.info("SIGTERM again: cancelling the remaining tool calls now")
            self._draining.cancel()
            return
        self._draining = defer.Deferred.fromCoroutine(self.drain())
        self._draining.addErrback(lambda failure: log.failure("Draining failed; stopping anyway", failure))
        self._draining.addBoth(lambda _: self.reactor.stop() if self.reactor.running else None)

    async def drain(self) -> None:
        """Stop listening and taking MCP requests; let running tool calls finish for up to
        ``server.drain_timeout`` seconds, then cancel the rest (see `McpTransports.drain`).
        In a cluster, the other processes stop sending users here first, and every user this
        one owned is handed over at the end."""
        timeout = self.drain_timeout
        log.info("SIGTERM: draining for up to {timeout} s before stopping", timeout=timeout)
        self._tell_stopping()
        cluster = self.cluster
        if cluster is not None:
            await cluster.start_draining()
        for listener in self.listeners:
            if listener.running:
                await listener.stopService()
        await self.transports.drain(timeout)
        if cluster is not None:
            await cluster.hand_over()
            await cluster.linger()

    def _tell_stopping(self) -> None:
        """``STOPPING=1`` to systemd, once, whether the stop began with a drain or not."""
        if not self._told_stopping:
            self._told_stopping = True
            self.notifier.stopping()

    def stopService(self):
        self._tell_stopping()
        return super().stopService()

    async def stop(self) -> None:
        """Stop every part, in reverse order (what `stopService` does)."""
        await self.stopService()
