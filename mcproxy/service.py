"""The composition root: builds every part of the daemon from one `Config`."""

import ipaddress
import os
import signal
import threading

from twisted.application import service
from twisted.internet import defer, error
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger

from mcproxy import systemd
from mcproxy.config import Config, ConfigError
from mcproxy.errors import Forbidden, ServerFull, ToolError
from mcproxy.reload import ConfigSource, apply_log_level, plan

log = Logger()

ACTIVITY_WRITE_INTERVAL = 60.0
#: Lifetime of a registration's session token (never past the token it is made from).
SESSION_TOKEN_TTL = 30 * 86400.0


def _endpoint_is_loopback(description: str) -> bool:
    """Whether a listen endpoint string only accepts connections from this machine."""
    kind, _, rest = description.partition(":")
    if kind == "unix":
        return True
    if kind not in ("tcp", "tcp6", "ssl"):
        return False
    for part in rest.split(":"):
        if part.startswith("interface="):
            address = part.split("=", 1)[1].replace("\\:", ":")
            try:
                return ipaddress.ip_address(address).is_loopback
            except ValueError:
                return address == "localhost"
    return False


def check_deployment(config: Config) -> None:
    """Refuse configurations that would be unsafe to start with."""
    if config.auth.mode == "none":
        exposed = [e for e in config.server.listen if not _endpoint_is_loopback(e)]
        if exposed:
            raise ConfigError(
                'auth.mode: "none" trusts X-User-Id and is only allowed when every listener is on a '
                f"loopback interface; these are not: {', '.join(exposed)}"
            )


class MCProxyService(service.MultiService):
    """The daemon: store, browser pool, MCP sessions, tools and the HTTP listeners."""

    def __init__(self, reactor, config: Config, source: ConfigSource | None = None):
        super().__init__()
        self.reactor = reactor
        self.config = config
        #: Where ``config`` came from; a live reload reads it again (None: nothing to reload).
        self.source = source
        self.ports: list = []
        self.store = None
        self.pool = None
        self.sessions = None
        self.metrics = None
        self.metrics_resource = None
        self.plugins = None
        self.activity = None
        self.notifier = systemd.Notifier(reactor)
        self.audit = None
        self.revocations = None
        self.artifacts = None
        # The running parts a live reload reconfigures; set by `start`.
        self.limits = None
        self.policies = None
        self.tools = None
        self.transports = None
        self.admin = None
        self.site = None
        self._starting: defer.Deferred | None = None
        self._draining: defer.Deferred | None = None
        self._told_stopping = False

    @classmethod
    def from_config(cls, reactor, config: Config, source: ConfigSource | None = None) -> "MCProxyService":
        """Validate what can be validated before the reactor runs, then build the service."""
        from mcproxy.plugins import find_plugins

        check_deployment(config)
        find_plugins(config.plugins.enabled, config.plugins.settings)
        systemd.check_socket_activation(reactor, config.server.listen)
        for endpoint in config.server.listen:
            try:
                serverFromString(reactor, endpoint)
            except (ValueError, TypeError, KeyError) as e:
                raise ConfigError(f"server.listen: bad endpoint {endpoint!r}: {e}") from None
        return cls(reactor, config, source)

    def startService(self):
        super().startService()
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGHUP, lambda *_: self.reactor.callFromThread(self.on_hangup))
            # After the reactor's own handlers (installed as it starts), which would stop at
            # once and make twistd re-raise the signal: SIGTERM drains, then exits 0.
            self.reactor.callWhenRunning(
                signal.signal, signal.SIGTERM, lambda *_: self.reactor.callFromThread(self.on_terminate)
            )
        self._starting = defer.Deferred.fromCoroutine(self.start())
        self._starting.addErrback(self._start_failed)

    def _start_failed(self, failure):
        if failure.check(defer.CancelledError):
            return  # stopped while starting: stop() cancelled the start, nothing went wrong
        log.failure("mcproxy could not start", failure)
        if self.reactor.running:
            try:
                self.reactor.stop()
            except error.ReactorNotRunning:
                pass  # already stopping

    async def start(self) -> None:
        """Open the store, make the admin token, connect known browsers, then listen."""
        from mcproxy.activity import ActivityLog
        from mcproxy.artifacts import ArtifactStore
        from mcproxy.audit import AuditLog
        from mcproxy.auth.bootstrap import ensure_admin_token
        from mcproxy.auth.chain import AuthenticationChain
        from mcproxy.auth.ratelimit import RequestLimits
        from mcproxy.auth.tokens import TokenAuthenticator
        from mcproxy.browser.collect import Collector
        from mcproxy.browser.connect import open_cdp_link, probe_browser
        from mcproxy.browser.dialogs import track_dialogs
        from mcproxy.browser.emulation import emulation_listener
        from mcproxy.browser.policy import PolicyBook
        from mcproxy.browser.pool import BrowserPool
        from mcproxy.metrics import Metrics
        from mcproxy.plugins import load_plugins
        from mcproxy.session.registry import SessionRegistry
        from mcproxy.session.revocation import RevocationWatch
        from mcproxy.storage import open_store
        from mcproxy.tools.registry import ToolRegistry
        from mcproxy.web.admin import AdminAPI, AdminDependencies
        from mcproxy.web.dashboard import DashboardResource, OverviewResource
        from mcproxy.web.mcp_common import check_host, check_origin
        from mcproxy.web.metrics import MetricsResource
        from mcproxy.web.network import ClientPolicy
        from mcproxy.web.oauth import ProtectedResource, WellKnownResource
        from mcproxy.web.site import ConnectionLimits, ProxySite, Root
        from mcproxy.web.transports import McpTransports

        config, reactor = self.config, self.reactor
        os.makedirs(config.server.data_dir, mode=0o700, exist_ok=True)
        self.store = store = await open_store(config.store.url, reactor)
        await ensure_admin_token(store, config.server.data_dir, reactor)
        self.policies = policies = PolicyBook(config.browsing)
        apply_log_level(config.server.log_level)

        self.metrics = metrics = Metrics(
            reactor,
            sessions=lambda: sessions.counts(),  # both built below; read at scrape time
            browsers=lambda: pool.status_counts(),
            registered_users=store.count_users,
        )
        metrics.start()
        self.plugins = plugins = load_plugins(
            config.plugins.enabled, config, store, reactor, metrics, settings=config.plugins.settings
        )
        await plugins.start()
        self.activity = activity = ActivityLog(reactor)
        started_at = reactor.seconds()
        self.pool = pool = BrowserPool(
            reactor,
            config.browser,
            open_link=metrics.counting_reconnects(open_cdp_link),
            status_listeners=[
                lambda browser: activity.browser_changed(
                    browser.user_id, browser.browser_url, browser.status, browser.last_error
                )
            ],
            max_users=config.limits.max_users,
            max_pages_per_user=config.limits.max_pages_per_user,
            page_listeners=[
                track_dialogs,
                emulation_listener,
                policies.guard,
                Collector(
                    redact_headers=config.tools.redact_headers,
                    max_browser_bytes=config.tools.collect_browser_max_bytes,
                ),
            ],
        )
        for user in await store.list_users():
            try:
                pool.browser_for(user.user_id, user.browser_url)
            except ServerFull as e:
                log.warn("Not connecting the remaining registered browsers now: {reason}", reason=e.message)
                break
        self.sessions = sessions = SessionRegistry(
            reactor,
            config.session.idle_timeout,
            max_per_user=config.limits.max_sessions_per_user,
            max_total=config.limits.max_sessions,
        )
        self.revocations = RevocationWatch(sessions, store, reactor)
        self.revocations.start()

        last_touched: dict[str, float] = {}

        async def browser_for_user(user_id: str):
            """The user's browser; the pool answers for users it knows, the store for the rest.

            Registration and deletion go through the pool too, so a browser the pool holds is
            always the registered one; last activity is written at most once a minute.
            """
            browser = pool.existing(user_id)
            if browser is None:
                user = await store.get_user(user_id)
                if user is None:
                    raise ToolError(
                        f"No browser is registered for user {user_id}. Register one with POST /api/register "
                        '{"browserURL": "http://127.0.0.1:9222"} (start Chrome with --remote-debugging-port=9222).'
                    )
                browser = pool.browser_for(user_id, user.browser_url)
            now = reactor.seconds()
            if now - last_touched.get(user_id, float("-inf")) >= ACTIVITY_WRITE_INTERVAL:
                last_touched[user_id] = now
                await store.touch_user(user_id, now)
            return browser

        self.limits = limits = RequestLimits(reactor, config.ratelimit, on_limited=metrics.rate_limited)
        self.audit = audit = AuditLog(config.audit.path, reactor)
        self.artifacts = artifacts = ArtifactStore(config.server.data_dir, config.artifacts, reactor)
        artifacts.start()
        self.tools = tools = ToolRegistry(
            browser_for_user,
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
        api_tokens = TokenAuthenticator(store, reactor)
        metadata = ProtectedResource(config.server.public_url, config.auth.authorization_servers)
        chain = AuthenticationChain(
            [api_tokens, *self._identity_providers(store), *plugins.authenticators],
            config.auth.mode,
            reactor,
            resource_metadata=metadata.metadata_url,
            offer_basic=config.auth.basic,
        )

        authenticate_counted = metrics.counting_auth_failures(chain.authenticate)

        def authenticate_for(endpoint_class: str):
            async def authenticate(request):
                principal = await authenticate_counted(request)
                if not principal.may_connect_from(getattr(request, "mcproxy_client", None)):
                    raise Forbidden("this credential may not be used from your address", code="address_denied")
                limits.check_user(principal.user_id, endpoint_class)
                return principal

            return authenticate

        authenticate_admin = authenticate_for("admin")
        self.transports = transports = McpTransports(
            reactor, config, authenticate_for("mcp"), tools, sessions, resources=artifacts
        )

        def check_api_request(request) -> None:
            """The MCP endpoints' Host and Origin rules (kept live by reload), for the HTTP API;
            the server's own pages (same origin) may call it too."""
            check_host(request, transports.allowed_hosts, transports.allow_loopback_origins)
            origin = request.getHeader(b"origin")
            host = request.getHeader(b"host")
            if origin is not None and host is not None and origin.partition(b"://")[2] == host:
                return
            check_origin(request, transports.allowed_origins, transports.allow_loopback_origins)

        self.admin = admin = AdminAPI(
            AdminDependencies(
                clock=reactor,
                store=store,
                pool=pool,
                sessions=sessions,
                authenticate=authenticate_admin,
                probe_browser=lambda url: probe_browser(reactor, config.browser, url),
                max_body_bytes=config.server.max_body_bytes,
                session_token_ttl=SESSION_TOKEN_TTL,
                started_at=started_at,
                check_request=check_api_request,
                max_metadata_bytes=config.limits.max_metadata_bytes,
                user_networks=config.browser.user_networks,
                resolve_timeout=config.browser.connect_timeout,
                token_revoked=api_tokens.forget,
                audit=plugins.admin_audit(audit.admin_action),
                reload_config=self.reload,
            )
        )
        self.metrics_resource = MetricsResource(metrics, authenticate_admin, config.metrics.allowed_networks)
        root = Root(
            {
                b"sse": transports.sse_resource,
                b"message": transports.message_resource,
                b"mcp": transports.mcp_resource,
                b"metrics": self.metrics_resource,
                b".well-known": WellKnownResource(metadata),
                b"admin": DashboardResource(
                    OverviewResource(
                        clock=reactor,
                        store=store,
                        pool=pool,
                        sessions=sessions,
                        activity=activity,
                        authenticate=authenticate_admin,
                        started_at=started_at,
                    )
                ),
            },
            admin,
        )
        network = config.network
        self.site = site = ProxySite(
            root,
            max_body_bytes=config.server.max_body_bytes,
            client_policy=ClientPolicy(network.ip_allow, network.ip_deny, network.trusted_proxies),
            check_address=limits.check_address,
            hsts_max_age=config.server.hsts_max_age,
            metrics=plugins.site_metrics(metrics),
            limits=ConnectionLimits.from_config(config),
            registry=metrics.registry,
            reactor=reactor,
        )
        for description in config.server.listen:
            port = await serverFromString(reactor, description).listen(site)
            self.ports.append(port)
            log.info("mcproxy listening on {endpoint}", endpoint=description)
        self.notifier.ready(f"Listening on {', '.join(config.server.listen)}")

    def _identity_providers(self, store) -> list:
        """The authenticators besides API tokens that ``auth.*`` switches on: JWTs, Basic."""
        from mcproxy.auth.basic import BasicAuthenticator
        from mcproxy.auth.jwks import JWKSCache
        from mcproxy.auth.jwt import JWTAuthenticator, audiences_for

        auth, reactor = self.config.auth, self.reactor
        providers = []
        if auth.jwt_secret or auth.jwks_url:
            jwks = JWKSCache.for_url(reactor, auth.jwks_url, timeout=auth.jwks_timeout) if auth.jwks_url else None
            providers.append(
                JWTAuthenticator(
                    reactor,
                    secret=auth.jwt_secret,
                    jwks=jwks,
                    audiences=audiences_for(auth.jwt_audience, self.config.server.public_url),
                    issuer=auth.jwt_issuer,
                    user_claim=auth.user_claim,
                    permissions_claim=auth.permissions_claim,
                    leeway=auth.jwt_leeway,
                )
            )
        if auth.basic:
            providers.append(BasicAuthenticator(store, reactor))
        return providers

    def on_hangup(self) -> None:
        """SIGHUP: reopen the audit log (after logrotate moved it), then reload the configuration."""
        if self.audit is not None:
            self.audit.reopen()
            log.info("Reopened the audit log {path}", path=self.config.audit.path)
        if self.site is None:
            log.warn("SIGHUP while mcproxy is still starting: the configuration is not reloaded")
            return
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
        self._apply(effective)
        log.info(
            "Configuration reloaded from {path}: {changed}",
            path=self.source.path or "(no file: environment and flags)",
            changed=", ".join(applied) or "no live key changed",
        )
        return restart_needed

    def _apply(self, config: Config) -> None:
        """Hand a validated configuration to the running parts (the ones built from its live keys)."""
        from mcproxy.web.network import ClientPolicy
        from mcproxy.web.site import ConnectionLimits

        network = config.network
        client_policy = ClientPolicy(network.ip_allow, network.ip_deny, network.trusted_proxies)
        self.limits.reconfigure(config.ratelimit)
        self.policies.reconfigure(config.browsing)
        self.tools.reconfigure(config.tools)
        self.transports.reconfigure(config)
        self.site.client_policy = client_policy
        self.site.max_body_bytes = self.admin.deps.max_body_bytes = config.server.max_body_bytes
        self.admin.deps.max_metadata_bytes = config.limits.max_metadata_bytes
        self.admin.deps.user_networks = config.browser.user_networks
        self.site.hsts_max_age = config.server.hsts_max_age
        self.site.limits = ConnectionLimits.from_config(config)
        self.sessions.idle_timeout = config.session.idle_timeout
        self.sessions.max_per_user = config.limits.max_sessions_per_user
        self.sessions.max_total = config.limits.max_sessions
        self.pool.set_limits(config.limits.max_users, config.limits.max_pages_per_user)
        self.metrics_resource.reconfigure(config.metrics.allowed_networks)
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
        ``server.drain_timeout`` seconds, then cancel the rest (see `McpTransports.drain`)."""
        timeout = self.config.server.drain_timeout
        log.info("SIGTERM: draining for up to {timeout} s before stopping", timeout=timeout)
        self._tell_stopping()
        ports, self.ports = self.ports, []
        for port in ports:
            await port.stopListening()
        if self.transports is not None:
            await self.transports.drain(timeout)

    def _tell_stopping(self) -> None:
        """``STOPPING=1`` to systemd, once, whether the stop began with a drain or not."""
        if not self._told_stopping:
            self._told_stopping = True
            self.notifier.stopping()

    def stopService(self):
        super().stopService()
        return defer.Deferred.fromCoroutine(self.stop())

    async def stop(self) -> None:
        """Stop listening, end sessions, close browser connections and the store."""
        if self._starting is not None and not self._starting.called:
            self._starting.cancel()
        self._tell_stopping()
        if self.metrics is not None:
            self.metrics.stop()
        for port in self.ports:
            await port.stopListening()
        self.ports.clear()
        if self.revocations is not None:
            self.revocations.stop()
        if self.sessions is not None:
            self.sessions.close_all()
        if self.pool is not None:
            await self.pool.close()
        if self.plugins is not None:
            await self.plugins.stop()
        if self.store is not None:
            await self.store.close()
        if self.audit is not None:
            self.audit.close()
        if self.artifacts is not None:
            self.artifacts.stop()
