"""Where the daemon's CPU goes per call, by stage: ``python -m bench latency --stages``.

The daemon runs under this module (``python -m bench.stages STATS twistd ...``), which
installs a cProfile on the reactor thread's CPU clock, started by SIGUSR1 and stopped and
saved to STATS by SIGUSR2, so that only the timed calls are profiled (no start-up, no
wall time spent waiting). `breakdown` then adds each function's self time to the stage
its module belongs to; a built-in (a socket send, the JSON encoder) counts for the stage
of whoever called it.
"""

import cProfile
import pstats
import signal
import sys
import time

#: Stages in the order a call meets them, each with the path fragments of its code; the
#: first that matches wins, and what none names is counted as "reactor and other".
STAGES = (
    ("HTTP parsing", ("twisted/web/", "twisted/protocols/basic.py", "mcproxy/web/site.py")),
    (
        "routing/auth",
        (
            "mcproxy/web/routes.py",
            "mcproxy/web/origins.py",
            "mcproxy/web/network.py",
            "mcproxy/web/http.py",
            "mcproxy/auth/",
        ),
    ),
    (
        "JSON-RPC/MCP",
        (
            "mcproxy/mcp/",
            "mcproxy/web/streamable.py",
            "mcproxy/web/legacy.py",
            "mcproxy/web/mcp_common.py",
            "mcproxy/web/transports.py",
            "mcproxy/web/sse.py",
            "mcp_types/",
            "pydantic",
            "json/",
            "mcproxy/wirejson.py",
        ),
    ),
    ("Deferreds and coroutines", ("twisted/internet/defer.py",)),
    ("tool registry + tool", ("mcproxy/tools/", "mcproxy/calls.py")),
    ("CDP client", ("mcproxy/browser/", "autobahn/", "txaio/")),
    (
        "logging/audit/metrics",
        (
            "mcproxy/logs.py",
            "mcproxy/audit.py",
            "mcproxy/metrics.py",
            "mcproxy/activity.py",
            "mcproxy/plugins.py",
            "twisted/logger/",
            "prometheus_client/",
        ),
    ),
)
OTHER = "reactor and other"


def stage_of(filename: str) -> str | None:
    """The stage of code in ``filename``; None for a built-in (``~``)."""
    if filename == "~":
        return None
    for name, fragments in STAGES:
        if any(fragment in filename for fragment in fragments):
            return name
    return OTHER


def breakdown(path: str) -> dict[str, float]:
    """Seconds of self time per stage in the saved stats at ``path``."""
    totals = dict.fromkeys([name for name, _ in STAGES] + [OTHER], 0.0)
    for (filename, _, _), (_, _, own, _, callers) in pstats.Stats(path).stats.items():  # type: ignore[attr-defined]
        stage = stage_of(filename)
        if stage is not None:
            totals[stage] += own
            continue
        for (caller_file, _, _), (_, _, from_caller, _) in callers.items():
            totals[stage_of(caller_file) or OTHER] += from_caller
    return totals


def _run_daemon(stats_path: str, argv: list[str]) -> None:
    """Run twistd with ``argv``; profile between SIGUSR1 and SIGUSR2."""
    from twisted.scripts.twistd import run

    profiler = cProfile.Profile(time.thread_time)

    def stop(*_):
        profiler.disable()
        profiler.dump_stats(stats_path)

    signal.signal(signal.SIGUSR1, lambda *_: profiler.enable())
    signal.signal(signal.SIGUSR2, stop)
    sys.argv = argv
    run()


if __name__ == "__main__":
    _run_daemon(sys.argv[1], sys.argv[2:])
