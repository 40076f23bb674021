"""Target: many concurrent idle legacy SSE sessions in one daemon, and no memory left behind.

Each session is a ``GET /sse`` whose ``endpoint`` event has been read, then left idle. The
memory is the ``twistd`` process's own VmRSS (``/proc/PID/status``); its start is taken
after one warm-up session has opened and closed, and the daemon has settled. Once all the
sessions have closed (the daemon counts none) and it has settled again, VmRSS is judged
against the start; a second round of as many sessions follows, for information: a leak
grows again, memory the allocator keeps for reuse does not. The client
holds bare non-blocking sockets (no stream objects, nothing read once the endpoint came),
so that holding ten thousand of them costs this process little and the daemon is what
limits how fast they open.
"""

import asyncio
import resource
import socket
from urllib.parse import urlsplit

import attrs

from bench.procs import ProxyDaemon, _get_json
from bench.report import Verdict, say
from bench.wire import IO_TIMEOUT, WireError

PER_SESSION_TARGET_KIB = 16.0
OPEN_TARGET_SECONDS = 10.0
#: After the sessions are gone the daemon's VmRSS must be back within this share of the start.
RETURN_TARGET = 0.10
#: Streams opened at once: enough to keep both sides busy, under the daemon's listen backlog.
OPENING_CONCURRENCY = 32
SETTLE_SECONDS = 2.0
#: Each file descriptor this process and the daemon need beyond the streams (logs, store, ...).
SPARE_FDS = 256


def raise_fd_limit(needed: int) -> None:
    """Lift this process's soft fd limit (the daemon started after inherits it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft != resource.RLIM_INFINITY and soft < needed:
        raise RuntimeError(f"the fd limit is {soft}; {needed} are needed (raise the hard limit)")


class IdleStreams:
    """Legacy SSE sessions held open as bare sockets, each past its ``endpoint`` event."""

    def __init__(self, base_url: str, token: str):
        parts = urlsplit(base_url)
        self.address = (parts.hostname, parts.port)
        self.request = (
            f"GET /sse HTTP/1.1\r\nHost: {parts.netloc}\r\nAccept: text/event-stream\r\n"
            f"Authorization: Bearer {token}\r\n\r\n"
        ).encode("latin-1")
        self.sockets: list[socket.socket] = []

    async def open_one(self) -> None:
        """Open a stream and read up to its ``endpoint`` event; the socket is kept."""
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            async with asyncio.timeout(IO_TIMEOUT):
                await loop.sock_connect(sock, self.address)
                await loop.sock_sendall(sock, self.request)
                received = b""
                while b"event: endpoint\ndata: " not in received or not received.endswith(b"\n\n\r\n"):
                    piece = await loop.sock_recv(sock, 4096)
                    if not piece:
                        raise WireError(f"GET /sse ended before the endpoint event: {received[:300]!r}")
                    received += piece
            if not received.startswith(b"HTTP/1.1 200 ") or b"sessionId=" not in received:
                raise WireError(f"GET /sse answered {received[:300]!r}")
        except BaseException:
            sock.close()
            raise
        self.sockets.append(sock)

    async def open(self, count: int) -> None:
        """Open ``count`` streams, `OPENING_CONCURRENCY` at a time; one failure stops them all."""
        gate = asyncio.Semaphore(OPENING_CONCURRENCY)

        async def gated() -> None:
            async with gate:
                await self.open_one()

        async with asyncio.TaskGroup() as group:
            for _ in range(count):
                group.create_task(gated())

    def close(self) -> None:
        """Close every stream (the client leaves; the daemon ends the sessions)."""
        sockets, self.sockets = self.sockets, []
        for sock in sockets:
            sock.close()


async def active_sessions(daemon: ProxyDaemon) -> int:
    """The daemon's own count of open MCP sessions (``GET /health``)."""
    _, health = await _get_json(daemon.base_url, "/health")
    return health["activeSessions"]


async def wait_for_sessions(daemon: ProxyDaemon, count: int) -> None:
    """Wait until the daemon holds exactly ``count`` sessions (it ends closed ones as it reads them)."""
    async with asyncio.timeout(IO_TIMEOUT):
        while await active_sessions(daemon) != count:
            await asyncio.sleep(0.1)


@attrs.frozen
class Round:
    """One round: ``count`` streams opened (in ``seconds``, costing the daemon ``cpu``
    seconds), held, then all closed; the daemon's VmRSS in KiB with them and after."""

    seconds: float
    cpu: float
    held: int
    after: int


async def one_round(daemon: ProxyDaemon, streams: IdleStreams, count: int) -> Round:
    cpu, began = daemon.cpu_seconds(), asyncio.get_running_loop().time()
    await streams.open(count)
    seconds, cpu = asyncio.get_running_loop().time() - began, daemon.cpu_seconds() - cpu
    await wait_for_sessions(daemon, count)
    await asyncio.sleep(SETTLE_SECONDS)
    held = daemon.rss_kib()
    streams.close()
    await wait_for_sessions(daemon, 0)
    await asyncio.sleep(SETTLE_SECONDS)
    return Round(seconds, cpu, held, daemon.rss_kib())


async def run(options) -> list[Verdict]:
    """Open ``options.sessions`` idle streams, judge what they cost, close them, judge what is
    left; then a second round, to tell memory the allocator keeps for reuse from a leak."""
    count = options.sessions
    say(f"== sse_memory: {count} concurrent idle legacy SSE sessions in one twistd process ==")
    raise_fd_limit(count + SPARE_FDS)
    daemon = ProxyDaemon.for_benchmark(options, "sse_memory")
    streams = None
    try:
        await daemon.start()
        token = await daemon.user_token("bench-sse")
        streams = IdleStreams(daemon.base_url, token)
        await one_round(daemon, streams, 1)
        start = daemon.rss_kib()
        first = await one_round(daemon, streams, count)
        second = await one_round(daemon, streams, count)
    finally:
        if streams is not None:
            streams.close()
        await daemon.stop()
    per_session = (first.held - start) / count
    left = (first.after - start) / start
    say(f"  start (after one warm-up session, settled): daemon VmRSS {start / 1024:.1f} MB")
    say(f"  with {count} sessions: {first.held / 1024:.1f} MB, {per_session:.1f} KiB per session")
    say(
        f"  opened in {first.seconds:.1f} s ({count / first.seconds:.0f} per s); "
        f"daemon CPU {1000 * first.cpu / count:.2f} ms per session"
    )
    say(f"  after they all closed: {first.after / 1024:.1f} MB ({100 * left:+.1f} % of the start)")
    say(
        f"  a second round: {second.held / 1024:.1f} MB with the sessions, {second.after / 1024:.1f} MB after "
        f"({100 * (second.after - first.after) / first.after:+.1f} % of after the first)"
    )
    return [
        Verdict(
            "sse_memory",
            per_session <= PER_SESSION_TARGET_KIB,
            f"{count} idle SSE sessions: {per_session:.1f} KiB each (target <= {PER_SESSION_TARGET_KIB:.0f} KiB)",
        ),
        Verdict(
            "sse_memory_open",
            first.seconds <= OPEN_TARGET_SECONDS,
            f"{count} SSE sessions opened in {first.seconds:.1f} s (target <= {OPEN_TARGET_SECONDS:.0f} s)",
        ),
        Verdict(
            "sse_memory_return",
            left <= RETURN_TARGET,
            f"VmRSS after they closed is {100 * left:+.1f} % of the start (target <= +{100 * RETURN_TARGET:.0f} %)",
        ),
    ]
