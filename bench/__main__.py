"""``python -m bench [latency] [sse_memory] [soak] [tools] [console] [isolation] [load] [cluster] [tunnel]``: run
benchmarks.

Prints figures and verdicts; exits 0 only when every selected target passed.
"""

import argparse
import asyncio
import sys
import traceback

from bench import cluster, console, isolation, latency, load, network, soak, sse_memory, tools, tunnel
from bench.report import Verdict, say

BENCHMARKS = {
    "latency": latency.run,
    "sse_memory": sse_memory.run,
    "soak": soak.run,
    "tools": tools.run,
    "console": console.run,
    "network": network.run,
    "isolation": isolation.run,
    "load": load.run,
    "cluster": cluster.run,
    "tunnel": tunnel.run,
}
#: Hard bound per benchmark, so that the whole run stays within a few minutes...
TIME_LIMIT = 120.0
#: ...but for the ones that need longer: isolation sets up two browsers' heavy pages, runs three
#: phases and after each loaded one waits for the daemon to finish what user A left it; the
#: soak runs its short sessions for minutes; cluster waits out a lease after each of its kills.
TIME_LIMITS = {"isolation": 240.0, "load": 200.0, "soak": 600.0, "cluster": 480.0}
#: Sessions of the soak by default: about two minutes on a shared 2-core machine, which runs
#: 200 to 350 a second; 100,000 (``--soak-sessions 100000``) take five to eight, within its limit.
SOAK_SESSIONS = 30_000


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description="Run benchmarks; print figures and verdicts.")
    parser.add_argument("names", nargs="*", help=f"benchmarks to run: {', '.join(BENCHMARKS)} (default: all)")
    parser.add_argument("--store", choices=("sqlite", "memory"), default="sqlite", help="the daemon's store")
    parser.add_argument(
        "--profile-daemon", metavar="PREFIX", help="save each daemon's cProfile stats to PREFIX-<benchmark>.pstats"
    )
    parser.add_argument("--iterations", type=int, default=500, help="latency: timed calls per transport")
    parser.add_argument("--warmup", type=int, default=50, help="latency: untimed calls first")
    parser.add_argument(
        "--stages",
        action="store_true",
        help="latency: print the daemon's CPU per call by stage (runs it under cProfile)",
    )
    parser.add_argument("--sessions", type=int, default=10000, help="sse_memory: idle sessions to open")
    parser.add_argument(
        "--soak-sessions", type=int, default=SOAK_SESSIONS, help="soak: short sessions to run one after another"
    )
    parser.add_argument(
        "--rounds", type=int, default=20, help="tools: timed rounds (fill, click, fill_form, hover) per server"
    )
    parser.add_argument("--tool-warmup", type=int, default=3, help="tools: untimed rounds first")
    parser.add_argument(
        "--isolation-calls", type=int, default=400, help="isolation: list_pages calls per phase (idle, loaded)"
    )
    parser.add_argument(
        "--isolation-seconds", type=float, default=15.0, help="isolation: length of each phase, in seconds"
    )
    parser.add_argument(
        "--isolation-loads",
        metavar="TOOL,...",
        help="isolation: only user A's heavy calls of these tools (to find which one slows user B)",
    )
    parser.add_argument(
        "--isolation-phases",
        metavar="PHASE,...",
        default="heavy,screenshots",
        help="isolation: the loaded phases to run after the idle one (heavy, screenshots)",
    )
    parser.add_argument(
        "--load-seconds", type=int, default=10, help="load: seconds of each level, through mcproxy and over raw CDP"
    )
    parser.add_argument(
        "--cluster-kills", type=int, default=10, help="cluster: owners killed (kill -9) to time re-homing"
    )
    args = parser.parse_args(argv)
    if min(args.iterations, args.sessions, args.soak_sessions, args.rounds, args.isolation_calls) < 1:
        parser.error("--iterations, --sessions, --soak-sessions, --rounds and --isolation-calls must be at least 1")
    if not 0 < args.isolation_seconds <= TIME_LIMIT / 4:
        parser.error(
            f"--isolation-seconds must be above 0 and at most {TIME_LIMIT / 4:g}: "
            f"both phases and the set-up must fit in the {TIME_LIMIT:g} s limit"
        )
    phases = set(isolation.PHASES.values())
    if not set(args.isolation_phases.split(",")) <= phases:
        parser.error(f"--isolation-phases takes a comma-separated list of {', '.join(sorted(phases))}")
    if not 1 <= args.load_seconds <= 20:
        parser.error(
            f"--load-seconds must be 1 to 20: eight runs that long and the set-up must fit in the "
            f"{TIME_LIMITS['load']:g} s limit"
        )
    unknown = set(args.names) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    args.names = args.names or list(BENCHMARKS)
    return args


async def run_all(options: argparse.Namespace) -> list[Verdict]:
    verdicts = []
    for name in options.names:
        limit = TIME_LIMITS.get(name, TIME_LIMIT)
        try:
            verdicts += await asyncio.wait_for(BENCHMARKS[name](options), limit)
        except TimeoutError:
            verdicts.append(Verdict(name, False, f"did not finish within {limit:.0f} s"))
        except Exception as e:
            traceback.print_exc()
            verdicts.append(Verdict(name, False, f"could not run: {type(e).__name__}: {e}"))
        say()
    return verdicts


def main(argv: list[str]) -> int:
    verdicts = asyncio.run(run_all(parse_args(argv)))
    say("== verdicts ==")
    for verdict in verdicts:
        say(verdict.line())
    return 0 if all(v.passed for v in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
