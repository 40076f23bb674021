"""Which node owns which user: claims, releases, an owner cache, placement and
reconciliation.

A user's owner record ``owner:<user>`` (node, epoch, fencing token) is valid while that
node's lease carries the same epoch. This node holds the users it claimed; `owns` is a
local check (no Redis on the hot path) that also needs the node's lease to be valid.
Every `renew_interval` a placement tick reads the owner records of all registered users
in one call: users nobody (alive) owns are claimed in rendezvous-hash order, and users
this node thinks it holds but whose record names someone else are dropped.
"""

import hashlib
import json
from collections.abc import Awaitable, Callable, Iterable

import attrs
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from mcproxy.cluster import scripts
from mcproxy.cluster.control import Control, CoordinationUnavailable
from mcproxy.cluster.node import FENCED, LOST, REGISTERED, NodeMembership
from mcproxy.errors import ServerFull
from mcproxy.lifecycle import AsyncService

log = Logger()

#: Seconds a dead node's id stays in the cluster's view (``GET /api/cluster``) before it is
#: forgotten.
FORGET_DEAD_NODES = 3600

#: How often `Ownership.claim` reads again when the record changed under it.
CLAIM_ATTEMPTS = 3

# CLAIM's answers.
_NOT_ALIVE, _CHANGED, _LIVE_ELSEWHERE, _MINE = -1, 0, 1, 2


@attrs.frozen
class Owner:
    """The owner of a user as a record says: its node, that node's epoch and url, the
    fencing token of the claim, and whether the node's lease carries that epoch."""

    node: str
    epoch: str
    token: int
    url: str
    alive: bool


@attrs.frozen
class _Record:
    """One row of the OWNERS script: the owner (None when no node holds the user) and
    the node a release hinted at as the next owner."""

    owner: Owner | None
    hint: str

    @classmethod
    def from_row(cls, row: list) -> "_Record":
        node, epoch, token, alive, url, hint = row
        return cls(Owner(node, epoch, int(token), url, bool(int(alive))) if node else None, hint)


def rendezvous(user: str, nodes: Iterable[str]) -> list[str]:
    """``nodes`` in rendezvous-hash (HRW) order for ``user``: highest
    sha256(node NUL user) first, so every node computes the same order and a node's
    loss moves only its own users."""
    return sorted(nodes, key=lambda node: hashlib.sha256(f"{node}\0{user}".encode()).digest(), reverse=True)


class Ownership(AsyncService):
    """This node's side of user ownership (see the module docstring).

    ``registered_users`` lists the users that should have an owner (those with a
    registered browser); ``on_claimed(user)`` runs when a user becomes this node's,
    ``on_lost(user)`` when this node stops owning it for any reason but `release`.
    ``claim_grace``: after each (re)registration, placement only takes back users this
    node owned, so nodes coming back together each get their own users back.
    ``forget_after``: seconds after which a dead node's id leaves the cluster's view.
    """

    def __init__(
        self,
        control: Control,
        clock: IReactorTime,
        membership: NodeMembership,
        *,
        registered_users: Callable[[], Awaitable[list[str]]],
        on_claimed: Callable[[str], object],
        on_lost: Callable[[str], object],
        max_users: int = 0,
        claim_grace: float = 10.0,
        forget_after: int = FORGET_DEAD_NODES,
    ):
        self.control = control
        self.clock = clock
        self.membership = membership
        self.max_users = max_users
        self.claim_grace = claim_grace
        self.forget_after = forget_after
        #: Users that became or stopped being this node's (a counter for metrics).
        self.changes = 0
        self._registered_users = registered_users
        self._on_claimed = on_claimed
        self._on_lost = on_lost
        self._held: dict[str, Owner] = {}
        self._cache: dict[str, Owner] = {}
        self._releasing: set[str] = set()
        self._orphaned: dict[str, int] = {}  # user -> placement ticks seen without a live owner
        self._held_before: set[str] = set()  # dropped when the lease was lost; taken back first
        self._grace_until = 0.0
        self._live: frozenset[str] = frozenset()  # the live nodes the last placement tick saw
        self._placement = LoopingCall(lambda: Deferred.fromCoroutine(self._place()))
        self._placement.clock = clock
        membership.add_listener(self._membership_changed)  # held users go with the lease, placement or not

    @property
    def me(self) -> str:
        """This node's id."""
        return self.membership.node_id

    async def start(self) -> None:
        """Run placement every ``renew_interval``, after a ``claim_grace`` for the other
        nodes to come up (so the first node up does not take every user)."""
        self._grace_until = self.clock.seconds() + self.claim_grace
        self._placement.start(self.membership.renew_interval, now=False)

    async def stop(self) -> None:
        """Stop placement. Held users stay claimed in Redis; once the lease is given up
        they are orphans that other nodes take over."""
        if self._placement.running:
            self._placement.stop()

    def owns(self, user: str) -> bool:
        """Whether this node may act as ``user``'s owner now (no Redis call)."""
        return user in self._held and self.membership.valid()

    def token_of(self, user: str) -> int | None:
        """The fencing token of ``user`` while this node owns it, else None."""
        return self._held[user].token if self.owns(user) else None

    def held(self) -> list[str]:
        """The users this node holds."""
        return sorted(self._held)

    async def owner_of(self, user: str, *, fresh: bool = False) -> Owner | None:
        """``user``'s live owner, from the cache unless ``fresh`` (a hit reads no Redis);
        None when nobody owns it or its owner's lease is gone."""
        if not fresh and user in self._cache:
            return self._cache[user]
        record = (await self._read([user]))[user]
        self._remember(user, record.owner)
        return self._cache.get(user)

    def in_grace(self) -> bool:
        """Whether this node (re)registered less than ``claim_grace`` ago: processes whose
        leases lapsed (a Redis outage) may still come back for their users."""
        return self.clock.seconds() < self._grace_until

    async def awaited_by(self, user: str) -> tuple[str, bool] | None:
        """The other node expected to take ``user``, which nobody owns now, and whether it is
        coming back (True: during this node's claim grace, the node whose lapsed lease the
        record still names) or moving in (False: the live node a release named, `move`);
        None when no other node is awaited."""
        record = (await self._read([user]))[user]
        owner = record.owner
        if owner is not None and owner.alive:
            return None
        if owner is None and record.hint not in ("", self.me) and self.serving(record.hint):
            return record.hint, False
        if owner is not None and owner.node != self.me and self.in_grace():
            return owner.node, True
        return None

    def serving(self, node: str) -> bool:
        """Whether ``node`` held a lease and was not draining at the last placement tick."""
        return node in self._live

    def forget(self, user: str) -> None:
        """Drop the cached owner of ``user`` (it answered 421, or could not be reached)."""
        self._cache.pop(user, None)

    async def claim(self, user: str, *, via: str = "direct") -> Owner:
        """Become ``user``'s owner unless a live node already is; returns the owner
        either way. Raises `ServerFull` when this node holds ``max_users`` users and
        nobody else owns ``user``, `CoordinationUnavailable` when this node's lease is
        not valid or Redis does not answer."""
        for _ in range(CLAIM_ATTEMPTS):
            record = (await self._read([user]))[user]
            owner = await self._attempt(user, record.owner, via)
            if owner is not None:
                return owner
        raise CoordinationUnavailable(f"the owner of user {user} kept changing; try again")

    async def release(self, user: str, hint: str = "") -> bool:
        """Stop owning ``user`` and free its record for ``hint`` (the node expected to claim
        it next, or any). The fencing token stays in the record so the next claim gets
        a larger one. ``on_lost`` is not called: the caller closed the user's sessions
        and browser first. False when this node did not hold ``user`` (or no longer
        does in Redis)."""
        owner = self._held.pop(user, None)
        self._cache.pop(user, None)
        if owner is None:
            return False
        self.changes += 1
        self._releasing.add(user)
        try:
            released = await self.control.eval(
                scripts.RELEASE,
                [self.control.key("owner", user), self.control.key("owned", self.me)],
                [user, self.me, owner.epoch, owner.token, hint],
            )
        finally:
            self._releasing.discard(user)
        log.info("Cluster: node {node} released user {user} (hint {hint})", node=self.me, user=user, hint=hint)
        return bool(int(released))

    async def nodes(self) -> list[dict]:
        """Every node Redis knows, for the admin view and placement: id, url, alive,
        draining, epoch, stats and leaseMsLeft."""
        prefixes = [self.control.key("node", ""), self.control.key("gone", "")]
        rows = await self.control.eval(scripts.NODES, [self.control.key("nodes")], [*prefixes, self.forget_after])
        nodes = []
        for node_id, epoch, url, draining, stats, pttl in rows:
            alive = bool(epoch) and int(pttl) > 0
            nodes.append(
                {
                    "id": node_id,
                    "url": url,
                    "alive": alive,
                    "draining": draining == "1",
                    "epoch": epoch,
                    "stats": json.loads(stats),
                    "leaseMsLeft": max(0, int(pttl)),
                }
            )
        return sorted(nodes, key=lambda n: n["id"])

    async def owners(self, users: list[str]) -> dict[str, str | None]:
        """Each user's live owner node (None when it has none), read in one call."""
        records = await self._read(users)
        return {u: r.owner.node if r.owner and r.owner.alive else None for u, r in records.items()}

    # -- internals --------------------------------------------------------------------

    async def _read(self, users: list[str]) -> dict[str, _Record]:
        if not users:
            return {}
        keys = [self.control.key("owner", u) for u in users]
        rows = await self.control.eval(scripts.OWNERS, keys, [self.control.key("node", "")])
        return {u: _Record.from_row(row) for u, row in zip(users, rows, strict=True)}

    def _remember(self, user: str, owner: Owner | None) -> None:
        if owner is not None and owner.alive:
            self._cache[user] = owner
        else:
            self._cache.pop(user, None)

    async def _attempt(self, user: str, seen: Owner | None, via: str) -> Owner | None:
        """One CLAIM against ``seen`` (what was read); None when the record changed since."""
        if not self.membership.valid():
            raise CoordinationUnavailable(f"node {self.me} holds no valid lease")
        if seen is not None and seen.alive and seen.node != self.me:
            self._remember(user, seen)
            return seen
        if user not in self._held and self._full():
            raise ServerFull(
                f"this proxy process already owns {self.max_users} users (limits.max_users); "
                "another process of the cluster may have room"
            )
        epoch = self.membership.epoch
        keys = [
            self.control.key("owner", user),
            self.control.key("node", self.me),
            self.control.key("node", seen.node if seen else ""),
            self.control.key("owned", self.me),
            self.control.key("owned", seen.node if seen else ""),
        ]
        args = [user, self.me, epoch, seen.node if seen else "", seen.epoch if seen else "", via]
        reply = await self.control.eval(scripts.CLAIM, keys, args)
        status = int(reply[0])
        if status == _CHANGED:
            return None
        if status == _NOT_ALIVE or epoch != self.membership.epoch or not self.membership.valid():
            raise CoordinationUnavailable(f"node {self.me} lost its lease while claiming user {user}")
        if status == _LIVE_ELSEWHERE:
            owner = Owner(reply[1], reply[2], int(reply[3]), reply[4], alive=True)
            self._remember(user, owner)
            return owner
        owner = Owner(self.me, epoch, int(reply[3]), self.membership.url, alive=True)
        self._take(user, owner)
        return owner

    def _full(self) -> bool:
        return bool(self.max_users) and len(self._held) >= self.max_users

    def _take(self, user: str, owner: Owner) -> None:
        new = user not in self._held
        self._held[user] = owner
        self._cache[user] = owner
        self._orphaned.pop(user, None)
        self._held_before.discard(user)
        if new:
            self.changes += 1
            log.info("Cluster: node {node} owns user {user}, token {token}", node=self.me, user=user, token=owner.token)
            self._call(self._on_claimed, user)

    def _drop(self, user: str, why: str) -> None:
        del self._held[user]
        self._cache.pop(user, None)
        self.changes += 1
        log.warn("Cluster: node {node} no longer owns user {user}: {why}", node=self.me, user=user, why=why)
        self._call(self._on_lost, user)

    def _call(self, callback: Callable[[str], object], user: str) -> None:
        try:
            callback(user)
        except Exception:
            log.failure("Cluster: an ownership callback for user {user} failed", user=user)

    def _membership_changed(self, event: str) -> None:
        if event in (FENCED, LOST):
            self._held_before.update(self._held)
            for user in list(self._held):
                self._drop(user, f"its lease was {event}")
            self._cache.clear()
        elif event == REGISTERED:
            self._grace_until = self.clock.seconds() + self.claim_grace

    async def _place(self) -> None:
        """One placement tick: reconcile held users, claim orphans this node should take."""
        if not self.membership.valid():
            return
        try:
            users = sorted(set(await self._registered_users()) | set(self._held))
            live = [n["id"] for n in await self.nodes() if n["alive"] and not n["draining"]]
            records = await self._read(users)
            self._live = frozenset(live)
        except CancelledError:
            raise
        except Exception as e:
            log.warn("Cluster: placement on node {node} skipped: {error}", node=self.me, error=e)
            return
        in_grace = self.clock.seconds() < self._grace_until
        if not in_grace:
            self._held_before.clear()
        self._orphaned = {u: n for u, n in self._orphaned.items() if u in records}
        to_claim: list[tuple[str, Owner | None]] = []
        for user, record in records.items():
            owner = record.owner
            self._remember(user, owner)
            if user in self._held:
                self._reconcile(user, owner)
            elif user in self._releasing or self.membership.draining:
                continue
            elif owner is not None and owner.node == self.me:
                to_claim.append((user, owner))  # still names this node (maybe an older epoch): take it back
            elif owner is not None and owner.alive:
                self._orphaned.pop(user, None)
            elif self._my_turn(user, record.hint, live, in_grace):
                to_claim.append((user, owner))
        for user, seen in to_claim:
            if self._full():
                return
            try:
                await self._attempt(user, seen, "direct")
            except CancelledError:
                raise
            except Exception as e:
                log.warn("Cluster: node {node} could not claim user {user}: {error}", node=self.me, user=user, error=e)
                return

    def _reconcile(self, user: str, owner: Owner | None) -> None:
        mine = self._held[user]
        if owner is not None and owner.node == self.me and owner.token == mine.token:
            return
        if owner is None:
            self._held_before.add(user)  # the record vanished (Redis lost it): take it back first
        self._drop(user, f"its owner record names {owner.node if owner else 'nobody'}")

    def _my_turn(self, user: str, hint: str, live: list[str], in_grace: bool) -> bool:
        """Whether this node claims an orphan now: a user released to it at once; during the
        grace only users it held; then the HRW winner (or the hinted node) at once, the next
        after 2 ticks, ..."""
        if hint == self.me:
            return True
        if in_grace:
            return user in self._held_before
        ticks = self._orphaned[user] = self._orphaned.get(user, -1) + 1
        order = rendezvous(user, live)
        if hint in order:
            order.remove(hint)
            order.insert(0, hint)
        return self.me in order and ticks >= 2 * order.index(self.me)
