"""Which process of the cluster answers a request: the owner of the user it acts for.

The process a request reaches (the *edge*) has already checked Host, Origin, the credential
and the rate limit (`mcproxy.web.routes.Router`). For a route that acts on a user's state
(`Route.routed`) it asks `EdgePlacement.place`: serve here when this process owns the user,
claim the user when nobody live does, otherwise forward the whole request to the owner
(`mcproxy.cluster.forward`). A request whose owner is gone is held until the user has a new
owner, within ``cluster.failover_wait``, then served rather than failed.

On the internal listener, requests come signed by another process (`OwnerCheck`): they are
served only by the user's owner, and anyone else answers ``421 not_owner`` so the edge
looks again.
"""

from collections.abc import Callable

import orjson
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import deferLater
from twisted.logger import Logger

from mcproxy.cluster.forward import NotOwner, OwnerDraining, OwnerLost, OwnerUnreachable
from mcproxy.errors import MCProxyError
from mcproxy.mcp.codes import OWNER_LOST
from mcproxy.web.http import read_body, request_id, write_json
from mcproxy.web.origins import OriginPolicy

log = Logger()

#: Seconds between looks at a user's owner while waiting for a new one.
POLL_INTERVAL = 0.1


class OwnerUnavailable(MCProxyError):
    """The user's owner cannot be reached and still holds its lease (a partition), or no owner
    came up within ``cluster.failover_wait``."""

    http_status = 503
    code = "owner_unreachable"
    retry_after = 2


class Misdirected(MCProxyError):
    """A forwarded request reached a process that does not own its user."""

    http_status = 421
    code = "not_owner"

    def __init__(self, message: str, owner: str | None):
        super().__init__(message)
        self.owner = owner

    def to_json(self) -> dict:
        body = super().to_json()
        body["error"]["owner"] = self.owner
        return body


#: JSON-RPC methods that change nothing: sent again after their owner was lost.
SAFE_TO_REPEAT = frozenset(
    {"initialize", "ping", "tools/list", "resources/list", "resources/read", "prompts/list", "server/discover"}
)

_LOST = (
    "The proxy process running this request stopped before it answered (your browser connection "
    "is moving to another process). It may or may not have happened: check with list_pages or "
    "take_snapshot before repeating it."
)


def json_rpc_request(request, body: bytes) -> dict | None:
    """The JSON-RPC request a POST carries (one with an ``id`` and a ``method``), else None."""
    if request.method != b"POST" or not body:
        return None
    try:
        message = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if isinstance(message, dict) and "id" in message and isinstance(message.get("method"), str):
        return message
    return None


def owner_lost_answer(message: dict) -> dict:
    """The JSON-RPC answer to ``message`` when its owner died after it was sent: it may or may
    not have run, and the model is told to look before it repeats it."""
    if message["method"] == "tools/call":
        result = {"content": [{"type": "text", "text": _LOST}], "isError": True}
        return {"jsonrpc": "2.0", "id": message["id"], "result": result}
    return {"jsonrpc": "2.0", "id": message["id"], "error": {"code": OWNER_LOST, "message": _LOST}}


class EdgePlacement:
    """`Router` ``place`` hook of the public listeners (module docstring).

    ``node`` is this process's `mcproxy.cluster.service.ClusterNode` (its ownership, its
    forwarder); ``max_body`` bounds what is read to forward; ``read_only(tool)`` says which
    tools change nothing (sent again when their owner was lost); every ``watch_interval``
    seconds a forward checks that its user still has the owner it was sent to.
    """

    def __init__(
        self,
        clock,
        node,
        *,
        failover_wait: float,
        max_body: int,
        read_only: Callable[[str], bool] = lambda tool: False,
        watch_interval: float = 1.0,
    ):
        self.clock = clock
        self.node = node
        self.failover_wait = failover_wait
        self.max_body = max_body
        self.read_only = read_only
        self.watch_interval = watch_interval
        #: How forwards ended, by outcome (the forwarded requests metric).
        self.outcomes: dict[str, int] = {}

    async def place(self, request, user: str) -> bool:
        """False: serve ``request`` here. True: it was answered by the owner of ``user``."""
        node = self.node
        ownership = node.ownership
        if ownership.owns(user):
            request.setHeader(b"X-MCProxy-Node", node.node_id.encode())
            return False
        body = read_body(request, self.max_body)
        message = json_rpc_request(request, body)
        rpc_id = None if message is None else message["id"]
        give_up = self.clock.seconds() + self.failover_wait
        while True:
            owner = await ownership.owner_of(user)
            if owner is None or not owner.alive:
                # Another process is due to take the user: the one whose lease lapsed in a Redis
                # outage (taking its users here would move their browsers for nothing), or the
                # one an operator moves the user to. Past the wait, placement moves the users of
                # a process that did not come back; a user whose new owner did not claim it is
                # claimed here.
                awaited = await ownership.awaited_by(user)
                if awaited is not None:
                    if self.clock.seconds() < give_up:
                        await deferLater(self.clock, POLL_INTERVAL, lambda: None)
                        continue
                    if awaited[1]:
                        raise OwnerUnavailable(
                            f"the proxy process serving user {user} is reconnecting to the cluster; "
                            "try again in a moment"
                        )
                owner = await ownership.claim(user)
            if owner.node == node.node_id:
                request.setHeader(b"X-MCProxy-Node", node.node_id.encode())
                return False
            try:
                await self._forward(request, user, owner, body, rpc_id)
            except (NotOwner, OwnerDraining, OwnerUnreachable) as e:
                # Not run there: look again once the owner moved or its lease ran out.
                self._count(type(e).__name__)
                ownership.forget(user)
                if self.clock.seconds() >= give_up:
                    raise OwnerUnavailable(
                        f"the proxy process serving user {user} cannot be reached; try again in a moment"
                    ) from None
                if not isinstance(e, NotOwner):
                    await deferLater(self.clock, POLL_INTERVAL, lambda: None)
                continue
            except OwnerLost:
                # Maybe run there. What changes nothing is sent again to the next owner, which
                # gets the whole failover wait from now: the call may have run for longer.
                self._count("OwnerLost")
                ownership.forget(user)
                give_up = self.clock.seconds() + self.failover_wait
                if self._repeatable(request, message) and self.clock.seconds() < give_up:
                    await deferLater(self.clock, POLL_INTERVAL, lambda: None)
                    continue
                if message is None:
                    raise OwnerUnavailable(
                        f"the proxy process serving user {user} stopped before it answered; "
                        "the request may or may not have run"
                    ) from None
                write_json(request, 200, owner_lost_answer(message))
                return True
            self._count("ok")
            return True

    async def _forward(self, request, user: str, owner, body: bytes, rpc_id) -> None:
        """Forward to ``owner``; `OwnerLost` if the user moves away from it meanwhile (a paused
        or cut-off owner may never answer, and another process serves the user now)."""
        forwarding = Deferred.fromCoroutine(
            self.node.forwarder.forward(
                request,
                to=owner.node,
                url=owner.url,
                principal=request.principal,
                body=body,
                rid=request_id(request),
                rpc_id=rpc_id,
            )
        )
        watch = _OwnerWatch(self.clock, self.watch_interval, self.node.ownership, user, owner, forwarding)
        try:
            await forwarding
        except CancelledError:
            if not watch.moved:
                raise
            raise OwnerLost(f"user {user} moved away from node {owner.node} during the request", nonce="") from None
        finally:
            watch.stop()

    def _repeatable(self, request, message: dict | None) -> bool:
        """Whether a request whose owner was lost may be sent again: it changes nothing."""
        if request.method == b"GET":
            return True
        if message is None:
            return False
        method = message["method"]
        if method in SAFE_TO_REPEAT:
            return True
        params = message.get("params")
        name = params.get("name") if isinstance(params, dict) else None
        return method == "tools/call" and isinstance(name, str) and self.read_only(name)

    def _count(self, outcome: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1


class _OwnerWatch:
    """Cancels ``forwarding`` (and says it ``moved``) once ``user``'s owner is no longer
    ``owner`` and that process is no longer live and serving (paused, cut off or draining:
    it may never answer), checked every ``interval`` seconds in what placement keeps fresh
    (no Redis read here). A live process that handed the user over (a move) still answers."""

    def __init__(self, clock, interval: float, ownership, user: str, owner, forwarding: Deferred):
        self.clock, self.interval, self.ownership = clock, interval, ownership
        self.user, self.owner, self.forwarding = user, owner, forwarding
        self.moved = False
        self._next = clock.callLater(interval, self._check)

    def _check(self) -> None:
        Deferred.fromCoroutine(self.ownership.owner_of(self.user)).addCallback(self._compare)

    def _compare(self, current) -> None:
        if self.forwarding.called:
            return
        owner = self.owner
        moved = current is None or not current.alive or (current.node, current.token) != (owner.node, owner.token)
        if moved and not self.ownership.serving(owner.node):
            self.moved = True
            self.forwarding.cancel()
        else:
            self._next = self.clock.callLater(self.interval, self._check)

    def stop(self) -> None:
        if self._next.active():
            self._next.cancel()


class OwnerCheck:
    """`Router` ``place`` hook of the internal listener: only the owner serves a forwarded
    request; a process that finds the user without a live owner claims it first."""

    def __init__(self, node):
        self.node = node

    async def place(self, request, user: str) -> bool:
        ownership = self.node.ownership
        if ownership.owns(user):
            request.setHeader(b"X-MCProxy-Node", self.node.node_id.encode())
            return False
        owner = await ownership.owner_of(user, fresh=True)
        if owner is None or not owner.alive:
            owner = await ownership.claim(user)
        if owner.node == self.node.node_id:
            request.setHeader(b"X-MCProxy-Node", self.node.node_id.encode())
            return False
        raise Misdirected(f"this process does not own user {user}", owner.node)


class TrustedOrigins(OriginPolicy):
    """The internal listener's Host and Origin rules: none, since the edge applied them."""

    def __init__(self):
        self.allow_loopback = True
        self.allowed_origins = ()
        self.allowed_hosts = ()

    def check_host(self, request) -> None:
        pass

    def check_origin(self, request) -> None:
        pass

    def check_api_origin(self, request) -> None:
        pass
