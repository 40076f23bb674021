"""Target: one daemon under concurrent load, at 16, 64 and 256 connections, and at a given rate.

Debian's ``wrk`` sends stateless 2026-07-28 ``tools/call`` requests of
``evaluate_script(() => 1+1)`` with ``waitForStableDom: false`` (``bench/load.lua``), spread
round robin over `TABS` tabs: a page runs its calls one at a time, so one tab would measure
Chrome's queue, not the daemon. Its ``response()`` hook checks every answer (HTTP 200, a
JSON-RPC result, not ``isError``, the value 2). Beside each level, the same number of
``Runtime.evaluate("1+1")`` calls in flight over the same tabs' raw page WebSockets, from
this process, is the baseline: what the machine and Chrome do without the daemon.

At those levels each connection sends its next request as soon as its answer came: the
daemon runs flat out, and the figures are its capacity. Their latency then says how long the
generator's own queue is, not how the daemon serves (with N requests always in flight, the
mean latency is N divided by the rate, whatever the daemon does). So latency is judged in a
paced run: `PACED_CONNECTIONS` connections that together send `PACED_RATE` calls per second,
each at its planned time (sends that could not keep to the plan are counted as late).
"""

import asyncio
import json
import os
import shutil
import statistics
import time

import attrs

from bench.isolation import _Client, p99, reactor_waited
from bench.procs import Chromium, FixtureSite, ProxyDaemon, _stop_process
from bench.report import Verdict, say
from bench.wire import IO_TIMEOUT, CdpSocket, WireError

LEVELS = (16, 64, 256)
TABS = 16
#: With 64 connections: good answers per second, and the 99th percentile of their latency.
THROUGHPUT_TARGET = 1000.0
P99_TARGET_MS = 50.0
THROUGHPUT_LEVEL, ROBUSTNESS_LEVEL = 64, 256
#: The paced run: its connections, and the calls per second they send together (a little
#: above the target, so that a run that keeps to its plan meets the target with room).
PACED_CONNECTIONS = THROUGHPUT_LEVEL
PACED_RATE = 1.1 * THROUGHPUT_TARGET
#: wrk counts an answer slower than this as a timeout, an error.
WRK_TIMEOUT = 10
WARMUP_SECONDS = 3
SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "load.lua")
#: Requests one user may have in flight: well above the most connections, so that the daemon
#: never refuses a request of this one user for being one too many.
MAX_IN_FLIGHT = 4 * max(LEVELS)


class NotMeasurable(Exception):
    """wrk cannot be had: the targets are reported as not measured."""


class PipelinedCdp(CdpSocket):
    """A page WebSocket with many calls in flight: one reader hands each answer to its caller."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        super().__init__(reader, writer)
        self._waiting: dict[int, asyncio.Future] = {}
        self._reading: asyncio.Task | None = None

    async def call(self, method: str, params: dict | None = None) -> dict:
        if self._reading is None:
            self._reading = asyncio.create_task(self._read_answers())
        self._next_id += 1
        answer = self._waiting[self._next_id] = asyncio.get_running_loop().create_future()
        self._send_frame(0x1, json.dumps({"id": self._next_id, "method": method, "params": params or {}}).encode())
        message = await asyncio.wait_for(answer, IO_TIMEOUT)
        if "error" in message:
            raise WireError(f"{method}: {message['error']}")
        return message["result"]

    async def _read_answers(self) -> None:
        try:
            while True:
                message = json.loads(await self._read_message())
                answer = self._waiting.pop(message.get("id"), None)
                if answer is not None and not answer.done():
                    answer.set_result(message)
        except Exception as e:
            for answer in self._waiting.values():
                if not answer.done():
                    answer.set_exception(WireError(f"the page WebSocket broke: {e!r}"))

    def close(self) -> None:
        if self._reading is not None:
            self._reading.cancel()
        super().close()


@attrs.frozen
class Figures:
    """One side of one level: good answers per second, p50 and p99 latency in ms."""

    per_second: float
    p50: float
    p99: float

    def __str__(self) -> str:
        return f"{self.per_second:9.0f} calls/s   p50 {self.p50:8.3f} ms   p99 {self.p99:8.3f} ms"


@attrs.frozen
class WrkRun:
    """What ``load.lua`` counted in one wrk run."""

    connections: int
    sent: int
    answered: int
    wrong: int
    duration_us: int
    connect: int
    read: int
    write: int
    status: int
    timeout: int
    p50_us: float
    p99_us: float
    max_us: float
    #: Paced runs: sends that slipped from their planned time, and the longest slip.
    late: int = 0
    late_max_us: float = 0
    first_wrong: str = ""

    @property
    def good(self) -> int:
        return self.answered - self.wrong

    @property
    def seconds(self) -> float:
        return self.duration_us / 1e6

    @property
    def figures(self) -> Figures:
        return Figures(self.good / self.seconds, self.p50_us / 1000, self.p99_us / 1000)

    @property
    def errors(self) -> int:
        """Wrong answers (non-200 ones included), broken connections and timeouts."""
        return self.wrong + self.connect + self.read + self.write + self.timeout

    @property
    def lost(self) -> int:
        """Requests written that got no answer, beyond the one each connection had in flight
        when wrk stopped (wrk writes the next request as soon as an answer arrives)."""
        return max(0, self.sent - self.answered - self.connections)

    def line(self) -> str:
        return (
            f"{self.sent} sent, {self.answered} answered, {self.wrong} wrong, errors: connect {self.connect}, "
            f"read {self.read}, write {self.write}, timeout {self.timeout}; lost {self.lost}; "
            f"max {self.max_us / 1000:.1f} ms"
        ) + (f"; {self.late} sent late, by up to {self.late_max_us / 1000:.1f} ms" if self.late else "")


async def _find_wrk() -> str:
    """wrk's path, installing Debian's package first when it is missing and this runs as root."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() != 0:
        raise NotMeasurable("wrk is not installed, and installing it (apt-get install wrk) needs root")
    say("  wrk is missing: installing Debian's package")
    output = await _apt_get("install", "wrk")
    if not shutil.which("wrk"):  # the package lists may be missing or stale
        await _apt_get("update")
        output = await _apt_get("install", "wrk")
    found = shutil.which("wrk")
    if not found:
        raise NotMeasurable(f"apt-get install wrk did not install it: {output[-300:]!r}")
    return found


async def _run(*command: str, env: dict[str, str] | None = None) -> tuple[int | None, str]:
    """Run ``command`` to its end, stopped by its PID if the benchmark is cut off: its exit
    code and output."""
    process = await asyncio.create_subprocess_exec(
        *command, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, env=env,
    )  # fmt: skip
    try:
        output, _ = await process.communicate()
    finally:
        await _stop_process(process)
    return process.returncode, output.decode(errors="replace")


async def _apt_get(*arguments: str) -> str:
    """Run ``apt-get -y -q ARGUMENTS`` without questions; its output."""
    _, output = await _run("apt-get", "-y", "-q", *arguments, env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    return output


async def _wrk(
    wrk: str, daemon: ProxyDaemon, token: str, pages: list[int], connections: int, seconds: int, rate: float = 0
) -> WrkRun:
    """One wrk run of ``connections`` connections for ``seconds`` (sending ``rate`` calls per
    second together, or as fast as answers come when 0); what load.lua counted."""
    code, output = await _run(
        wrk, "-t1", f"-c{connections}", f"-d{seconds}s", f"--timeout={WRK_TIMEOUT}s", "-s", SCRIPT,
        f"{daemon.base_url}/mcp", "--", token, ",".join(map(str, pages)),
        env=dict(os.environ, LOAD_RATE=f"{rate:g}"),
    )  # fmt: skip
    lines = {line.partition(" ")[0]: line.partition(" ")[2] for line in output.splitlines()}
    if "load-result" not in lines:
        raise WireError(f"wrk exited with code {code} and no result: {output[-1000:]}")
    counted = json.loads(lines["load-result"])
    return WrkRun(connections=connections, first_wrong=lines.get("load-bad", ""), **counted)


async def _raw_cdp(sockets: list[PipelinedCdp], connections: int, seconds: float, rate: float = 0) -> Figures:
    """``connections`` loops of ``Runtime.evaluate("1+1")`` spread over ``sockets`` for
    ``seconds``, sending ``rate`` calls per second together (as load.lua paces), or as fast
    as answers come when 0."""
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    next_send = time.perf_counter()

    async def loop(cdp: PipelinedCdp) -> None:
        nonlocal next_send
        while time.perf_counter() < deadline:
            if rate:
                now = time.perf_counter()
                if now - next_send > 1 / rate:  # nobody was free at next_send: start again from now
                    next_send = now
                planned, next_send = next_send, next_send + 1 / rate
                await asyncio.sleep(max(0.0, planned - now))
            started = time.perf_counter()
            answer = await cdp.call("Runtime.evaluate", {"expression": "1+1", "returnByValue": True})
            latencies.append((time.perf_counter() - started) * 1000)
            if answer["result"].get("value") != 2:
                raise WireError(f"Runtime.evaluate did not return 2: {answer!r}")

    begin = time.perf_counter()
    await asyncio.gather(*(loop(sockets[i % len(sockets)]) for i in range(connections)))
    return Figures(len(latencies) / (time.perf_counter() - begin), statistics.median(latencies), p99(latencies))


async def run(options) -> list[Verdict]:
    """Measure each level through mcproxy with wrk and over raw CDP, and judge 64 and 256."""
    seconds = options.load_seconds
    say(
        f"== load: evaluate_script through one daemon under wrk at {', '.join(map(str, LEVELS))} connections "
        f"flat out, then {PACED_CONNECTIONS} sending {PACED_RATE:.0f} calls/s ({seconds} s each), "
        "vs raw CDP Runtime.evaluate =="
    )
    try:
        wrk = await _find_wrk()
    except NotMeasurable as e:
        return [
            Verdict(f"load/{level}", False, f"could not measure: {e}") for level in (THROUGHPUT_LEVEL, ROBUSTNESS_LEVEL)
        ]
    # The daemon gets a core of its own; wrk, Chromium and this process (the raw CDP client)
    # share the others, so the daemon's figures are its own, not the scheduler's.
    cores = sorted(os.sched_getaffinity(0))
    daemon_cores, other_cores = ({cores[0]}, set(cores[1:])) if len(cores) > 1 else (None, None)
    site, chromium = FixtureSite(), Chromium(cpus=other_cores)
    daemon = ProxyDaemon.for_benchmark(options, "load")
    daemon.cpus = daemon_cores
    daemon.extra_config = f"[session]\nmax_in_flight = {MAX_IN_FLIGHT}\n"
    if other_cores:
        os.sched_setaffinity(0, other_cores)  # this process, and wrk, which inherits it
    say(
        f"  daemon on core(s) {sorted(daemon_cores or cores)}; "
        f"wrk, Chromium and the raw CDP client on {sorted(other_cores or cores)}"
    )
    client: _Client | None = None
    sockets: list[PipelinedCdp] = []
    try:
        await asyncio.gather(site.start(), chromium.start(), daemon.start())
        token = await daemon.user_token("bench-load", chromium.browser_url)
        client = _Client(daemon.base_url, token)
        pages = []
        for tab in range(TABS):
            url = site.url(f"load-{tab}")
            pages.append(await client.open_page(url))
            sockets.append(await PipelinedCdp.open(await chromium.page_socket_url(url)))
        warmup = await _wrk(wrk, daemon, token, pages, THROUGHPUT_LEVEL, WARMUP_SECONDS)
        say(f"  warm-up ({WARMUP_SECONDS} s at {THROUGHPUT_LEVEL} connections): {warmup.line()}")
        runs = {}
        for connections, rate in [(level, 0.0) for level in LEVELS] + [(PACED_CONNECTIONS, PACED_RATE)]:
            raw = await _raw_cdp(sockets, connections, seconds, rate)
            cpu, waited = daemon.cpu_seconds(), reactor_waited(daemon.pid)
            runs[connections, rate] = measured = await _wrk(wrk, daemon, token, pages, connections, seconds, rate)
            _report(raw, measured, rate, daemon.cpu_seconds() - cpu, reactor_waited(daemon.pid) - waited)
        return _verdicts(runs)
    finally:
        if client is not None:
            client.close()
        for cdp in sockets:
            cdp.close()
        await daemon.stop()
        await chromium.stop()
        await site.stop()
        os.sched_setaffinity(0, cores)


def _report(raw: Figures, measured: WrkRun, rate: float, cpu: float, waited: float) -> None:
    """Print one level: both sides, their ratio, what wrk counted, and the daemon's CPU
    (``cpu`` seconds used, ``waited`` seconds its reactor was runnable but not running)."""
    through = measured.figures
    pace = f", sending {rate:.0f} calls/s together" if rate else " (flat out: capacity)"
    say(f"  {measured.connections} connections over {TABS} tabs{pace}:")
    say(f"    raw CDP Runtime.evaluate     {raw}")
    say(f"    mcproxy evaluate_script      {through}")
    say(
        f"    ratio mcproxy/CDP: calls/s {through.per_second / raw.per_second:.3f}x, "
        f"p50 {through.p50 / raw.p50:.1f}x, p99 {through.p99 / raw.p99:.1f}x"
    )
    say(f"    wrk: {measured.line()}")
    if measured.first_wrong:
        say(f"    first wrong answer: {measured.first_wrong}")
    ceiling = f"at most {measured.good / cpu:.0f} calls/s on a core of its own" if cpu else "no CPU time measured"
    say(
        f"    daemon CPU per good call {cpu * 1000 / max(measured.good, 1):.2f} ms ({ceiling}), "
        f"{cpu / measured.seconds:.0%} of a core; its reactor waited for a CPU {waited / measured.seconds:.0%} "
        "of the time"
    )


def _verdicts(runs: dict[tuple[int, float], WrkRun]) -> list[Verdict]:
    """load/64 on the paced run (its capacity flat out is printed beside it), load/256 on the
    flat-out run of 256 connections."""
    paced, flat, heavy = runs[PACED_CONNECTIONS, PACED_RATE], runs[THROUGHPUT_LEVEL, 0.0], runs[ROBUSTNESS_LEVEL, 0.0]
    figures = paced.figures
    return [
        Verdict(
            f"load/{THROUGHPUT_LEVEL}",
            figures.per_second >= THROUGHPUT_TARGET and figures.p99 <= P99_TARGET_MS and paced.errors == 0,
            f"{figures.per_second:.0f} good calls/s (target >= {THROUGHPUT_TARGET:g}) at p99 {figures.p99:.1f} ms "
            f"(target <= {P99_TARGET_MS:g} ms) over {PACED_CONNECTIONS} connections, {paced.errors} error(s); "
            f"flat out {flat.figures.per_second:.0f} calls/s",
        ),
        Verdict(
            f"load/{ROBUSTNESS_LEVEL}",
            heavy.errors == 0 and heavy.lost == 0,
            f"{heavy.errors} error(s) and {heavy.lost} lost answer(s) in {heavy.sent} calls (target: none)",
        ),
    ]
