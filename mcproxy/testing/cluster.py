"""A whole mcproxy cluster on loopback for tests and benchmarks: a Redis server of its
own, N ``twistd mcproxy`` nodes and fake browsers, every process started and stopped by
its PID.

Nothing here imports pytest: `bench` drives the same harness. The reactor is passed in.
"""

import os
import secrets
import shutil
from collections.abc import Sequence
from typing import Any, cast

import attrs
import treq
from twisted.internet.defer import Deferred, FirstError, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectError
from twisted.internet.interfaces import ITCPTransport, ITransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.protocols import portforward
from twisted.python.failure import Failure
from twisted.web.client import ResponseNeverReceived

from mcproxy.testing.daemon import RunningProxy
from mcproxy.testing.fake_cdp import FakeCDPServerFactory, serve_fake_chrome
from mcproxy.testing.process import STARTUP_TIMEOUT, ChildProcess, Daemon, free_port
from mcproxy.testing.tool_calls import sleep, until

#: The short timers of the fault tests (design §8): a dead owner is re-homed in seconds.
FAST_TIMERS = {"node_ttl": 2.0, "renew_interval": 0.4, "failover_wait": 3.0, "claim_grace": 2.0}

#: Seconds a Redis server may take to accept connections.
REDIS_TIMEOUT = 10.0


def find_redis_server() -> str:
    """The redis-server binary; RuntimeError (never a skip) when there is none."""
    path = shutil.which("redis-server")
    if path is None:
        raise RuntimeError(
            "redis-server is missing: the cluster tests start their own Redis; .ci/run installs it "
            "(apt-get install redis-server)"
        )
    return path


class _Ping(Protocol):
    """Sends one inline PING; `answered` fires with the reply's first bytes."""

    def __init__(self) -> None:
        self.answered: Deferred = Deferred()

    def connectionMade(self) -> None:
        cast(ITransport, self.transport).write(b"PING\r\n")

    def dataReceived(self, data: bytes) -> None:
        if not self.answered.called:
            self.answered.callback(data)
        cast(ITransport, self.transport).loseConnection()


class RedisServer(ChildProcess):
    """``redis-server`` on a free loopback port, with no persistence (or, ``appendonly``,
    with an append-only file in ``directory``, so that a restart keeps the data)."""

    def __init__(self, reactor, directory, *, appendonly: bool = False):
        super().__init__(reactor)
        self.directory = str(directory)
        self.appendonly = appendonly
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def describe(self) -> str:
        return f"redis-server on port {self.port}"

    async def start(self) -> None:
        """Start it and wait until it answers PING."""
        os.makedirs(self.directory, exist_ok=True)
        argv = [find_redis_server(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        argv += ["--appendonly", "yes" if self.appendonly else "no", "--dir", self.directory]
        ready = self.line_with("Ready to accept connections")
        ready.addTimeout(REDIS_TIMEOUT, self.reactor)
        self.launch(argv, path=self.directory)
        try:
            await ready
            answer = await self.ping()
        except Exception as e:
            self.stop()
            raise AssertionError(f"{self.describe()} did not start ({e}):\n{self.tail()}") from None
        if not answer.startswith(b"+PONG"):
            self.stop()
            raise AssertionError(f"{self.describe()} answered PING with {answer!r}")

    async def ping(self) -> bytes:
        """One PING on a fresh connection: the reply's first bytes."""
        endpoint = TCP4ClientEndpoint(self.reactor, "127.0.0.1", self.port, timeout=REDIS_TIMEOUT)
        ping = _Ping()
        await connectProtocol(endpoint, ping)
        answered = ping.answered
        answered.addTimeout(REDIS_TIMEOUT, self.reactor)
        return await answered

    async def restart(self) -> None:
        """Start again on the same port (after `kill`); with ``appendonly`` the data is back."""
        await self.close()
        await self.start()

    async def dump(self, *kinds: str, prefix: str = "mcproxy:") -> dict[bytes, bytes]:
        """A backup of the records of ``kinds`` (``"user"``: the key ``mcproxy:user`` and the
        keys ``mcproxy:user:*``), as an operator keeps one: key → DUMP value."""
        from txredisapi import Connection

        client = await Connection("127.0.0.1", self.port, reconnect=False, charset=None)
        try:
            keys = []
            for kind in kinds:
                keys += await client.keys(f"{prefix}{kind}") + await client.keys(f"{prefix}{kind}:*")
            return {key: await client.execute_command("DUMP", key) for key in keys}
        finally:
            await client.disconnect()

    async def restore(self, backup: dict[bytes, bytes]) -> None:
        """Put back what `dump` saved."""
        from txredisapi import Connection

        client = await Connection("127.0.0.1", self.port, reconnect=False, charset=None)
        try:
            for key, value in backup.items():
                await client.execute_command("RESTORE", key, 0, value, "REPLACE")
        finally:
            await client.disconnect()


class _Relayed:
    """What both ends of a relayed connection share: while the relay is paused, what
    arrives is held instead of passed on (and `Relay.held` shows that traffic waits)."""

    relay: "Relay"
    peer: Any

    def dataReceived(self, data: bytes) -> None:
        if self.relay.paused:
            self.relay.held.append((self, data))
            return
        super().dataReceived(data)  # type: ignore[misc]


class _RelayClient(_Relayed, portforward.ProxyClient):
    """The relay's end towards the target: what the target answers is rewritten (`Relay.rewrites`)."""

    _pending = b""

    def dataReceived(self, data: bytes) -> None:
        passed, self._pending = self.relay.rewritten(self._pending + data)
        if passed:
            super().dataReceived(passed)


class _RelayClientFactory(portforward.ProxyClientFactory):
    protocol = _RelayClient
    noisy = False

    def buildProtocol(self, addr):
        client = cast(_RelayClient, super().buildProtocol(addr))
        client.relay = self.server.relay
        return client


class _RelayServer(_Relayed, portforward.ProxyServer):
    clientProtocolFactory = _RelayClientFactory

    def connectionMade(self) -> None:
        self.relay.connections.append(self)
        super().connectionMade()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self in self.relay.connections:
            self.relay.connections.remove(self)
        super().connectionLost(reason)


class Relay(portforward.ProxyFactory):
    """A TCP relay from a free loopback port (``local_port``) to ``port`` on 127.0.0.1: a
    network link the test can partition. `pause` holds every byte both ways (a silent
    partition: peers time out) until `resume`; `cut` resets every connection and closes
    the port (new connections are refused) until `heal`.

    ``rewrites`` (old bytes → new bytes of the same length) are applied to what the target
    sends back: a node's Redis relay makes the node read another node's advertised URL as
    the URL of its own link to that node (`Cluster.link`).
    """

    noisy = False

    def __init__(self, reactor, port: int):
        super().__init__("127.0.0.1", port)
        self.reactor = reactor
        self.paused = False
        self.connections: list[_RelayServer] = []
        #: What arrived while paused: (the end it arrived at, the bytes), delivered on `resume`.
        self.held: list[tuple[_Relayed, bytes]] = []
        self.rewrites: dict[bytes, bytes] = {}
        self.listening = reactor.listenTCP(0, self, interface="127.0.0.1")
        self.local_port: int = self.listening.getHost().port
        self._closing: Deferred | None = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<local_port>``: the relay as an HTTP peer sees it."""
        return f"http://127.0.0.1:{self.local_port}"

    def buildProtocol(self, addr):
        server = _RelayServer()
        server.factory = self
        server.relay = self
        server.reactor = self.reactor
        return server

    def rewritten(self, data: bytes) -> tuple[bytes, bytes]:
        """``data`` with `rewrites` applied: (what to pass on, the end held back because it
        may begin a string to rewrite that the next bytes complete)."""
        for old, new in self.rewrites.items():
            data = data.replace(old, new)
        longest = max(map(len, self.rewrites), default=0)
        for size in range(min(longest - 1, len(data)), 0, -1):
            if any(old.startswith(data[-size:]) for old in self.rewrites):
                return data[:-size], data[-size:]
        return data, b""

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        """Pass on what was held, in order, and everything from now on."""
        self.paused = False
        held, self.held = self.held, []
        for end, data in held:
            if end.peer is not None:
                end.peer.transport.write(data)

    def cut(self) -> None:
        """Reset every connection and refuse new ones (the port closes) until `heal`."""
        self.held = []
        if self._closing is None:
            self._closing = self.listening.stopListening()
        for server in list(self.connections):
            cast(ITCPTransport, server.transport).abortConnection()

    async def heal(self) -> None:
        """Listen on ``local_port`` again after `cut`."""
        if self._closing is None:
            return
        await self._closing
        self._closing = None
        self.listening = self.reactor.listenTCP(self.local_port, self, interface="127.0.0.1")

    async def close(self) -> None:
        """`cut` for good (clean-up)."""
        self.cut()
        await cast(Deferred, self._closing)


class ClusterNode(Daemon):
    """One ``twistd mcproxy`` node: its own data directory, audit log and ports, sharing
    the Redis on ``redis_port`` and ``secret`` with the others. ``enabled=False`` writes
    no ``[cluster]`` section: a plain daemon on a shared Redis store (what runs today).

    ``relayed`` puts the node's links behind `Relay` s the test can partition: its own
    connections to Redis (``redis_relay``) and, once `link_to` made them, its connections to
    each peer's internal listener (``links``, one relay per peer). ``internal_relay`` gives the
    URL it advertises, which each peer reads as the URL of its own link to this node.
    """

    def __init__(
        self,
        reactor,
        root,
        *,
        node_id: str,
        redis_port: int,
        secret: str,
        enabled: bool = True,
        timers: dict | None = None,
        relayed: bool = False,
        **sections: dict,
    ):
        self.node_id = node_id
        self.secret = secret
        self.enabled = enabled
        self.timers = FAST_TIMERS if timers is None else timers
        self.internal_port = free_port()
        self.redis_relay = Relay(reactor, redis_port) if relayed else None
        self.internal_relay = Relay(reactor, self.internal_port) if relayed else None
        self.redis_port = self.redis_relay.local_port if self.redis_relay else redis_port
        self.links: dict[ClusterNode, Relay] = {}
        os.makedirs(str(root), exist_ok=True)
        super().__init__(reactor, root, **sections)

    def base_sections(self) -> dict[str, dict]:
        sections = super().base_sections()
        sections["store"] = {"url": f"redis://127.0.0.1:{self.redis_port}/0"}
        if self.enabled:
            sections["cluster"] = {
                "enabled": True,
                "node_id": self.node_id,
                "internal_listen": f"tcp:{self.internal_port}:interface=127.0.0.1",
                "secret": self.secret,
                **self.timers,
            }
            if self.internal_relay is not None:
                sections["cluster"]["advertise_url"] = self.internal_relay.url
        return sections

    def link_to(self, peer: "ClusterNode") -> Relay:
        """A relay of this node's own to ``peer``'s internal listener (both ``relayed``): this
        node's Redis relay turns the URL ``peer`` advertises into the relay's, so this node
        forwards through it and no other node does."""
        assert self.redis_relay is not None and peer.internal_relay is not None, "only relayed nodes have links"
        link = self.links[peer] = Relay(self.reactor, peer.internal_port)
        advertised, own = peer.internal_relay.url.encode(), link.url.encode()
        assert len(advertised) == len(own), (advertised, own)  # a Redis reply's lengths stay right
        self.redis_relay.rewrites[advertised] = own
        return link

    @property
    def internal_url(self) -> str:
        """The internal listener itself (not through ``internal_relay``)."""
        return f"http://127.0.0.1:{self.internal_port}"

    def describe(self) -> str:
        return f"node {self.node_id}"

    async def start(self, seconds: float = STARTUP_TIMEOUT) -> None:  # type: ignore[override]
        """Start the process; return once it listens and ``GET /health`` answers 200."""
        self.spawn()
        await self.listening(seconds)
        try:
            await until(self.reactor, self._healthy, seconds)
        except AssertionError:
            self.stop()
            raise AssertionError(f"{self.describe()} never became healthy:\n{self.tail()}") from None

    async def _healthy(self) -> bool:
        if not self.running:
            raise AssertionError(f"{self.describe()} ended while starting:\n{self.tail()}")
        try:
            code, _ = await self.health()
        except (ConnectError, ResponseNeverReceived):
            return False
        return code == 200

    async def health(self) -> tuple[int, dict | None]:
        """``GET /health``: (status, parsed body)."""
        response = await treq.get(self.base_url + "/health", persistent=False, timeout=5)
        body = await response.json() if response.code in (200, 503) else None
        return response.code, body

    def pause(self) -> None:
        """SIGSTOP: the process freezes, its sockets stay open."""
        self.signal("STOP")

    def resume(self) -> None:
        """SIGCONT after `pause`."""
        self.signal("CONT")

    async def terminate(self, seconds: float = 30.0) -> BaseException:
        """SIGTERM (a graceful drain) and wait for the exit; its reason."""
        self.signal("TERM")
        return await self.exited(seconds)

    async def close(self) -> None:
        """Kill it if it runs (SIGKILL ends a paused process too), and close its relays (clean-up)."""
        await super().close()
        for relay in (self.redis_relay, self.internal_relay, *self.links.values()):
            if relay is not None:
                await relay.close()


@attrs.define(eq=False)
class Cluster:
    """A Redis server, ``size`` nodes (n1, n2, ...) and the fake browsers a test asks for.

    `start` starts n1 first (it writes the admin token, being the first process on the
    empty store), then the others. `stop` stops everything started, by PID, even when a
    test failed half-way.
    """

    reactor: object
    root: str
    redis: RedisServer
    nodes: list[ClusterNode]
    secret: str
    sections: dict[str, dict]
    enabled: bool = True
    relayed: bool = False
    admin_token: str = ""
    browsers: list[FakeCDPServerFactory] = attrs.Factory(list)
    spares: list[ClusterNode] = attrs.Factory(list)
    _turn: int = 0

    @classmethod
    def create(
        cls,
        reactor,
        root,
        size: int = 3,
        *,
        enabled: bool = True,
        appendonly: bool = False,
        relayed: bool = False,
        **sections: dict,
    ) -> "Cluster":
        """A cluster in directory ``root`` (not started); ``sections`` go into every node's
        config; ``relayed`` nodes reach Redis and each other through `Relay` s."""
        root = str(root)
        redis = RedisServer(reactor, os.path.join(root, "redis"), appendonly=appendonly)
        cluster = cls(reactor, root, redis, [], secrets.token_hex(20), sections, enabled, relayed)
        for _ in range(size):
            cluster.add_node()
        return cluster

    def add_node(self, node_id: str | None = None, **sections: dict) -> ClusterNode:
        """One more node (not started), ``n<k>`` unless ``node_id`` is given; ``sections``
        override the cluster's (``cluster={...}`` for per-node timers)."""
        node = self._new_node(f"node{len(self.nodes) + 1}", node_id or f"n{len(self.nodes) + 1}", sections)
        self.nodes.append(node)
        return node

    def spare_node(self, node_id: str, **sections: dict) -> ClusterNode:
        """A node (not started) outside `nodes` and the round robin, e.g. a second process
        with a node id in use; `stop` stops it too."""
        node = self._new_node(f"spare{len(self.spares) + 1}", node_id, sections)
        self.spares.append(node)
        return node

    def _new_node(self, directory: str, node_id: str, sections: dict[str, dict]) -> ClusterNode:
        merged = {name: dict(values) for name, values in self.sections.items()}
        for name, values in sections.items():
            merged.setdefault(name, {}).update(values)
        node = ClusterNode(
            self.reactor,
            os.path.join(self.root, directory),
            node_id=node_id,
            redis_port=self.redis.port,
            secret=self.secret,
            enabled=self.enabled,
            relayed=self.relayed,
            **merged,
        )
        if self.relayed:
            for peer in self.nodes + self.spares:
                node.link_to(peer)
                peer.link_to(node)
        return node

    def link(self, edge: ClusterNode, owner: ClusterNode) -> Relay:
        """The relay through which ``edge`` forwards to ``owner`` (``relayed`` clusters): cut
        it to partition that one direction of that one pair."""
        return edge.links[owner]

    async def start(self) -> None:
        """Start Redis, then the nodes (`start_nodes`)."""
        await self.redis.start()
        await self.start_nodes()

    async def start_nodes(self) -> None:
        """Start n1, then the other nodes together; read the admin token n1 wrote (again,
        after a restart of the nodes)."""
        first, *others = self.nodes
        await first.start()
        with open(os.path.join(first.root, "admin-token")) as f:
            self.admin_token = f.read().strip()
        try:
            await gatherResults([Deferred.fromCoroutine(node.start()) for node in others], consumeErrors=True)
        except FirstError as e:
            e.subFailure.raiseException()

    async def stop(self) -> None:
        """Stop every node, fake browser and Redis this cluster started, by PID."""
        errors = []
        for node in self.nodes + self.spares:
            try:
                await node.close()
            except Exception as e:  # clean up the rest anyway
                errors.append(e)
        for browser in self.browsers:
            browser.drop_all()
            await browser.listening.stopListening()
        await self.redis.close()
        if errors:
            raise errors[0]

    def proxy(self, node: int = 0) -> RunningProxy:
        """The admin API and tool-call helpers of node ``node`` (an index into `nodes`)."""
        return RunningProxy(service=None, base_url=self.nodes[node].base_url, admin_token=self.admin_token)

    @property
    def base_urls(self) -> list[str]:
        """The public base URLs of the nodes, in order."""
        return [node.base_url for node in self.nodes]

    def next_url(self) -> str:
        """The next node's base URL, round robin (what a balancer would pick)."""
        url = self.base_urls[self._turn % len(self.nodes)]
        self._turn += 1
        return url

    async def api(self, method: str, path: str, body=None, token: str | None = None, node: int = 0):
        """An admin API call on node ``node``: ``(status, parsed JSON or None, headers)``."""
        return await self.proxy(node).api(method, path, body, token)

    async def token_for(self, user_id: str, *permissions: str) -> str:
        """A token for ``user_id`` (default: all tools + register), made on n1."""
        return await self.proxy(0).token_for(user_id, *permissions)

    async def register(self, user_id: str, browser_url: str, token: str, node: int = 0) -> dict:
        """Register ``browser_url`` for ``user_id`` through node ``node`` (asserts 201)."""
        return await self.proxy(node).register(user_id, browser_url, token)

    async def owners(self, users: Sequence[str] = (), node: int = 0, timeout: float = 15.0) -> dict[str, str | None]:
        """``GET /api/cluster``'s owners (user id → node id or None) as node ``node`` sees
        them; given ``users``, once each of them has an owner (AssertionError after
        ``timeout`` seconds), and only theirs."""
        latest: dict[str, str | None] = {}

        async def owned() -> bool:
            code, body, _ = await self.api("GET", "/api/cluster", node=node)
            assert code == 200, (code, body)
            latest.clear()
            latest.update(body["owners"])
            return all(latest.get(user) for user in users)

        await until(self.reactor, owned, timeout, seen=lambda: latest)
        return {user: latest[user] for user in users} if users else latest

    def fake_browser(self) -> FakeCDPServerFactory:
        """A `FakeChrome` on a free loopback port (its ``url`` registers it), stopped with the cluster."""
        browser = serve_fake_chrome(self.reactor)
        self.browsers.append(browser)
        return browser

    def node_named(self, node_id: str) -> ClusterNode:
        """The node whose id is ``node_id``."""
        for node in self.nodes:
            if node.node_id == node_id:
                return node
        raise KeyError(node_id)


async def started_cluster(reactor, root, **options) -> Cluster:
    """A started cluster (`Cluster.create` with ``options``); stopped again (and the failure
    re-raised) if it cannot start."""
    cluster = Cluster.create(reactor, root, **options)
    try:
        await cluster.start()
    except BaseException:
        await cluster.stop()
        raise
    return cluster


# -- What the tests ask of a running cluster, and read in its answers ------------------------------

#: The header that names the node that ran a request.
NODE_HEADER = "X-MCProxy-Node"


def node_of(headers) -> str:
    """The node that ran a request, from its answer's headers."""
    values = headers.getRawHeaders(NODE_HEADER)
    assert values, f"no {NODE_HEADER} header in {list(headers.getAllRawHeaders())}"
    return values[0]


def text_of(answer: dict) -> str:
    """The text of a successful tools/call answer (fails on an error)."""
    assert "result" in answer, answer
    text = "\n".join(block.get("text", "") for block in answer["result"]["content"])
    assert not answer["result"].get("isError"), text
    return text


async def register_users(cluster: Cluster, names: Sequence[str]) -> dict[str, tuple[str, FakeCDPServerFactory]]:
    """Register each user with a FakeChrome of its own, through node i for the i-th user:
    user → (token, browser)."""
    users = {}
    for index, name in enumerate(names):
        token = await cluster.token_for(name)
        browser = cluster.fake_browser()
        await cluster.register(name, browser.url, token, node=index % len(cluster.nodes))
        users[name] = (token, browser)
    return users


async def cluster_nodes(cluster: Cluster, node: int = 0) -> dict[str, dict]:
    """``GET /api/cluster``'s nodes by id: alive, draining, epoch, stats (``users`` held)."""
    code, body, _ = await cluster.api("GET", "/api/cluster", node=node)
    assert code == 200, body
    return {entry["id"]: entry for entry in body["nodes"]}


async def served_within_failover(cluster: Cluster, reactor, node: int, token: str) -> tuple[dict, str]:
    """A ``list_pages`` through node ``node`` that may be held while its user changes owner:
    (the answer, the node that ran it). Fails if it is not served within the failover bound
    plus a margin for a busy machine. A 503 ``coordination_unavailable`` (Redis was slow to
    answer that node: the proxy's own "retry later") is asked again, as a client does, within
    the same bound; any other error fails at once."""

    async def serve() -> tuple[dict, Any]:
        while True:
            status, headers, answer = await cluster.proxy(node).post_tool_call(token, "list_pages")
            if status != 503 or answer.get("error", {}).get("code") != "coordination_unavailable":
                return answer, headers
            await sleep(reactor, 0.5)

    served = Deferred.fromCoroutine(serve())
    served.addTimeout(FAST_TIMERS["node_ttl"] + FAST_TIMERS["failover_wait"] + 15, reactor)
    answer, headers = await served
    assert text_of(answer).startswith("## Pages")
    return answer, node_of(headers)
