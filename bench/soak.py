"""Target: many short MCP sessions, one after another, leave the daemon no bigger than before.

Each session lives a whole life: it opens, makes one ``tools/call`` of ``list_pages`` (on a
registered headless Chromium) and ends. Every other session is legacy HTTP+SSE (``GET /sse``,
``initialize`` and the call posted to ``/message``, answers read from the stream, then the
stream closed) and the others Streamable HTTP (``initialize``, the call, ``DELETE /mcp``).
`CONCURRENCY` clients run them side by side, each on its own kept-alive connection for its
posts (a legacy stream needs a connection of its own). The daemon's VmRSS is read after a
warm-up of `WARMUP_SESSIONS` sessions (the start), at every tenth of the run, and at the end
once the daemon holds no session any more and has settled.
"""

import asyncio

from bench.lean_mcp import LeanLegacySse, LeanStreamable
from bench.procs import Chromium, ProxyDaemon
from bench.report import Verdict, say
from bench.sse_memory import wait_for_sessions
from bench.wire import EventStream, HttpConnection, WireError

#: After the sessions are gone, the daemon's VmRSS must be back within this share of the start.
RETURN_TARGET = 0.10
#: Sessions under way at once: enough to keep the daemon busy, few enough to be short-lived.
CONCURRENCY = 16
WARMUP_SESSIONS = 1000
SETTLE_SECONDS = 2.0
SAMPLES = 10


class _Client:
    """One client running sessions back to back; its posts share one kept-alive connection."""

    def __init__(self, base_url: str, token: str):
        self.base_url = base_url
        self.token = token
        self.poster: HttpConnection | None = None

    async def session(self, legacy: bool) -> None:
        """One whole session: open, one ``list_pages``, end."""
        if self.poster is None:
            self.poster = await HttpConnection.open(self.base_url)
        if legacy:
            await self._legacy(self.poster)
        else:
            await self._streamable(self.poster)

    async def _legacy(self, poster: HttpConnection) -> None:
        stream = await EventStream.open(self.base_url, "/sse", {"Authorization": f"Bearer {self.token}"})
        try:
            event, endpoint = await stream.next_event()
            if event != "endpoint":
                raise WireError(f"first SSE event is {event!r}, not endpoint")
            session = LeanLegacySse(stream, poster, endpoint, self.token)
            await session.handshake()
            _check_pages(await session.tool("list_pages", {}))
        finally:
            stream.close()

    async def _streamable(self, poster: HttpConnection) -> None:
        session = LeanStreamable(poster, self.token)
        await session.handshake()
        _check_pages(await session.tool("list_pages", {}))
        await _delete(session)

    def close(self) -> None:
        if self.poster is not None:
            self.poster.close()


#: The tab every ``list_pages`` must list (opened through the proxy before the sessions).
TAB_URL = "data:text/html,<title>soak</title>"


def _check_pages(listing: str) -> None:
    if TAB_URL not in listing:
        raise WireError(f"list_pages did not list the tab: {listing[:300]!r}")


async def _delete(session: LeanStreamable) -> None:
    """End a Streamable HTTP session (``DELETE /mcp``)."""
    status, _, body = await session.connection.request("DELETE", "/mcp", session.headers)
    if status != 204:
        raise WireError(f"DELETE /mcp answered {status}: {body[:300]!r}")


async def _open_tab(base_url: str, token: str) -> None:
    session = LeanStreamable(await HttpConnection.open(base_url), token)
    try:
        await session.handshake()
        await session.tool("new_page", {"url": TAB_URL})
        await _delete(session)
    finally:
        session.close()


async def run_sessions(clients: list[_Client], count: int, on_done=None) -> None:
    """Run ``count`` sessions over ``clients``, alternating the transports; ``on_done(n)``
    after the n-th has ended. One failure stops them all."""
    started = 0
    done = 0

    async def work(client: _Client) -> None:
        nonlocal started, done
        while started < count:
            legacy = started % 2 == 1
            started += 1
            await client.session(legacy)
            done += 1
            if on_done is not None:
                on_done(done)

    async with asyncio.TaskGroup() as group:
        for client in clients:
            group.create_task(work(client))


async def run(options) -> list[Verdict]:
    """Run ``options.soak_sessions`` sessions and judge the daemon's VmRSS after them."""
    count = options.soak_sessions
    say(f"== soak: {count} short MCP sessions (open, list_pages, close), {CONCURRENCY} at a time ==")
    chromium, daemon = Chromium(), ProxyDaemon.for_benchmark(options, "soak")
    # Each session lists the user's tab (by default a session sees only the tabs it opened).
    daemon.extra_config = '[tools]\ntab_scope = "user"\n'
    clients: list[_Client] = []
    try:
        await chromium.start()
        await daemon.start()
        token = await daemon.user_token("bench-soak", chromium.browser_url)
        await _open_tab(daemon.base_url, token)
        clients = [_Client(daemon.base_url, token) for _ in range(CONCURRENCY)]
        await run_sessions(clients, WARMUP_SESSIONS)
        await wait_for_sessions(daemon, 0)
        await asyncio.sleep(SETTLE_SECONDS)
        start = daemon.rss_kib()
        samples: list[tuple[int, int]] = []

        def sample(done: int) -> None:
            if done % max(1, count // SAMPLES) == 0:
                samples.append((done, daemon.rss_kib()))

        loop = asyncio.get_running_loop()
        cpu_before, began = daemon.cpu_seconds(), loop.time()
        await run_sessions(clients, count, sample)
        elapsed, cpu = loop.time() - began, daemon.cpu_seconds() - cpu_before
        for client in clients:
            client.close()
        await wait_for_sessions(daemon, 0)
        await asyncio.sleep(SETTLE_SECONDS)
        end = daemon.rss_kib()
    finally:
        for client in clients:
            client.close()
        await daemon.stop()
        await chromium.stop()
    left = (end - start) / start
    say(f"  start (after {WARMUP_SESSIONS} warm-up sessions, settled): daemon VmRSS {start / 1024:.1f} MB")
    say("  during: " + ", ".join(f"{done}: {rss / 1024:.1f}" for done, rss in samples) + " (sessions: MB)")
    say(f"  end (no session left, settled): {end / 1024:.1f} MB ({100 * left:+.1f} % of the start)")
    say(
        f"  {count} sessions in {elapsed:.1f} s ({count / elapsed:.0f} per s); "
        f"daemon CPU {1000 * cpu / count:.2f} ms per session"
    )
    return [
        Verdict(
            "soak",
            left <= RETURN_TARGET,
            f"VmRSS after {count} sessions is {100 * left:+.1f} % of the start "
            f"(target <= +{100 * RETURN_TARGET:.0f} %)",
        )
    ]
