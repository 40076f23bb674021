"""Target 2: resident memory of many concurrent idle legacy SSE sessions in one daemon.

The baseline is the daemon's own VmRSS just before the streams open (after one warm-up
session), read from /proc/PID/status of the separate ``twistd`` process.
"""

import asyncio
import resource

from bench.procs import ProxyDaemon
from bench.report import Verdict, say
from bench.wire import EventStream, WireError

TARGET_MB = 50.0
#: Streams opened at once; above the listen backlog connections would just queue.
OPENING_CONCURRENCY = 32
SETTLE_SECONDS = 1.0


def raise_fd_limit(needed: int) -> None:
    """Lift this process's soft fd limit (the daemon started after inherits it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft != resource.RLIM_INFINITY and soft < needed:
        raise RuntimeError(f"the fd limit is {soft}; {needed} are needed (raise the hard limit)")


async def _open_idle_session(base_url: str, token: str) -> EventStream:
    stream = await EventStream.open(base_url, "/sse", {"Authorization": f"Bearer {token}"})
    event, data = await stream.next_event()
    if event != "endpoint" or "sessionId=" not in data:
        stream.close()
        raise WireError(f"first SSE event is {event!r} {data!r}, not the endpoint")
    return stream


async def run(options) -> list[Verdict]:
    """Open ``options.sessions`` idle streams and judge the daemon's added VmRSS."""
    count = options.sessions
    say(f"== sse_memory: {count} concurrent idle legacy SSE sessions in one twistd process ==")
    raise_fd_limit(2 * count + 256)
    daemon = ProxyDaemon.for_benchmark(options, "sse_memory")
    streams: list[EventStream] = []
    try:
        await daemon.start()
        token = await daemon.user_token("bench-sse")
        warmup = await _open_idle_session(daemon.base_url, token)
        warmup.close()
        await asyncio.sleep(SETTLE_SECONDS)
        before = daemon.rss_kib()
        gate = asyncio.Semaphore(OPENING_CONCURRENCY)

        async def open_one():
            async with gate:
                streams.append(await _open_idle_session(daemon.base_url, token))

        started = asyncio.get_running_loop().time()
        async with asyncio.TaskGroup() as group:  # one failure cancels the rest
            for _ in range(count):
                group.create_task(open_one())
        opened_in = asyncio.get_running_loop().time() - started
        await asyncio.sleep(SETTLE_SECONDS)
        after = daemon.rss_kib()
        added_mb = (after - before) / 1024
        per_session = (after - before) / count
        say(f"  daemon VmRSS before {before / 1024:.1f} MB, with {count} sessions {after / 1024:.1f} MB")
        say(f"  added {added_mb:.1f} MB = {per_session:.1f} KiB per session; opened in {opened_in:.1f} s")
        say(f"  ratio VmRSS with/without sessions {after / before:.2f}x; added/budget {added_mb / TARGET_MB:.2f}")
        return [
            Verdict(
                "sse_memory",
                added_mb <= TARGET_MB,
                f"{count} idle SSE sessions added {added_mb:.1f} MB ({per_session:.1f} KiB each; "
                f"target <= {TARGET_MB:.0f} MB)",
            )
        ]
    finally:
        for stream in streams:
            stream.close()
        await daemon.stop()
