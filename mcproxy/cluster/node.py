"""This process's membership in the cluster: its lease ``node:<id>`` in Redis.

The lease is what makes ownership valid: a user's owner record counts only while its
node's lease carries the record's epoch, so one renewal per node covers every user it
owns. The node also fences itself: past its local deadline (send time of the last
successful renewal + ttl - margin, earlier than Redis's expiry, which starts when the
renewal *arrives*) it must stop acting as an owner, even if Redis never answers again.
"""

import json
import secrets
from collections.abc import Callable

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger

from mcproxy.cluster import scripts
from mcproxy.cluster.control import Control
from mcproxy.config import ConfigError
from mcproxy.lifecycle import AsyncService

log = Logger()

#: Listener events: a (re)registration with a new epoch; the local deadline passed
#: without a renewal; the lease was lost (its epoch is gone from Redis).
REGISTERED = "registered"
FENCED = "fenced"
LOST = "lost"


class NodeMembership(AsyncService):
    """Register this node, renew its lease every ``renew_interval``, and tell listeners
    when it is fenced, lost or registered again.

    ``stats`` gives the JSON-able dict published in the lease (owned users, version, ...)
    for other nodes and the admin view.
    """

    def __init__(
        self,
        control: Control,
        clock: IReactorTime,
        *,
        node_id: str,
        url: str,
        ttl: float,
        renew_interval: float,
        stats: Callable[[], dict] = dict,
    ):
        self.control = control
        self.clock = clock
        self.node_id = node_id
        self.url = url
        self.ttl = ttl
        self.renew_interval = renew_interval
        #: Covers clock-rate drift and one slow reply (design: max(0.5 s, ttl / 10)).
        self.margin = max(0.5, ttl / 10)
        self.epoch = ""
        #: ``clock.seconds()`` after which this node must not act as an owner.
        self.deadline = 0.0
        self.registered = False
        #: Whether the last registration found Redis empty (no ``cluster`` hash).
        self.fresh = False
        self.draining = False
        self.renew_failures = 0
        self._stats = stats
        self._stopped = False
        self._fenced = False
        self._why_not = ("", "")  # (the config key to blame, why) of the last failed registration
        self._listeners: list[Callable[[str], object]] = []
        self._fence_timer: IDelayedCall | None = None
        self._renewer = LoopingCall(lambda: Deferred.fromCoroutine(self._tick()))
        self._renewer.clock = clock

    def add_listener(self, listener: Callable[[str], object]) -> None:
        """Call ``listener(event)`` on `REGISTERED`, `FENCED` and `LOST`."""
        self._listeners.append(listener)

    def valid(self) -> bool:
        """Whether this node may act as an owner now: registered, and before its deadline."""
        return self.registered and self.clock.seconds() < self.deadline

    async def start(self) -> None:
        """Register, waiting up to 2 x ttl for a previous process with this id to go
        away (a graceful exit frees the id at once), then renew in the background."""
        give_up = self.clock.seconds() + 2 * self.ttl
        while not await self._register():
            if self.clock.seconds() >= give_up:
                key, why = self._why_not
                raise ConfigError(f"{key}: cannot register cluster node {self.node_id!r}: {why}")
            await deferLater(self.clock, self.renew_interval)
        self._renewer.start(self.renew_interval, now=False)

    async def stop(self) -> None:
        """Stop renewing and give the lease up (best effort, bounded by the control timeout)."""
        self._stopped = True
        if self._renewer.running:
            self._renewer.stop()
        self._cancel_fence_timer()
        if not self.registered:
            return
        self.registered = False
        keys = [self.control.key("node", self.node_id), self.control.key("nodes")]
        try:
            await self.control.eval(scripts.UNREGISTER, keys, [self.node_id, self.epoch])
        except CancelledError:
            raise
        except Exception as e:
            log.warn(
                "Cluster node {node}: lease not given up ({error}); it expires on its own", node=self.node_id, error=e
            )

    async def set_draining(self) -> None:
        """Publish ``draining=1`` in the lease (placement then skips this node)."""
        self.draining = True
        if self.registered:
            await self._renew()

    async def _tick(self) -> None:
        if self.registered:
            await self._renew()
        else:
            await self._register()

    def _lease_args(self) -> list:
        return [int(self.ttl * 1000), int(self.draining), json.dumps(self._stats(), separators=(",", ":"))]

    async def _register(self) -> bool:
        """Try to take the lease with a new epoch; False (and why in ``_why_not``) if not."""
        epoch = f"{int(self.clock.seconds() * 1000)}-{secrets.token_hex(8)}"
        keys = [
            self.control.key("node", self.node_id),
            self.control.key("nodes"),
            self.control.key("cluster"),
            self.control.key("gone", self.node_id),
        ]
        ttl_ms, draining, stats = self._lease_args()
        sent = self.clock.seconds()
        try:
            taken, detail = await self.control.eval(
                scripts.REGISTER, keys, [self.node_id, epoch, ttl_ms, self.url, draining, stats]
            )
        except CancelledError:
            raise
        except Exception as e:
            self._why_not = ("store.url", str(e))
            log.warn("Cluster node {node}: registration failed: {error}", node=self.node_id, error=e)
            return False
        if self._stopped:
            return False
        if not int(taken):
            why = f"another process runs as that node (its lease has {int(detail)} ms left); each needs its own id"
            self._why_not = ("cluster.node_id", why)
            log.warn("Cluster node {node}: {why}", node=self.node_id, why=why)
            return False
        self.epoch, self.fresh, self.registered = epoch, bool(int(detail)), True
        self._renewed(sent)
        log.info(
            "Cluster node {node} registered, epoch {epoch}, fresh: {fresh}",
            node=self.node_id,
            epoch=epoch,
            fresh=self.fresh,
        )
        self._notify(REGISTERED)
        return True

    async def _renew(self) -> None:
        """RENEW; an error is retried on the next tick, a lost lease registers again now."""
        epoch, sent = self.epoch, self.clock.seconds()
        ttl_ms, draining, stats = self._lease_args()
        try:
            key = self.control.key("node", self.node_id)
            renewed = await self.control.eval(scripts.RENEW, [key], [epoch, ttl_ms, draining, stats])
        except CancelledError:
            raise
        except Exception as e:
            self.renew_failures += 1
            log.warn("Cluster node {node}: lease renewal failed: {error}", node=self.node_id, error=e)
            return
        if self._stopped or not self.registered or epoch != self.epoch:
            return  # stopped, or another call already handled a loss meanwhile
        if int(renewed):
            self._renewed(sent)
            return
        self.registered = False
        self._cancel_fence_timer()
        log.error("Cluster node {node}: lease of epoch {epoch} lost; registering again", node=self.node_id, epoch=epoch)
        self._notify(LOST)
        await self._register()

    def _renewed(self, sent: float) -> None:
        self.deadline = max(self.deadline, sent + self.ttl - self.margin)
        self._fenced = False
        self._cancel_fence_timer()
        self._fence_timer = self.clock.callLater(max(0.0, self.deadline - self.clock.seconds()), self._check_deadline)

    def _check_deadline(self) -> None:
        """The fence timer: it fires at the deadline whether or not Redis answers."""
        self._fence_timer = None
        if self.registered and not self._fenced and not self.valid():
            self._fenced = True
            log.error("Cluster node {node} fenced: no lease renewal before its deadline", node=self.node_id)
            self._notify(FENCED)

    def _cancel_fence_timer(self) -> None:
        if self._fence_timer is not None and self._fence_timer.active():
            self._fence_timer.cancel()
        self._fence_timer = None

    def _notify(self, event: str) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.failure("Cluster node {node}: a {event} listener failed", node=self.node_id, event=event)
