"""The admin REST API: health, users' status, live reload, and what its handlers share.

Every answer is JSON; every error is ``{"error": {"code", "message"}}`` with a fitting
status. Handlers are coroutines that return ``(status, body)`` or raise an
`mcproxy.errors.MCProxyError`.
"""

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import attrs
from twisted.internet.defer import DeferredLock, TimeoutError, maybeDeferred, succeed
from twisted.logger import Logger

from mcproxy.auth.principal import ADMIN, REGISTER
from mcproxy.auth.tokens import is_valid_user_id
from mcproxy.browser.connect import probe_browser
from mcproxy.browser.urls import is_tunnel
from mcproxy.config import ConfigError
from mcproxy.errors import BadRequest, Conflict, Forbidden, MCProxyError, NotFound
from mcproxy.storage.records import UserRecord
from mcproxy.web.http import read_body, read_json_object, require_json
from mcproxy.web.routes import Route, named_user

log = Logger()


def iso8601(timestamp: float | None) -> str | None:
    """Epoch seconds as an ISO 8601 UTC string (None stays None)."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


#: Seconds ``/health`` waits for the store: a balancer's check must not hang on it.
HEALTH_STORE_WAIT = 1.0

#: Lifetime of a registration's session token (never past the token it is made from).
SESSION_TOKEN_TTL = 30 * 86400.0

#: Between the processes of a cluster: the live status of the users a process serves.
SERVED_USERS_PATH = b"/_cluster/users"
#: Between the processes of a cluster: hand a user over to the process its tunnel reached (``% user``).
RELEASE_PATH = SERVED_USERS_PATH + b"/%s/release"


def live_status(pool, sessions, user_id: str) -> dict:
    """What only the process serving ``user_id`` knows of it: its browser connection's status
    and last error, and its open MCP sessions."""
    browser = pool.existing(user_id)
    return {
        "browserStatus": browser.status if browser is not None else "disconnected",
        "lastError": browser.last_error if browser is not None else None,
        "activeSessions": sessions.count_for_user(user_id),
    }


async def live_statuses(pool, sessions, cluster, principal, users: list[str]) -> tuple[dict, dict | None]:
    """(`live_status` of each of ``users``, the node that owns each in a ``cluster`` or None):
    in a cluster, the users another process serves as that process reports them."""
    if cluster is None:
        return {user: live_status(pool, sessions, user) for user in users}, None
    owners = await cluster.nodes_of(users)
    statuses = await cluster.live_statuses(principal, owners)
    for user in users:
        if user not in statuses:
            statuses[user] = live_status(pool, sessions, user)
    return statuses, owners


@attrs.define
class AdminDependencies:
    """What the admin API works on; built by the service."""

    clock: Any
    store: Any
    pool: Any
    sessions: Any
    #: Says which browser answers at a URL (`mcproxy.browser.pool.probe_browser`).
    probe_browser: Callable[[str], Awaitable[Any]]
    max_body_bytes: int
    session_token_ttl: float
    started_at: float
    max_metadata_bytes: int = 16384
    #: ``browser.user_networks``: which browsers each user may register.
    user_networks: tuple[str, ...] = ()
    resolve_timeout: float = 5.0
    #: Told of every revoked token id, so this process (and, in a cluster, every process)
    #: stops honouring it and ends the sessions opened with it at once.
    token_revoked: Callable[[str], Awaitable[object]] = lambda token_id: succeed(None)
    #: Live reload: re-reads the configuration; returns the changed keys that need a restart,
    #: raises ConfigError for an invalid configuration (None: the daemon cannot reload).
    reload_config: Callable[[], list[str]] | None = None
    #: This process as a node of a cluster (`mcproxy.cluster.service.ClusterNode`), or None.
    cluster: Any = None
    #: ``browser.require_tunnel``: browsers are registered as ``tunnel:`` only.
    require_tunnel: bool = False
    #: Where a user's browser tunnel comes from (`mcproxy.tunnel.registry.Tunnels.source`).
    tunnel_source: Callable[[str], str | None] = lambda user_id: None
    #: Told of each user unregistered here: its browser's tunnel, if any, closes for good.
    tunnel_unregistered: Callable[[str], None] = lambda user_id: None
    #: The browsers the proxy launches (`mcproxy.browser.launch.LaunchedBrowsers`), or None.
    launched: Any = None
    #: Held while a browser is registered: one registration at a time.
    registering: DeferredLock = attrs.Factory(DeferredLock)

    @classmethod
    def from_config(cls, clock, config, **parts: Any) -> "AdminDependencies":
        """The dependencies with the settings ``config`` gives; ``parts`` are the daemon's
        parts the API works on (store, pool, sessions...)."""
        deps = cls(
            clock=clock,
            probe_browser=lambda url: probe_browser(clock, config.browser, url),
            max_body_bytes=config.server.max_body_bytes,
            session_token_ttl=SESSION_TOKEN_TTL,
            resolve_timeout=config.browser.connect_timeout,
            require_tunnel=config.browser.require_tunnel,
            **parts,
        )
        deps.reconfigure(config)
        return deps

    def reconfigure(self, config) -> None:
        """Apply the body and metadata limits and ``browser.user_networks`` (live)."""
        self.max_body_bytes = config.server.max_body_bytes
        self.max_metadata_bytes = config.limits.max_metadata_bytes
        self.user_networks = config.browser.user_networks


class AdminAPI:
    """``/health``, ``/api/users/...`` and ``/api/admin/reload`` (the tokens:
    `mcproxy.web.admin_tokens`; registration: `mcproxy.web.registration`)."""

    def __init__(self, deps: AdminDependencies):
        self.deps = deps

    def health_routes(self) -> tuple[Route, ...]:
        """``/health``: for load balancers and monitors, which often send no ``Host`` the
        server knows (an address, or none at all); it answers with counts only."""
        return (Route(b"GET", r"/health/?", self.health),)

    def routes(self) -> tuple[Route, ...]:
        return (
            Route(b"GET", r"/api/users/?", self.list_users, auth="admin", permission=ADMIN),
            Route(b"GET", r"/api/users/(?P<user_id>[^/]+)/status/?", self.user_status, auth="admin", routed=named_user),
            Route(
                b"DELETE",
                r"/api/users/(?P<user_id>[^/]+)/?",
                self.delete_user,
                auth="admin",
                audit=True,
                routed=named_user,
            ),
            Route(b"POST", r"/api/admin/reload/?", self.reload_config, auth="admin", permission=ADMIN, audit=True),
            Route(b"GET", r"/api/cluster/?", self.cluster_view, auth="admin", permission=ADMIN),
            Route(
                b"POST",
                r"/api/users/(?P<user_id>[^/]+)/move/?",
                self.move_user,
                auth="admin",
                permission=ADMIN,
                audit=True,
                routed=named_user,
            ),
        )

    async def health(self, request):
        """Per process (a balancer asks each one), answered within `HEALTH_STORE_WAIT`: 503
        while the store does not answer, and in a cluster while this process cannot serve
        (draining, or without a valid lease)."""
        counted = maybeDeferred(self.deps.store.count_users).addTimeout(HEALTH_STORE_WAIT, self.deps.clock)
        try:
            registered = await counted
        except (TimeoutError, MCProxyError):
            registered = None
        body = {
            "status": "ok" if registered is not None else "store_unavailable",
            "activeSessions": self.deps.sessions.count(),
            "registeredUsers": registered,
            "browserConnections": self.deps.pool.connection_count(),
            "uptime": round(self.deps.clock.seconds() - self.deps.started_at, 3),
        }
        cluster = self.deps.cluster
        if cluster is not None:
            node = cluster.health()
            if node["status"] == "ok":
                node["status"] = body["status"]
            body.update(node)
        return (200 if body["status"] == "ok" else 503), body

    async def list_users(self, request):
        users = await self.deps.store.list_users()
        deps = self.deps
        ids = [user.user_id for user in users]
        statuses, nodes = await live_statuses(deps.pool, deps.sessions, deps.cluster, request.principal, ids)
        return 200, {"users": [self._status(user, statuses[user.user_id], nodes) for user in users]}

    async def user_status(self, request, user_id: str):
        user = await self._own_user(request, user_id)  # routed to the process that serves the user
        nodes = await self._nodes_of([user_id])
        return 200, self._status(user, live_status(self.deps.pool, self.deps.sessions, user_id), nodes)

    def internal_routes(self) -> tuple[Route, ...]:
        """Between the processes of a cluster, on the internal listener alone."""
        served = SERVED_USERS_PATH.decode()
        return (
            Route(b"GET", served + "/?", self.served_users, auth="admin", permission=ADMIN),
            Route(b"POST", served + "/(?P<user_id>[^/]+)/release/?", self.release_user, auth="admin"),
        )

    async def release_user(self, request, user_id: str):
        """Hand a user this process serves over to the process its browser's tunnel reached
        (which asks, for the tunnel's user: ``{"to": node}``)."""
        principal = request.principal
        if not principal.is_admin and principal.user_id != user_id:
            raise Forbidden("only the user's own tunnel moves the user", scope="tunnel")
        to = json_body(self.deps, request).get("to")
        if not isinstance(to, str) or not to:
            raise BadRequest('"to" must be the node id the user moves to', code="invalid_node")
        return 200, {"released": await self._cluster().hand_to(user_id, to)}

    async def served_users(self, request):
        """The live status of every user this process serves, for another process's view."""
        pool, sessions = self.deps.pool, self.deps.sessions
        return 200, {"users": {user: live_status(pool, sessions, user) for user in self._cluster().served()}}

    def _cluster(self):
        cluster = self.deps.cluster
        if cluster is None:
            raise NotFound("this proxy is not part of a cluster (cluster.enabled)", code="not_clustered")
        return cluster

    async def cluster_view(self, request):
        """The cluster's nodes and which node owns each registered user."""
        cluster = self._cluster()
        users = [user.user_id for user in await self.deps.store.list_users()]
        return 200, await cluster.describe(users)

    async def move_user(self, request, user_id: str):
        """Move a user to another process of the cluster (``{"node": id}``, or the one
        placement picks): its browser connection moves, Streamable HTTP sessions resume
        there, legacy SSE streams end and their clients reconnect."""
        cluster = self._cluster()
        to = json_body(self.deps, request, optional=True).get("node")
        if to is not None and (not isinstance(to, str) or not to):
            raise BadRequest('"node" must be a node id (see GET /api/cluster)', code="invalid_node")
        user = await self._own_user(request, user_id)
        return 200, await cluster.move(user.user_id, to)

    async def _nodes_of(self, users: list[str]) -> dict[str, str | None] | None:
        """Which node owns each user, in a cluster (None outside one)."""
        cluster = self.deps.cluster
        if cluster is None:
            return None
        return await cluster.nodes_of(users)

    async def delete_user(self, request, user_id: str):
        user = await self._own_user(request, user_id, REGISTER)
        self.deps.sessions.close_user(user.user_id)
        await self.deps.pool.forget(user.user_id)
        self.deps.tunnel_unregistered(user.user_id)
        if self.deps.launched is not None:
            await self.deps.launched.remove(user.user_id)
        await self.deps.store.delete_user(user.user_id)
        log.info("User {user_id} unregistered", user_id=user.user_id)
        if self.deps.cluster is not None:
            await self.deps.cluster.tell_user_deleted(user.user_id)
        return 204, None

    async def _own_user(self, request, user_id: str, permission: str | None = None) -> UserRecord:
        """The user record, for that user itself (holding ``permission``) or an admin."""
        principal = request.principal
        if not principal.is_admin:
            if principal.user_id != user_id:
                raise Forbidden("you may only see or change your own user", scope="admin")
            if permission is not None and not principal.has(permission):
                raise Forbidden(f"this credential lacks the {permission!r} permission", scope=permission)
        user = await self.deps.store.get_user(user_id)
        if user is None:
            raise NotFound(f"user {user_id!r} has no registered browser")
        return user

    def _browser_url(self, user: UserRecord) -> str:
        """The registered URL; for a tunnel, with where it comes from while it is connected."""
        source = self.deps.tunnel_source(user.user_id) if is_tunnel(user.browser_url) else None
        return user.browser_url + source if source else user.browser_url

    def _status(self, user: UserRecord, live: dict, nodes: dict[str, str | None] | None = None) -> dict:
        """A user's status object from its record and ``live`` (`live_status`); in a cluster
        (``nodes``), with the node that owns the user."""
        status = {
            "userId": user.user_id,
            "browserURL": self._browser_url(user),
            **live,
            "lastActivity": iso8601(user.last_activity),
        }
        if nodes is not None:
            status["node"] = nodes.get(user.user_id)
        return status

    # -- operations -------------------------------------------------------------

    async def reload_config(self, request):
        """Live reload, as SIGHUP does; 400 ``invalid_config`` (naming the key) keeps the running one.
        In a cluster, every other process then reloads its own configuration source."""
        if self.deps.reload_config is None:
            raise Conflict("this server cannot reload its configuration", code="reload_unavailable")
        try:
            restart_needed = self.deps.reload_config()
        except ConfigError as e:
            raise BadRequest(str(e), code="invalid_config") from None
        if self.deps.cluster is not None:
            await self.deps.cluster.tell_reloaded()
        return 200, {"reloaded": True, "restartNeeded": restart_needed}


def check_user_id(value: Any) -> str:
    """A ``userId`` from a request body, or 400."""
    if not is_valid_user_id(value):
        raise BadRequest('"userId" must be 1-128 characters of letters, digits, ".", "_", "@" or "-"')
    return value


def json_body(deps: AdminDependencies, request, optional: bool = False) -> dict:
    """The JSON object body (415 for any other type: no cross-site form posts); with
    ``optional``, an empty body reads as ``{}``."""
    if optional and not read_body(request, deps.max_body_bytes).strip():
        return {}
    require_json(request)
    return read_json_object(request, deps.max_body_bytes)
