"""Targets of cluster mode: the forwarded call, the local call, re-homing, rolling restarts,
and what a second process adds.

Every process is a real ``twistd mcproxy`` with ``[cluster] enabled = true`` on a Redis server
this benchmark starts on a free port (and stops by its PID); the browsers are real Chromium.

1. **Forwarded vs local** (``cluster/forwarded``, ``cluster/local``): one user owned by node
   n1; back to back, ``evaluate_script(() => 1+1)`` sent to n1 (served there), the same sent to
   n2 (forwarded to n1), and the same through a daemon with ``cluster.enabled = false``, each on
   a tab of its own in one Chromium. Forwarding may add 1 ms median and 3 ms at p95 over the
   local call; a local call in cluster mode may add 0.3 ms over no cluster. n2's CPU per
   forward is printed.
2. **Rolling restart** (``cluster/rolling``): three nodes; a client sends a stateless call
   every 50 ms to the nodes in turn (as a round-robin balancer would, trying the next node only
   when a connection cannot be made), while each node in turn is stopped with SIGTERM and
   started again. Goal: no failed call.
3. **Re-homing** (``cluster/rehoming``): the owner of the user is killed with ``kill -9``; a
   client polls another node every 100 ms until a call succeeds; the killed node is started
   again. Repeated (``--cluster-kills``, 10); every re-homing must take at most 15 s with the
   default timers.
4. **Two processes vs one** (``cluster/scale``): two users, each with a Chromium of their own,
   under wrk (``bench/load.lua``) at 32 connections per user: first both users on one daemon,
   then each user on the node that owns it (the way a balancer hashing ``Authorization`` sends
   them). Goal: at least 1.6 times the calls per second.
"""

import asyncio
import json
import os
import shutil
import signal
import tempfile
import time

from bench.isolation import _Client
from bench.lean_mcp import LeanStreamable, open_tab, timed_evaluate
from bench.load import MAX_IN_FLIGHT, NotMeasurable, _find_wrk, _wrk
from bench.procs import Chromium, FixtureSite, ProxyDaemon, _stop_process, free_port
from bench.report import Summary, Verdict, say
from bench.wire import HttpConnection, WireError

FORWARD_ADDED_MS, FORWARD_ADDED_P95_MS = 1.0, 3.0
LOCAL_ADDED_MS = 0.3
REHOMING_LIMIT_S = 15.0
SCALE_TARGET = 1.6
SCALE_CONNECTIONS = 32
SCALE_SECONDS = 8
ROLLING_INTERVAL = 0.05
SECRET = "bench-cluster-secret-of-more-than-32-bytes"


class RedisServer:
    """A ``redis-server`` of this benchmark's own, on a free loopback port, keeping nothing on disk."""

    def __init__(self):
        self.port = free_port()
        self.directory = tempfile.mkdtemp(prefix="mcproxy-bench-redis-")
        self.process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        server = shutil.which("redis-server")
        if server is None:
            raise NotMeasurable("redis-server is not installed (Debian's redis-server package)")
        self.process = await asyncio.create_subprocess_exec(
            server, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", self.directory, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        for _ in range(100):
            try:
                if await self.ping_ms() >= 0:
                    return
            except OSError:
                await asyncio.sleep(0.05)
        raise WireError("redis-server did not answer PING")

    async def ping_ms(self) -> float:
        """One PING on a fresh connection, in ms (connection included)."""
        started = time.perf_counter()
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(b"PING\r\n")
            if await reader.readline() != b"+PONG\r\n":
                raise WireError("redis-server did not answer PONG")
        finally:
            writer.close()
        return (time.perf_counter() - started) * 1000

    async def stop(self) -> None:
        if self.process is not None:
            await _stop_process(self.process)
        shutil.rmtree(self.directory, ignore_errors=True)


class Node(ProxyDaemon):
    """One process of the cluster: a `ProxyDaemon` on the shared Redis, with a node id and
    an internal listener of its own; it can be killed and started again on the same ports."""

    def __init__(self, redis: RedisServer, node_id: str, admin_token: str = "", db: int = 0):
        super().__init__(store=f"{redis.url.rsplit('/', 1)[0]}/{db}")
        self.node_id = node_id
        self.admin_token = admin_token
        self.internal_port = free_port()
        self.extra_config = (
            f"[session]\nmax_in_flight = {MAX_IN_FLIGHT}\n"
            "[cluster]\nenabled = true\n"
            f'node_id = "{node_id}"\n'
            f'internal_listen = "tcp:{self.internal_port}:interface=127.0.0.1"\n'
            f'secret = "{SECRET}"\n'
        )

    def kill(self) -> None:
        """``kill -9``, by its PID."""
        os.kill(self.pid, signal.SIGKILL)

    async def restart(self) -> None:
        """Start again after a kill or a stop, same ports and id (a killed node's id is free
        again once its lease ran out: the start waits for that)."""
        if self.process is not None and self.process.returncode is None:
            await self.process.wait()
        await self.start()

    async def terminate(self) -> None:
        """SIGTERM (drain and hand every user over), and wait for the exit."""
        os.kill(self.pid, signal.SIGTERM)
        await asyncio.wait_for(self.process.wait(), 60)


async def _owner(node: Node, user: str) -> str | None:
    """Which node owns ``user``, as ``GET /api/cluster`` through ``node`` says."""
    connection = await HttpConnection.open(node.base_url)
    try:
        status, _, body = await connection.request(
            "GET", "/api/cluster", {"Authorization": f"Bearer {node.admin_token}"}
        )
    finally:
        connection.close()
    if status != 200:
        raise WireError(f"GET /api/cluster answered {status}: {body[:300]!r}")
    return json.loads(body)["owners"].get(user)


USER = "bench-cluster"


async def _forwarded_vs_local(
    options, redis: RedisServer, site, chromium, n1: Node, n2: Node, single: ProxyDaemon, token: str
) -> list[Verdict]:
    user = USER
    owner = await _owner(n2, user)
    if owner != "n1":
        raise WireError(f"the user registered through n1 is owned by {owner!r}, not n1")
    single_token = await single.user_token("bench-single", chromium.browser_url)
    sessions = {
        "local": await LeanStreamable.open(n1.base_url, token),
        "forwarded": await LeanStreamable.open(n2.base_url, token),
        "no cluster": await LeanStreamable.open(single.base_url, single_token),
    }
    try:
        tabs = {}
        for i, (name, session) in enumerate(sessions.items()):
            tabs[name] = await open_tab(session, site.url(f"cluster-{i}"))
        for _ in range(options.warmup):
            for name, session in sessions.items():
                await timed_evaluate(session, tabs[name])
        samples: dict[str, list[float]] = {name: [] for name in sessions}
        edge_cpu = 0.0
        for _ in range(options.iterations):
            for name, session in sessions.items():
                before = n2.cpu_seconds() if name == "forwarded" else 0.0
                samples[name].append(await timed_evaluate(session, tabs[name]))
                if name == "forwarded":
                    edge_cpu += n2.cpu_seconds() - before
    finally:
        for session in sessions.values():
            session.close()
    pings = Summary.of([await redis.ping_ms() for _ in range(50)])
    local, forwarded, alone = (Summary.of(samples[name]) for name in ("local", "forwarded", "no cluster"))
    say(f"  cluster.enabled = false      {alone}")
    say(f"  cluster, served by the owner {local}")
    say(f"  cluster, forwarded n2 -> n1  {forwarded}")
    say(f"  Redis PING (fresh connection) {pings}")
    added, added_p95 = forwarded.median - local.median, forwarded.p95 - local.p95
    say(f"  edge (n2) CPU per forward {edge_cpu * 1000 / options.iterations:.2f} ms")
    local_added = local.median - alone.median
    return [
        Verdict(
            "cluster/forwarded",
            added <= FORWARD_ADDED_MS and added_p95 <= FORWARD_ADDED_P95_MS,
            f"forwarding adds median {added:.3f} ms (target <= {FORWARD_ADDED_MS}), p95 {added_p95:.3f} ms "
            f"(target <= {FORWARD_ADDED_P95_MS})",
        ),
        Verdict(
            "cluster/local",
            local_added <= LOCAL_ADDED_MS,
            f"a call served by its owner adds median {local_added:.3f} ms over cluster.enabled = false "
            f"(target <= {LOCAL_ADDED_MS})",
        ),
    ]


class _Balancer:
    """A round-robin balancer in the client: each call goes to the next node, and to the one
    after it only when no connection could be made (what ``retry-on conn-failure`` does)."""

    def __init__(self, nodes: list[Node], token: str):
        self.nodes = nodes
        self.token = token
        self.turn = 0

    async def call(self, page_id: int) -> float:
        for _ in range(2 * len(self.nodes)):
            node = self.nodes[self.turn % len(self.nodes)]
            self.turn += 1
            client = _Client(node.base_url, self.token)
            try:
                return await timed_evaluate(client, page_id)
            except (ConnectionRefusedError, ConnectionResetError):
                continue
            finally:
                client.close()
        raise WireError("no node took the connection")


async def _rolling(site, nodes: list[Node], token: str) -> Verdict:
    opener = _Client(nodes[0].base_url, token)
    page = await opener.open_page(site.url("rolling"))
    opener.close()
    balancer = _Balancer(nodes, token)
    failures: list[str] = []
    latencies: list[float] = []
    restarting = True

    async def calls() -> None:
        while restarting:
            try:
                latencies.append(await balancer.call(page))
            except Exception as e:  # every failure is counted and shown
                failures.append(f"{type(e).__name__}: {str(e)[:200]}")
            await asyncio.sleep(ROLLING_INTERVAL)

    loop = asyncio.create_task(calls())
    handovers = []
    try:
        await asyncio.sleep(1)
        for node in nodes:
            started = time.perf_counter()
            await node.terminate()
            handovers.append(time.perf_counter() - started)
            await node.restart()
            await asyncio.sleep(1)
    finally:
        restarting = False
        await loop
    say(
        f"  rolling restart of {len(nodes)} nodes: {len(latencies)} calls, {len(failures)} failed; "
        f"slowest {max(latencies):.0f} ms; each node stopped (drained, users handed over) in "
        + ", ".join(f"{s:.2f} s" for s in handovers)
    )
    for failure in failures[:3]:
        say(f"    failed: {failure}")
    return Verdict("cluster/rolling", not failures, f"{len(failures)} failed calls of {len(latencies) + len(failures)}")


async def _rehoming(nodes: list[Node], kills: int, token: str) -> Verdict:
    times = []
    for _ in range(kills):
        owner_id = await _owner(nodes[0], USER)
        owner = next(node for node in nodes if node.node_id == owner_id)
        other = next(node for node in nodes if node is not owner)
        owner.kill()
        killed = time.perf_counter()
        while True:
            client = _Client(other.base_url, token)
            try:
                await client.call_tool("list_pages", {})
                break
            except (WireError, OSError):
                await asyncio.sleep(0.1)
            finally:
                client.close()
            if time.perf_counter() - killed > 3 * REHOMING_LIMIT_S:
                break
        times.append(time.perf_counter() - killed)
        await owner.restart()
    say("  re-homed after kill -9 in " + ", ".join(f"{s:.1f} s" for s in times))
    worst = max(times)
    return Verdict(
        "cluster/rehoming",
        worst <= REHOMING_LIMIT_S,
        f"slowest of {kills}: {worst:.1f} s (target <= {REHOMING_LIMIT_S} s)",
    )


async def _throughput(wrk: str, daemons: list, users: list[tuple[str, list[int]]]) -> float:
    """wrk on each daemon at once, one user each; good calls per second in all."""
    runs = await asyncio.gather(
        *(
            _wrk(wrk, daemon, token, pages, SCALE_CONNECTIONS, SCALE_SECONDS)
            for daemon, (token, pages) in zip(daemons, users, strict=True)
        )
    )
    for run in runs:
        if run.errors:
            raise WireError(f"wrk saw wrong answers: {run.line()}")
    return sum(run.figures.per_second for run in runs)


async def _scale(site, redis: RedisServer, wrk: str) -> Verdict:
    chromiums = [Chromium(), Chromium()]
    single = ProxyDaemon(store="memory")
    single.extra_config = f"[session]\nmax_in_flight = {MAX_IN_FLIGHT}\n"
    # A database of their own: the first cluster's users and admin token are not theirs.
    n1 = Node(redis, "s1", db=1)
    nodes = [n1]
    try:
        await asyncio.gather(*(c.start() for c in chromiums), single.start(), n1.start())
        n2 = Node(redis, "s2", n1.admin_token, db=1)
        nodes.append(n2)
        await n2.start()
        alone, spread = [], []
        for i, chromium in enumerate(chromiums):
            token = await single.user_token(f"scale-{i}", chromium.browser_url)
            client = _Client(single.base_url, token)
            alone.append((token, [await client.open_page(site.url(f"scale-{i}-{tab}")) for tab in range(8)]))
            client.close()
            node = nodes[i]
            token = await node.user_token(f"scale-{i}", chromium.browser_url)
            client = _Client(node.base_url, token)
            spread.append((token, [await client.open_page(site.url(f"scale-{i}-{tab}")) for tab in range(8)]))
            client.close()
        one = await _throughput(wrk, [single, single], alone)
        two = await _throughput(wrk, nodes, spread)
    finally:
        for daemon in (single, *nodes):
            await daemon.stop()
        for chromium in chromiums:
            await chromium.stop()
    ratio = two / one
    say(f"  two users: one process {one:.0f} calls/s; two processes (a user each) {two:.0f} calls/s")
    return Verdict(
        "cluster/scale", ratio >= SCALE_TARGET, f"{ratio:.2f}x the calls/s of one process (target >= {SCALE_TARGET}x)"
    )


async def run(options) -> list[Verdict]:
    say("== cluster: forwarded and local calls, rolling restart, re-homing after kill -9, two processes vs one ==")
    redis, site, chromium = RedisServer(), FixtureSite(), Chromium()
    nodes: list[Node] = []
    single = ProxyDaemon(store="memory")
    try:
        try:
            await redis.start()
            wrk = await _find_wrk()
        except NotMeasurable as e:
            return [Verdict(f"cluster/{name}", False, f"could not measure: {e}") for name in ("forwarded", "rolling")]
        await asyncio.gather(site.start(), chromium.start(), single.start())
        first = Node(redis, "n1")
        await first.start()
        nodes = [first, Node(redis, "n2", first.admin_token), Node(redis, "n3", first.admin_token)]
        await asyncio.gather(*(node.start() for node in nodes[1:]))
        # One user, registered through n1 (which then owns it), for every phase: a browser
        # belongs to one user.
        token = await first.user_token(USER, chromium.browser_url)
        verdicts = await _forwarded_vs_local(options, redis, site, chromium, nodes[0], nodes[1], single, token)
        await single.stop()
        verdicts.append(await _rolling(site, nodes, token))
        verdicts.append(await _rehoming(nodes, options.cluster_kills, token))
        for node in nodes:
            await node.stop()
        nodes = []
        verdicts.append(await _scale(site, redis, wrk))
        return verdicts
    finally:
        for node in nodes:
            await node.stop()
        await single.stop()
        await chromium.stop()
        await site.stop()
        await redis.stop()
