"""One process of a cluster: its identity, its lease and the users it owns, wired to the
daemon's browsers and sessions (see `mcproxy.cluster`).

`ClusterNode` starts after the store and the internal listener, and before the public
listeners: it registers the node, then owns users as placement hands them out, connecting
each owned user's registered browser (only the owner connects: one CDP connection per
browser in the whole cluster) and closing it when the user moves away. What the next owner
needs (page ids and records, isolated contexts, Streamable HTTP sessions) is kept in Redis
(`mcproxy.cluster.state`).
"""

import json
import socket
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, TimeoutError, gatherResults
from twisted.internet.task import deferLater
from twisted.logger import Logger

from mcproxy.auth.admission import Admission
from mcproxy.auth.bootstrap import ensure_admin_token
from mcproxy.auth.tokens import is_valid_token_id, is_valid_user_id
from mcproxy.browser.cdp.connection import CDPConnection
from mcproxy.browser.connect import LinkOpener
from mcproxy.cluster.artifacts import RedisArtifactIndex
from mcproxy.cluster.control import CoordinationUnavailable
from mcproxy.cluster.envelope import Envelope
from mcproxy.cluster.events import RELOAD, TOKEN_REVOKED, USER, Events
from mcproxy.cluster.forward import Forwarder
from mcproxy.cluster.limits import SharedLimits
from mcproxy.cluster.node import REGISTERED
from mcproxy.cluster.ownership import rendezvous
from mcproxy.cluster.state import FencedWriter, RedisPageBook, RedisSessionRecords
from mcproxy.config import ClusterConfig, Config, ConfigError
from mcproxy.errors import BrowserUnavailable, Conflict, ServerFull
from mcproxy.lifecycle import AsyncService
from mcproxy.web.admin import RELEASE_PATH, SERVED_USERS_PATH
from mcproxy.web.http import read_body
from mcproxy.web.listener import endpoint_fields

log = Logger()

#: Users handed over at once by a drain.
HANDOVER_BATCH = 8

#: Seconds a drained process keeps answering after its handover.
HANDOVER_LINGER = 1.0

#: Seconds between looks at a moved user's owner record, until its new owner claimed it.
MOVE_POLL = 0.1

#: The browser status of a user whose process did not say.
UNKNOWN = "unknown"

#: The most bytes of user statuses read from one process.
MAX_STATUSES = 16 * 1024 * 1024


class Fenced(BrowserUnavailable):
    """This process may no longer command a user's browser: its lease ran out (or the user
    moved), and another process may own the user by now."""

    http_status = 503
    code = "fenced"


def fenced_links(open_link: LinkOpener, may_command: Callable[[str], bool]) -> LinkOpener:
    """``open_link`` whose connections refuse every command once ``may_command(user_id)``
    says no: a process that lost its lease stops talking to the browser before another
    process can own it (its deadline comes before the lease's expiry in Redis)."""

    async def open_fenced(browser) -> CDPConnection:
        link = await open_link(browser)
        user_id = browser.user_id

        def guard() -> None:
            if not may_command(user_id):
                raise Fenced(
                    "this proxy process no longer serves your browser (it is moving to another process); "
                    "try again in a moment"
                )

        link.guard = guard
        return link

    return open_fenced


#: The fewest bytes a cluster secret may have.
MIN_SECRET = 32


def cluster_secret(cluster: ClusterConfig) -> bytes:
    """The secret that signs requests between processes: ``cluster.secret``, or the content of
    ``cluster.secret_file`` (surrounding whitespace removed); `ConfigError` when it is missing,
    given twice, unreadable or shorter than `MIN_SECRET` bytes."""
    if cluster.secret and cluster.secret_file:
        raise ConfigError("cluster.secret_file: give the secret once, in cluster.secret or in cluster.secret_file")
    secret = cluster.secret.encode("utf-8")
    if cluster.secret_file:
        try:
            with open(cluster.secret_file, "rb") as f:
                secret = f.read().strip()
        except OSError as e:
            raise ConfigError(f"cluster.secret_file: cannot read {cluster.secret_file}: {e.strerror}") from None
    if len(secret) < MIN_SECRET:
        raise ConfigError(
            f"cluster.secret: cluster mode needs a shared secret of at least {MIN_SECRET} bytes "
            "(cluster.secret, cluster.secret_file or MCPROXY_CLUSTER_SECRET); make one with: openssl rand -hex 32"
        )
    return secret


def internal_address(config: Config) -> tuple[str, str]:
    """The node id and the advertised URL of this process, from ``[cluster]``: given, or
    derived from ``cluster.internal_listen`` (which must then name its port and interface)."""
    cluster = config.cluster
    kind, positional, named = endpoint_fields(cluster.internal_listen)
    port = positional[0] if positional and positional[0].isdigit() else named.get("port", "")
    interface = named.get("interface", "")
    node_id = cluster.node_id
    if not node_id:
        if not port or port == "0":
            raise ConfigError("cluster.node_id: needed when cluster.internal_listen names no fixed port")
        node_id = f"{socket.gethostname()}:{port}"
    url = cluster.advertise_url.rstrip("/")
    if not url:
        if kind not in ("tcp", "ssl") or not port or port == "0" or interface in ("", "0.0.0.0", "::"):
            raise ConfigError(
                "cluster.advertise_url: needed unless cluster.internal_listen is tcp: or ssl: with a fixed port "
                "and a specific interface, e.g. tcp:3201:interface=10.0.0.5"
            )
        host = f"[{interface}]" if ":" in interface else interface
        url = f"{'https' if kind == 'ssl' else 'http'}://{host}:{port}"
    return node_id, url


class ClusterNode(AsyncService):
    """This process as a node of the cluster (module docstring).

    ``limits`` are the per-user rate limits its public listeners apply (shared through
    Redis once the node is connected); ``events`` its end of the events channel.
    """

    def __init__(self, reactor, config: Config, *, store, pool, sessions, limits: SharedLimits):
        self.reactor = reactor
        self.config = config
        self.store = store
        self.pool = pool
        self.sessions = sessions
        self.limits = limits
        self.node_id, self.url = internal_address(config)
        self.events = Events(reactor, config.store.url, self.node_id)
        self.events.on(USER, self._user_changed)
        self.envelope = Envelope(cluster_secret(config.cluster), self.node_id, reactor)
        self.forwarder = Forwarder(
            reactor,
            self.envelope,
            connect_timeout=config.cluster.forward_connect_timeout,
            max_connections=config.cluster.max_forward_connections,
        )
        #: Where each user's artifacts are listed (the artifact store's index in a cluster).
        self.artifact_index = RedisArtifactIndex(reactor, self.forwarder, max_bytes=config.artifacts.max_bytes)
        #: Fenced writes of the owned users' state; Streamable HTTP session records through it.
        self.writer = FencedWriter(reactor, self._token_of)
        self.session_records = RedisSessionRecords(self.writer, sessions, reactor)
        self.started_at = reactor.seconds()
        #: Told of each user this process stops serving while it runs (handed over, moved, lost).
        self.let_go: list[Callable[[str], object]] = []
        self._release_to = json.dumps({"to": self.node_id}).encode()
        self.control: Any = None
        self.membership: Any = None
        self.ownership: Any = None
        self.draining = False

    async def start(self) -> None:
        from mcproxy.cluster.control import open_control
        from mcproxy.cluster.node import NodeMembership
        from mcproxy.cluster.ownership import Ownership

        cluster = self.config.cluster
        self.control = await open_control(self.reactor, self.config.store.url)
        self.limits.control = self.events.control = self.artifact_index.control = self.control
        self.writer.start(self.control)
        self.session_records.start()
        await self.events.start()  # before owning anyone: no revocation is missed meanwhile
        self.membership = NodeMembership(
            self.control,
            self.reactor,
            node_id=self.node_id,
            url=self.url,
            ttl=cluster.node_ttl,
            renew_interval=cluster.renew_interval,
            stats=self._stats,
        )
        self.ownership = Ownership(
            self.control,
            self.reactor,
            self.membership,
            registered_users=self._registered_users,
            on_claimed=self._claimed,
            on_lost=self._lost,
            max_users=self.config.limits.max_users,
            claim_grace=cluster.claim_grace,
        )
        self.membership.startService()
        await self.membership.started
        self.membership.add_listener(self._registered_again)
        self.ownership.startService()
        await self.ownership.started
        log.info("Cluster node {node} is up at {url}", node=self.node_id, url=self.url)

    async def stop(self) -> None:
        if self.ownership is not None:
            await self.hand_over()
            await self.ownership.stopService()
        if self.membership is not None:
            await self.membership.stopService()
        await self.events.stop()
        self.session_records.stop()
        if self.control is not None:
            await self._await_writes("stopping", self.writer.stop())
        await self.forwarder.close()
        if self.control is not None:
            self.limits.control = self.events.control = self.artifact_index.control = None
            await self.control.close()

    def _registered_again(self, event: str) -> None:
        """This process registered again and was the first on a Redis that came back empty:
        every token went with it, the admin's too. Make a new admin token, as the first
        process of a new install does (`AdminTokenService`), or nobody could administer the
        cluster without restarting a process."""
        if event != REGISTERED or not self.membership.fresh:
            return
        made = Deferred.fromCoroutine(ensure_admin_token(self.store, self.config.server.data_dir, self.reactor))
        made.addErrback(lambda f: log.failure("No admin token made after Redis came back empty", f))

    # -- events from the other processes ---------------------------------------------

    def on_token_revoked(self, revoked: Callable[[str], object]) -> None:
        """Call ``revoked(token_id)`` for each token another process (or ``mcproxy-admin``)
        revoked: the events' `TOKEN_REVOKED`."""

        def handle(event: dict) -> object:
            token_id = event.get("token")
            if not isinstance(token_id, str) or not is_valid_token_id(token_id):
                log.warn("Cluster event {kind} without a token id ignored", kind=TOKEN_REVOKED)
                return None
            return revoked(token_id)

        self.events.on(TOKEN_REVOKED, handle)

    async def tell_user_deleted(self, user_id: str) -> None:
        """Tell the other processes that ``user_id`` was deleted (they drop what they cached)."""
        await self.events.publish(USER, user=user_id, change="deleted")

    async def tell_reloaded(self) -> None:
        """Tell the other processes to reload their configuration, as this one did."""
        await self.events.publish(RELOAD)

    def on_reload(self, reload: Callable[[], object]) -> None:
        """Call ``reload()`` when another process reloaded its configuration (so does this one)."""
        self.events.on(RELOAD, lambda event: reload())

    def _user_changed(self, event: dict) -> None:
        """A user was deleted (by its owner, which closed its sessions and browser): drop
        what this process cached of its owner."""
        user_id = event.get("user")
        if not isinstance(user_id, str) or not is_valid_user_id(user_id) or event.get("change") != "deleted":
            log.warn("Cluster event {kind} ignored: {event!r}", kind=USER, event=event)
            return
        if self.ownership is not None:
            self.ownership.forget(user_id)

    # -- what ownership changes do to this process --------------------------------------

    def page_book(self, user_id: str) -> RedisPageBook:
        """The page book of an owned user's browser (``BrowserPool(page_books=...)``)."""
        return RedisPageBook(self.writer, user_id)

    def _token_of(self, user_id: str) -> int | None:
        return self.ownership.token_of(user_id) if self.ownership is not None else None

    async def _await_writes(self, why: str, flushed: Deferred) -> None:
        """Wait for the state writes made so far, for at most the control timeout: a user is
        released or the node stops only once its last changes are in Redis, for the next owner."""
        try:
            await flushed.addTimeout(self.control.timeout, self.reactor)
        except TimeoutError:
            log.warn("Cluster state writes still pending when {why}", why=why)

    async def _registered_users(self) -> list[str]:
        return await self.store.list_user_ids()

    def _claimed(self, user_id: str) -> None:
        """This process now owns ``user_id``: connect its registered browser, if any."""
        Deferred.fromCoroutine(self._connect(user_id)).addErrback(
            lambda f: log.failure("Connecting the browser of {user_id} failed", f, user_id=user_id)
        )

    async def _connect(self, user_id: str) -> None:
        record = await self.store.get_user(user_id)
        if record is None or not self.ownership.owns(user_id):
            return
        try:
            self.pool.browser_for(user_id, record.browser_url)
        except ServerFull as e:
            log.warn("Not connecting the browser of {user_id}: {reason}", user_id=user_id, reason=e.message)

    def _lost(self, user_id: str) -> None:
        """Another process owns ``user_id`` now (or this one lost its lease): let go of its
        sessions and browser connection at once."""
        log.info("User {user_id} is no longer served by this process", user_id=user_id)
        self._tell_let_go(user_id)
        self.sessions.close_user(user_id, for_good=False)
        self.pool.forget(user_id)

    def _tell_let_go(self, user_id: str) -> None:
        for listener in self.let_go:
            try:
                listener(user_id)
            except Exception:
                log.failure("Cluster: a listener of user {user_id} leaving failed", user_id=user_id)

    async def start_draining(self) -> None:
        """Say ``draining`` in ``/health`` and in the node's record, so balancers and placement
        stop sending users here."""
        self.draining = True
        await self.membership.set_draining()

    async def linger(self) -> None:
        """After the handover, keep answering for `HANDOVER_LINGER` seconds: a request another
        process sent before it learnt of the new owner gets a refusal it retries elsewhere
        (``503 draining``, ``421``), not a connection that dies under it (which would leave it
        not knowing whether the request ran)."""
        await deferLater(self.reactor, HANDOVER_LINGER, lambda: None)

    async def hand_over(self) -> None:
        """Let go of every owned user (the drain): close its browser connection first, then
        release it, so two processes never hold one browser."""
        users = sorted(self.ownership.held())
        for start in range(0, len(users), HANDOVER_BATCH):
            batch = users[start : start + HANDOVER_BATCH]
            await gatherResults([Deferred.fromCoroutine(self._hand_over(user)) for user in batch])

    async def _hand_over(self, user_id: str, to: str = "") -> None:
        self._tell_let_go(user_id)
        self.sessions.close_user(user_id, for_good=False)  # their records stay: the next owner resumes them
        await self.pool.forget(user_id)
        await self._await_writes(f"handing user {user_id} over", self.writer.flushed())
        await self.ownership.release(user_id, hint=to)

    async def hand_to(self, user_id: str, to: str) -> bool:
        """Hand ``user_id`` over to node ``to`` at once, for a tunnel of the user that reached
        ``to`` (`pull`); False when this process does not serve the user."""
        if not self.ownership.owns(user_id):
            return False
        log.info("Handing user {user_id} to node {to}, where its tunnel is", user_id=user_id, to=to)
        await self._hand_over(user_id, to)
        return True

    async def pull(self, user_id: str, principal) -> None:
        """Become ``user_id``'s owner because its browser's tunnel reached this process: that
        browser can be reached from here alone. A live owner elsewhere is asked to hand the
        user over (``POST /_cluster/users/<id>/release``); then this process claims it.
        `CoordinationUnavailable` when that did not happen within ``cluster.failover_wait``."""
        ownership = self.ownership
        give_up = self.reactor.seconds() + self.config.cluster.failover_wait
        while not ownership.owns(user_id):
            if self.reactor.seconds() >= give_up:
                raise CoordinationUnavailable(f"user {user_id} could not be moved to node {self.node_id}")
            owner = await ownership.owner_of(user_id, fresh=True)
            if owner is None or not owner.alive:
                await ownership.claim(user_id, via="tunnel")
                continue
            path = RELEASE_PATH % user_id.encode()
            try:
                status, _ = await self.forwarder.fetch(
                    to=owner.node,
                    url=owner.url,
                    principal=principal,
                    path=path,
                    limit=4096,
                    timeout=self.control.timeout,
                    body=self._release_to,
                )
            except Exception as e:
                status = 0
                log.warn(
                    "Cluster: node {node} did not hand {user} over: {error}", node=owner.node, user=user_id, error=e
                )
            if status != 200:
                await deferLater(self.reactor, MOVE_POLL, lambda: None)

    async def move(self, user_id: str, to: str | None) -> dict:
        """``POST /api/users/{id}/move``: hand ``user_id``, owned here, over to node ``to`` (by
        default the live node placement ranks first for it) and wait, up to
        ``cluster.failover_wait``, until a node claimed it: the one named, or if it did not
        in time, whichever placement or a request brought it to."""
        live = [node["id"] for node in await self.ownership.nodes() if node["alive"] and not node["draining"]]
        if to is None:
            to = next((node for node in rendezvous(user_id, live) if node != self.node_id), None)
            if to is None:
                raise Conflict("no other live process of the cluster can take the user", code="no_other_node")
        elif to not in live:
            raise Conflict(
                f"node {to!r} is not a live, undrained process of the cluster (see GET /api/cluster)",
                code="node_unavailable",
            )
        if to == self.node_id:
            return {"userId": user_id, "node": to, "from": to}
        if not self.ownership.owns(user_id):
            raise CoordinationUnavailable(f"user {user_id} moved meanwhile; try again")
        log.info("Moving user {user_id} from node {node} to node {to}", user_id=user_id, node=self.node_id, to=to)
        await self._hand_over(user_id, to)
        give_up = self.reactor.seconds() + self.config.cluster.failover_wait
        owner = None
        while owner is None and self.reactor.seconds() < give_up:
            await deferLater(self.reactor, MOVE_POLL, lambda: None)
            owner = await self.ownership.owner_of(user_id, fresh=True)
        return {"userId": user_id, "node": owner.node if owner is not None else None, "from": self.node_id}

    # -- views ----------------------------------------------------------------------

    def _stats(self) -> dict:
        return {"users": len(self.ownership.held()) if self.ownership is not None else 0, "startedAt": self.started_at}

    def health(self) -> dict:
        """What ``/health`` adds in cluster mode; ``status`` is not ``ok`` while this process
        cannot serve (draining, or its lease not valid)."""
        valid = self.membership is not None and self.membership.valid()
        status = "draining" if self.draining else ("ok" if valid else "fenced")
        return {"status": status, "node": self.node_id, "ownedUsers": len(self.ownership.held()) if valid else 0}

    async def describe(self, users: list[str]) -> dict:
        """``GET /api/cluster``: the nodes and which node owns each of ``users``."""
        nodes = [
            {**node, "users": node["stats"].get("users", 0), "startedAt": node["stats"].get("startedAt")}
            for node in await self.ownership.nodes()
        ]
        owners = await self.ownership.owners(users)
        return {"node": self.node_id, "nodes": nodes, "owners": owners}

    def owns(self, user_id: str) -> bool:
        """Whether this process may serve ``user_id`` now (a local check, no Redis)."""
        return self.ownership is not None and self.ownership.owns(user_id)

    def served(self) -> list[str]:
        """The users this process serves now."""
        return self.ownership.held() if self.ownership is not None and self.membership.valid() else []

    async def live_statuses(self, principal, owners: dict[str, str | None]) -> dict[str, dict]:
        """The live status (`mcproxy.web.admin.live_status`) of each user of ``owners`` that
        another process serves, as that process reports it, every process asked at once as
        ``principal``. The users of a process that does not answer within the control timeout
        are ``unknown``, with why in ``lastError``."""
        asked: dict[str, list[str]] = {}
        for user, node in owners.items():
            if node is not None and node != self.node_id:
                asked.setdefault(node, []).append(user)
        if not asked:
            return {}
        urls = {node["id"]: node["url"] for node in await self.ownership.nodes()}

        async def ask(node: str) -> dict[str, dict]:
            try:
                status, body = await self.forwarder.fetch(
                    to=node,
                    url=urls.get(node, ""),
                    principal=principal,
                    path=SERVED_USERS_PATH,
                    limit=MAX_STATUSES,
                    timeout=self.control.timeout,
                )
                if status != 200:
                    raise ValueError(f"it answered {status}")
                served = json.loads(body)["users"]
                return {user: served[user] for user in asked[node] if user in served}
            except Exception as e:
                reason = str(e) or type(e).__name__
                log.warn("Cluster: no user statuses from node {node}: {error}", node=node, error=reason)
                why = f"process {node}, which serves this user, did not say how its browser is ({reason})"
                return {
                    user: {"browserStatus": UNKNOWN, "lastError": why, "activeSessions": None} for user in asked[node]
                }

        statuses: dict[str, dict] = {}
        for answer in await gatherResults([Deferred.fromCoroutine(ask(node)) for node in asked]):
            statuses.update(answer)
        return statuses

    async def nodes_of(self, users: list[str]) -> dict[str, str | None]:
        """The node that owns each of ``users`` (None: nobody yet), in one Redis call."""
        return await self.ownership.owners(users)

    async def forwarded_principal(self, request):
        """Who sent a request that reached the internal listener, from its signed envelope
        (`mcproxy.auth.admission.Admission` chain of the internal listener)."""
        header = request.getHeader(b"x-mcproxy-forward")
        forwarded = self.envelope.open(
            header or b"",
            method=request.method,
            path=request.uri,
            body=read_body(request, self.config.server.max_body_bytes),
        )
        request.client_address = forwarded.client
        return forwarded.principal

    def internal_admission(self, refused) -> Admission:
        """How the internal listener admits requests: by their envelope only. The edge has
        authenticated the caller and taken from its shared rate limits; counting a forwarded
        request again here would halve every user's rate."""
        return Admission(self.forwarded_principal, refused=refused)
