"""Cluster events: hints the processes of a cluster send each other through one Redis
pub/sub channel, ``<prefix>events`` (pub/sub channels are not scoped by database number,
so the name carries the key prefix).

A message is a small JSON object: ``{"v": 1, "t": <type>, "from": <sender>, ...fields}``.

- `TOKEN_REVOKED` (``token``): every process forgets what it cached of that token and
  ends the sessions opened with it, at once instead of after the token cache (2 s) and the
  revocation poll (5 s). Sent by the admin API and by ``mcproxy-admin tokens revoke``.
- `USER` (``user``, ``change``: ``deleted``): the user's owner deleted it; the others drop
  what they cached of its owner.
- `RELOAD`: the admin API reloaded its process's configuration; every other process
  reloads its own configuration source.

Events are hints, never the only path: pub/sub drops what is sent while a subscriber is
reconnecting, so the polls stay as the safety net, and a process that subscribes again
after a lost connection runs its reconciliations at once (``on_resubscribed``). A message
that is too big, not JSON or of an unknown version is ignored with a log line.

txredisapi imports the global reactor, so it is imported inside the functions.
"""

import json
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from mcproxy.cluster.control import Control
from mcproxy.storage.redis import DEFAULT_PREFIX, parse_redis_url, redis_factory

log = Logger()

CHANNEL = "events"
VERSION = 1
#: Larger messages are no event of ours (ours are well under 1 KiB).
MAX_EVENT_BYTES = 4096

TOKEN_REVOKED = "token_revoked"
USER = "user"
RELOAD = "reload"
TYPES = frozenset({TOKEN_REVOKED, USER, RELOAD})
#: The ``mcproxy_cluster_events_total`` type of messages that were ignored.
IGNORED = "ignored"

#: Seconds between PINGs on the subscriber connection: a connection that died without a
#: word (a half-open TCP connection) is noticed and replaced, and the channel subscribed again.
PING_INTERVAL = 5.0

Handler = Callable[[dict], object]


def encode(kind: str, sender: str, **fields: str) -> str:
    """The message of one event of type ``kind`` sent by ``sender`` (a node id, or a tool's name)."""
    return json.dumps({"v": VERSION, "t": kind, "from": sender, **fields}, separators=(",", ":"))


def decode(message: Any) -> dict | None:
    """The event a message carries, or None (logged) when it is none of ours."""
    if isinstance(message, bytes):
        message = message.decode("utf-8", "replace")
    if not isinstance(message, str) or len(message) > MAX_EVENT_BYTES:
        log.warn("Cluster event ignored: not a text of at most {limit} bytes", limit=MAX_EVENT_BYTES)
        return None
    try:
        event = json.loads(message)
    except ValueError:
        log.warn("Cluster event ignored: not JSON: {message!r}", message=message[:200])
        return None
    if not isinstance(event, dict) or event.get("v") != VERSION or not isinstance(event.get("t"), str):
        log.warn("Cluster event ignored: not a version {v} event: {message!r}", v=VERSION, message=message[:200])
        return None
    return event


async def publish(control: Control, kind: str, sender: str, **fields: str) -> bool:
    """Send an event on the control's channel; False (logged) when Redis did not take it
    within the control's timeout. Never raises: the polls catch what a lost event misses."""
    channel = control.key(CHANNEL)
    try:
        await control.redis.publish(channel, encode(kind, sender, **fields)).addTimeout(control.timeout, control.clock)
    except CancelledError:
        raise
    except Exception as e:
        log.warn("Cluster event {kind} not sent ({error}); other processes notice it later", kind=kind, error=e)
        return False
    return True


class Events:
    """This process's end of the events channel: it sends with `publish` (over ``control``,
    set once the node has connected) and receives on a connection of its own that subscribes
    again after every reconnect, handing each event of another sender to the handlers of its
    type (`on`).

    ``counts`` holds the events received, by type (`IGNORED` for those that were not ours),
    for ``mcproxy_cluster_events_total``; ``subscriptions`` counts successful subscriptions.
    """

    def __init__(
        self,
        reactor,
        store_url: str,
        node_id: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        timeout: float = 2.0,
        ping_interval: float = PING_INTERVAL,
    ):
        self.reactor = reactor
        self.store_url = store_url
        self.node_id = node_id
        self.channel = prefix + CHANNEL
        self.timeout = timeout
        self.control: Control | None = None
        self.counts: dict[str, int] = {}
        self.subscriptions = 0
        self._handlers: dict[str, list[Handler]] = {}
        self._resubscribed: list[Callable[[], object]] = []
        self._factory: Any = None
        self._subscriber: Any = None  # the connection, once subscribed
        self._subscribed: list[Deferred] = []
        self._pinger = LoopingCall(self._ping)
        self._pinger.clock = reactor
        self._ping_interval = ping_interval

    def on(self, kind: str, handler: Handler) -> None:
        """Call ``handler(event)`` for each event of type ``kind`` another process sends;
        a handler may return a Deferred (its failure is logged)."""
        self._handlers.setdefault(kind, []).append(handler)

    def on_resubscribed(self, callback: Callable[[], object]) -> None:
        """Call ``callback()`` after each subscription but the first: events sent while the
        connection was down are lost, so what they would have done is checked now."""
        self._resubscribed.append(callback)

    async def publish(self, kind: str, **fields: str) -> bool:
        """Send an event from this process (`publish`); False when it could not be sent."""
        if self.control is None:
            return False
        return await publish(self.control, kind, self.node_id, **fields)

    def subscribed(self) -> Deferred:
        """Fires once the channel is subscribed (at once if it is now)."""
        if self._subscriber is not None:
            return succeed(None)
        d: Deferred = Deferred()
        self._subscribed.append(d)
        return d

    async def start(self) -> None:
        """Connect and subscribe, waiting at most ``timeout``: a Redis that does not answer
        is logged, not fatal, and the connection keeps trying every 0.1 to 1 s."""
        import txredisapi

        host, port, _, username, password = parse_redis_url(self.store_url)
        events = self

        class Subscriber(txredisapi.SubscriberProtocol):
            def connectionMade(self):
                ready = super().connectionMade()  # AUTH first, when the URL has a password
                self.whenConnected().addCallback(events._subscribe)
                return ready

            def messageReceived(self, pattern, channel, message):
                events.received(message)

            def connectionLost(self, reason):
                if events._subscriber is self:
                    events._subscriber = None
                super().connectionLost(reason)

        # No SELECT (database None): channels are not scoped by database.
        factory = redis_factory(host, port, None, 1, username, password, self.timeout)
        factory.protocol = Subscriber
        factory.startConnecting(HostnameEndpoint(self.reactor, host, port, timeout=self.timeout))
        self._factory = factory
        self._pinger.start(self._ping_interval, now=False)
        try:
            await self.subscribed().addTimeout(self.timeout, self.reactor)
        except CancelledError:
            raise
        except Exception:
            log.warn("Cluster events: Redis at {host}:{port} did not answer; still trying", host=host, port=port)

    async def stop(self) -> None:
        """Stop pinging and reconnecting, and close the connection."""
        if self._pinger.running:
            self._pinger.stop()
        if self._factory is not None:
            await self._factory.disconnect()
            self._factory = None

    def _subscribe(self, connection) -> None:
        def done(_) -> None:
            self._subscriber = connection
            self.subscriptions += 1
            log.info("Cluster events: subscribed to {channel}", channel=self.channel)
            waiting, self._subscribed = self._subscribed, []
            for d in waiting:
                d.callback(None)
            if self.subscriptions > 1:
                for callback in self._resubscribed:
                    self._call(callback)

        def failed(failure) -> None:
            log.warn("Cluster events: subscribing failed ({error}); reconnecting", error=failure.getErrorMessage())
            connection.transport.abortConnection()

        connection.subscribe(self.channel).addCallbacks(done, failed)

    def _ping(self) -> None:
        """A PING the connection must answer within ``timeout`` (else txredisapi drops it)."""
        if self._subscriber is not None:
            self._subscriber.ping().addErrback(lambda failure: None)  # the lost connection is the answer

    def received(self, message: Any) -> None:
        """Handle one message of the channel (the subscriber calls this)."""
        event = decode(message)
        if event is None or event["t"] not in TYPES:
            if event is not None:
                log.warn("Cluster event of unknown type {kind!r} ignored", kind=event["t"])
            self.counts[IGNORED] = self.counts.get(IGNORED, 0) + 1
            return
        if event.get("from") == self.node_id:
            return  # what this process sends, it has done already
        kind = event["t"]
        self.counts[kind] = self.counts.get(kind, 0) + 1
        for handler in self._handlers.get(kind, ()):
            self._call(handler, event)

    def _call(self, callback: Callable, *args: Any) -> None:
        try:
            result = callback(*args)
        except Exception:
            log.failure("Cluster events: a handler failed")
            return
        if isinstance(result, Deferred):
            result.addErrback(lambda failure: log.failure("Cluster events: a handler failed", failure))
