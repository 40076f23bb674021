"""Targets: one user's heaviest allowed calls leave another user's ``list_pages`` p99 under
100 ms; one user's stream of 5 MB screenshots leaves it at 50 ms or less.

One daemon, two users, each with their own headless Chromium. User B calls ``list_pages``
(stateless 2026-07-28 ``tools/call``) ``--isolation-calls`` times spread evenly over
``--isolation-seconds``, once while user A is idle, then once for each loaded phase
(``--isolation-phases``) while user A runs, for the same time and each in its own tab and
connection, the phase's calls back to back. Meanwhile a probe asks ``/health`` every
`HEALTH_PAUSE`: its longest wait bounds the daemon's longest reactor turn.

The ``heavy`` phase runs the heaviest input of each kind the daemon accepts. The sizes come
from mcproxy itself (the tools' input schemas and the config defaults the benchmark daemon
runs with), so they follow the limits as they change:

- ``type_text`` of as many characters as its ``text`` may have;
- ``fill_form`` of as many fields as ``elements`` may have, each value as long as fits in
  ``server.max_body_bytes``;
- ``take_snapshot`` of a page of `DOM_NODES` DOM nodes;
- ``take_screenshot`` with ``fullPage`` of a page `PAGE_HEIGHT` pixels tall;
- ``evaluate_script`` returning a string just under ``browser.max_message_bytes``, the
  biggest answer the daemon takes from a browser;
- ``list_console_messages`` (all of them) on a page that logs as fast as it can.

The ``screenshots`` phase streams full-page screenshots of a page whose PNG is about
`SCREENSHOT_BYTES`: each is too big to return inline, so the daemon saves it and user A
reads it back with ``resources/read`` (base64 of megabytes in, and out again).

A heavy call the daemon declines (an ``isError`` answer, or HTTP 413/429) counts as refused,
anything else that is not an answer as failed. User A gives up on a call after a third of
the phase (the daemon then cancels it: that path is measured too), and calls still running
when the phase ends are cut off likewise. Every one of user B's calls must succeed.
"""

import asyncio
import base64
import collections
import json
import multiprocessing
import os
import re
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor

import attrs

from bench.lean_mcp import LeanStreamable
from bench.procs import Chromium, ProxyDaemon
from bench.report import Summary, Verdict, say
from bench.wire import CdpSocket, HttpConnection, WireError
from mcproxy.config import BrowserConfig, ServerConfig, ToolsConfig
from mcproxy.mcp.envelope import NAME_BEARING
from mcproxy.tools.registry import default_tools

TARGET_MS = 100.0
SCREENSHOTS_TARGET_MS = 50.0
#: Bytes of the PNG of the page the screenshots phase shoots whole.
SCREENSHOT_BYTES = 5_000_000
#: Nodes (elements and text) of the page take_snapshot reads: the issue's "huge DOM".
DOM_NODES = 50_000
#: CSS pixels of the page take_screenshot captures whole.
PAGE_HEIGHT = 50_000
#: The console flood: messages logged at each timer tick, and the characters of each.
FLOOD_PER_TICK = 200
FLOOD_LENGTH = 1_000
#: Room left in a request body for the JSON-RPC envelope around fill_form's values, and in a
#: CDP message around evaluate_script's result.
ENVELOPE_ROOM = 1024
MESSAGE_ROOM = 64 * 1024
FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pages", "heavy.html")
#: Bounds on each of user B's calls, and on how far a phase may overrun when they are slow.
CALL_TIMEOUT = 10.0
PHASE_GRACE = 10.0
#: How long the daemon may take to catch up with cancelled work before it is stopped.
CATCH_UP_TIMEOUT = 15.0
#: Share of a phase user A waits for one heavy call before giving up on it.
PATIENCE = 1 / 3
#: Pause after one of user A's calls fails without an answer, before the next.
RETRY_PAUSE = 0.1
_REFUSED_STATUS = re.compile(r" answered (413|429)\b")
_REPEAT = re.compile(r"repeat\((\d+)\)")
#: Pause between the ``/health`` probe's requests.
HEALTH_PAUSE = 0.005
#: What a broken exchange raises (TimeoutError is an OSError, IncompleteReadError an EOFError).
BROKEN = (WireError, OSError, EOFError, ValueError)


class LeanStateless(LeanStreamable):
    """Stateless 2026-07-28 requests on one persistent connection to ``/mcp``: no handshake and
    no session; each request carries its version in ``_meta`` and its routing headers."""

    protocol_version = "2026-07-28"

    @classmethod
    async def open(cls, base_url: str, token: str) -> "LeanStateless":
        return cls(await HttpConnection.open(base_url), token)

    async def call(self, method: str, params: dict) -> dict:
        meta = {
            "io.modelcontextprotocol/protocolVersion": self.protocol_version,
            "io.modelcontextprotocol/clientCapabilities": {},
        }
        self.headers.update({"MCP-Protocol-Version": self.protocol_version, "Mcp-Method": method})
        self.headers.pop("Mcp-Name", None)
        if NAME_BEARING.get(method) in params:
            self.headers["Mcp-Name"] = params[NAME_BEARING[method]]
        return await super().call(method, {**params, "_meta": meta})


def p99(samples: list[float]) -> float:
    """99th percentile (nearest rank)."""
    ordered = sorted(samples)
    return ordered[max(0, -(-99 * len(ordered) // 100) - 1)]


def _text(result: dict) -> str:
    return "\n".join(block.get("text", "") for block in result.get("content", ()))


def _answer_chars(result: dict) -> int:
    """Characters of text and base64 data in a tool result or a ``resources/read`` result."""
    blocks = [*result.get("content", ()), *result.get("contents", ())]
    return sum(len(block.get("text", "")) + len(block.get("data", "")) + len(block.get("blob", "")) for block in blocks)


def _reason(text: str) -> str:
    return text.strip().splitlines()[0][:160] if text.strip() else "(no message)"


@attrs.frozen
class Limits:
    """The heaviest inputs the daemon accepts, read from mcproxy's code."""

    text_chars: int
    form_fields: int
    form_value_chars: int
    result_chars: int

    @classmethod
    def from_code(cls) -> "Limits":
        """Read the tools' input schemas and the config defaults (the benchmark daemon's)."""
        schemas = {tool.name: tool.input_schema for tool in default_tools(ToolsConfig())}
        text = _bound(schemas["type_text"]["properties"]["text"], "maxLength", "type_text's text")
        elements = schemas["fill_form"]["properties"]["elements"]
        fields = _bound(elements, "maxItems", "fill_form's elements")
        value = _bound(elements["items"]["properties"]["value"], "maxLength", "fill_form's values")
        empty = json.dumps(_fill_form_arguments(["1_1"] * fields, 0))
        share = (ServerConfig().max_body_bytes - ENVELOPE_ROOM - len(empty)) // fields
        return cls(
            text_chars=text,
            form_fields=fields,
            form_value_chars=min(value, share),
            result_chars=BrowserConfig().max_message_bytes - MESSAGE_ROOM,
        )


def _bound(schema: dict, key: str, what: str) -> int:
    if key not in schema:
        raise RuntimeError(f"{what} declares no {key}: the benchmark takes the heaviest input from the limits")
    return schema[key]


def _halve_result(arguments: dict) -> dict:
    """evaluate_script's arguments for a result half as long: on a busy machine Chrome may
    not build the longest one within ``tools.navigation_timeout`` or user A's patience, and
    then the daemon's path for big answers would never be measured."""
    halved = _REPEAT.sub(lambda m: f"repeat({int(m[1]) // 2})", arguments["function"])
    return {**arguments, "function": halved}


def _fill_form_arguments(uids: list[str], chars: int) -> dict:
    return {"elements": [{"uid": uid, "value": "v" * chars} for uid in uids]}


@attrs.define
class HeavyLoad:
    """One of user A's heavy calls, repeated in its own tab over its own connection.

    ``setup`` is page JavaScript run once before the idle phase, ``start`` once when the
    loaded phase begins, ``before_each`` before every heavy call. ``prepare(snapshot)``
    makes the arguments from the prepared page's snapshot; ``shrink(arguments)`` makes
    lighter ones after a call that was refused or given up on. With ``read_links`` every
    resource the call links (a file it saved) is read back with ``resources/read``, as part
    of the call."""

    label: str
    tool: str
    arguments: dict = attrs.field(factory=dict)
    setup: str | None = None
    prepare: Callable[[str], dict] | None = None
    shrink: Callable[[dict], dict] | None = None
    start: str | None = None
    before_each: str | None = None
    read_links: bool = False
    page_id: int = 0
    completed_ms: list[float] = attrs.field(factory=list)
    largest_answer: int = 0
    refused: collections.Counter = attrs.field(factory=collections.Counter)
    failed: collections.Counter = attrs.field(factory=collections.Counter)
    cut_off: int = 0

    def line(self) -> str:
        """What became of this load's calls, with the reasons for refusals and failures."""
        done = f"{len(self.completed_ms)} done"
        if self.completed_ms:
            median = Summary.of(self.completed_ms).median / 1000
            done += f" (median {median:.1f} s, answer up to {self.largest_answer / 2**20:.1f} MiB)"
        refused, failed = sum(self.refused.values()), sum(self.failed.values())
        lines = [f"    {self.label}: {done}, {refused} refused, {failed} failed, {self.cut_off} cut off"]
        lines += [f"      refused {n}x: {reason}" for reason, n in self.refused.items()]
        lines += [f"      failed {n}x: {reason}" for reason, n in self.failed.items()]
        return "\n".join(lines)


def heavy_loads(limits: Limits) -> list[HeavyLoad]:
    """User A's six heavy calls."""
    return [
        HeavyLoad(
            f"type_text of {limits.text_chars:,} characters (the text's maxLength)",
            "type_text",
            {"text": "a" * limits.text_chars},
            before_each="() => emptyTextBox()",
        ),
        HeavyLoad(
            f"fill_form of {limits.form_fields} fields (maxItems) of {limits.form_value_chars:,} characters "
            "(what fits in server.max_body_bytes)",
            "fill_form",
            setup=f"() => buildForm({limits.form_fields})",
            prepare=lambda snapshot: _fill_form_arguments(
                re.findall(r"uid=(\S+) textbox", snapshot)[: limits.form_fields], limits.form_value_chars
            ),
        ),
        HeavyLoad(
            f"take_snapshot of {DOM_NODES:,} DOM nodes",
            "take_snapshot",
            setup=f"() => buildDom({DOM_NODES})",
        ),
        HeavyLoad(
            f"take_screenshot fullPage of a page {PAGE_HEIGHT:,} px tall",
            "take_screenshot",
            {"fullPage": True},
            setup=f"() => buildTall({PAGE_HEIGHT})",
        ),
        HeavyLoad(
            f"evaluate_script returning {limits.result_chars / 2**20:.1f} MiB (browser.max_message_bytes less room), "
            "halved after each refusal or give-up",
            "evaluate_script",
            {"function": f"() => 'x'.repeat({limits.result_chars})"},
            shrink=_halve_result,
        ),
        HeavyLoad(
            f"list_console_messages (all) while the page logs {FLOOD_PER_TICK} messages of "
            f"{FLOOD_LENGTH:,} characters at every timer tick",
            "list_console_messages",
            start=f"() => floodConsole({FLOOD_PER_TICK}, {FLOOD_LENGTH})",
        ),
    ]


def screenshot_stream() -> HeavyLoad:
    """User A's call in the screenshots phase."""
    return HeavyLoad(
        f"take_screenshot fullPage of a page whose PNG is about {SCREENSHOT_BYTES / 1e6:g} MB, "
        "then resources/read of the saved image",
        "take_screenshot",
        {"fullPage": True},
        setup=f"() => buildNoise({SCREENSHOT_BYTES})",
        read_links=True,
    )


@attrs.frozen
class LoadedPhase:
    """A phase in which user A runs ``loads``; its verdict, ``name``, holds user B's p99
    under ``target_ms`` (or to at most that, when ``inclusive``)."""

    name: str
    title: str
    loads: list[HeavyLoad]
    target_ms: float
    inclusive: bool = False

    def met(self, p99_ms: float) -> bool:
        return p99_ms <= self.target_ms if self.inclusive else p99_ms < self.target_ms

    @property
    def target(self) -> str:
        return f"{'<=' if self.inclusive else '<'} {self.target_ms:g} ms"


class _Client:
    """A user's stateless connection, opened again after a broken exchange."""

    def __init__(self, base_url: str, token: str):
        self.base_url = base_url
        self.token = token
        self.session: LeanStateless | None = None

    async def call(self, method: str, params: dict) -> dict:
        """One request; its result. Raises WireError (a JSON-RPC error too) and the like."""
        if self.session is None:
            self.session = await LeanStateless.open(self.base_url, self.token)
        try:
            return await self.session.call(method, params)
        except BaseException:
            self.close()
            raise

    async def call_tool(self, name: str, arguments: dict) -> dict:
        """One ``tools/call``; its result (``isError`` ones too)."""
        return await self.call("tools/call", {"name": name, "arguments": arguments})

    async def read_links(self, result: dict) -> list[dict]:
        """``resources/read`` of every resource ``result`` links, in order."""
        links = [block["uri"] for block in result.get("content", ()) if block.get("type") == "resource_link"]
        return [await self.call("resources/read", {"uri": uri}) for uri in links]

    async def tool(self, name: str, arguments: dict) -> str:
        """A call that must succeed; its text."""
        result = await self.call_tool(name, arguments)
        if result.get("isError"):
            raise WireError(f"{name} failed: {_text(result)[:500]}")
        return _text(result)

    async def evaluate(self, page_id: int, function: str) -> str:
        """Run page JavaScript that must succeed (set-up, not a measured call)."""
        return await self.tool("evaluate_script", {"pageId": page_id, "function": function, "waitForStableDom": False})

    async def open_page(self, url: str) -> int:
        """``new_page``; the id of the tab now showing ``url``."""
        await self.tool("new_page", {"url": url})
        result = await self.call_tool("list_pages", {})
        for page in result.get("structuredContent", {}).get("pages", ()):
            if page["url"] == url:
                return int(page["id"])
        raise WireError(f"list_pages does not show {url[:80]}: {_text(result)[:500]}")

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None


def _fixture_url(tag: str) -> str:
    """The fixture page as a data: URL (no web server needed), told apart by its fragment."""
    with open(FIXTURE, "rb") as f:
        return f"data:text/html;base64,{base64.b64encode(f.read()).decode('ascii')}#{tag}"


async def _set_up(load: HeavyLoad, client: _Client) -> None:
    """Open the load's tab and make it heavy (before the idle phase, so that one stays idle)."""
    load.page_id = await client.open_page(_fixture_url(load.tool))
    if load.setup:
        await client.evaluate(load.page_id, load.setup)
    if load.prepare:
        load.arguments = load.prepare(await client.tool("take_snapshot", {"pageId": load.page_id}))
    load.arguments = {**load.arguments, "pageId": load.page_id}


async def _hammer(load: HeavyLoad, client: _Client, patience: float) -> None:
    """Call the heavy tool back to back until cancelled, counting what becomes of each call.

    User A gives up on a call after ``patience`` seconds, as a client with a time limit
    would; the daemon then cancels it, and that path is measured too."""
    start = load.start
    while True:
        try:
            if start:
                await client.evaluate(load.page_id, start)
                start = None
            if load.before_each:
                await client.evaluate(load.page_id, load.before_each)
            started = time.perf_counter()
            result, answer_chars = await asyncio.wait_for(_heavy_call(load, client), patience)
        except (TimeoutError, asyncio.CancelledError) as e:
            load.cut_off += 1
            if isinstance(e, asyncio.CancelledError):
                raise
            if load.shrink:
                load.arguments = load.shrink(load.arguments)
            continue
        except BROKEN as e:
            reason = f"{type(e).__name__}: {str(e)[:160]}"
            (load.refused if _REFUSED_STATUS.search(str(e)) else load.failed)[reason] += 1
            await asyncio.sleep(RETRY_PAUSE)  # a call that fails at once must not spin
            continue
        text = _text(result)
        if not result.get("isError"):
            load.completed_ms.append((time.perf_counter() - started) * 1000)
            load.largest_answer = max(load.largest_answer, answer_chars)
        elif text.startswith("Internal error"):
            load.failed[_reason(text)] += 1
        else:
            load.refused[_reason(text)] += 1
            if load.shrink:
                load.arguments = load.shrink(load.arguments)


async def _heavy_call(load: HeavyLoad, client: _Client) -> tuple[dict, int]:
    """One of ``load``'s calls (with its ``resources/read``, if it reads links): its result and
    the characters of all its answers."""
    result = await client.call_tool(load.tool, load.arguments)
    chars = _answer_chars(result)
    if load.read_links and not result.get("isError"):
        chars += sum(_answer_chars(read) for read in await client.read_links(result))
    return result, chars


@attrs.frozen
class Phase:
    """What user B saw in one phase: list_pages timings (ms), the raw CDP round trips to B's
    Chrome made right after each (the ``Target.getTargets`` list_pages needs), and why calls
    failed; and the ``/health`` probe's timings (ms)."""

    list_pages: list[float]
    raw_cdp: list[float]
    failures: dict[str, int]
    health: list[float] = attrs.field(factory=list)


def probe(base_url: str, token: str, page_id: int, browser_socket: str, calls: int, seconds: float) -> Phase:
    """User B's ``list_pages``, ``calls`` times spread evenly over ``seconds``, each followed
    by a raw ``Target.getTargets`` on B's browser (what list_pages asks it): the same-run
    baseline for what the machine (the CPU, B's Chrome) adds without the daemon.

    It runs in a process of its own, so that the benchmark's own work for user A (reading
    and parsing answers of tens of MiB) never delays user B's loop."""
    return asyncio.run(_probe(_Client(base_url, token), page_id, browser_socket, calls, seconds))


async def _probe(client: _Client, page_id: int, browser_socket: str, calls: int, seconds: float) -> Phase:
    loop = asyncio.get_running_loop()
    phase = Phase([], [], collections.Counter())
    cdp = await CdpSocket.open(browser_socket)
    begin = loop.time()
    try:
        for i in range(calls):
            delay = begin + i * seconds / calls - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if loop.time() > begin + seconds + PHASE_GRACE:
                late = f"not made: earlier calls were so slow the phase ran {PHASE_GRACE:g} s over"
                phase.failures[late] += calls - i
                break
            started = time.perf_counter()
            try:
                result = await asyncio.wait_for(client.call_tool("list_pages", {}), CALL_TIMEOUT)
            except BROKEN as e:
                phase.failures[f"{type(e).__name__}: {str(e)[:160]}"] += 1
                continue
            elapsed = (time.perf_counter() - started) * 1000
            pages = result.get("structuredContent", {}).get("pages", ())
            if result.get("isError") or not any(page.get("id") == page_id for page in pages):
                phase.failures[_reason(_text(result)) if result.get("isError") else "B's page is not listed"] += 1
            else:
                phase.list_pages.append(elapsed)
            # The baseline must answer: without it the figures cannot be read (WireError ends the run).
            started = time.perf_counter()
            await asyncio.wait_for(cdp.call("Target.getTargets"), CALL_TIMEOUT)
            phase.raw_cdp.append((time.perf_counter() - started) * 1000)
    finally:
        client.close()
        cdp.close()
    return attrs.evolve(phase, failures=dict(phase.failures))


def health_probe(base_url: str, seconds: float) -> list[float]:
    """``GET /health`` on one connection for ``seconds``, `HEALTH_PAUSE` after each answer;
    how long each took (ms). A request that arrives while the reactor is busy waits for the
    end of its turn, so the longest of them bounds the longest turn from above (within a
    pause). It runs in a process of its own, beside `probe`'s."""
    return asyncio.run(_health_probe(base_url, seconds))


async def _health_probe(base_url: str, seconds: float) -> list[float]:
    connection = await HttpConnection.open(base_url)
    timings: list[float] = []
    end = time.perf_counter() + seconds
    try:
        while time.perf_counter() < end:
            started = time.perf_counter()
            status, _, _ = await connection.request("GET", "/health", {})
            if status != 200:
                raise WireError(f"/health answered {status}")
            timings.append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(HEALTH_PAUSE)
    finally:
        connection.close()
    return timings


def _row(samples: list[float]) -> str:
    return f"{Summary.of(samples)}   p99 {p99(samples):8.3f} ms" if samples else "no successful call"


def reactor_waited(pid: int) -> float:
    """Seconds the daemon's main thread (the reactor) has spent runnable but waiting for a
    CPU, from /proc/PID/schedstat: what a busy machine, not the daemon, adds."""
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[1]) / 1e9


async def _phase(name: str, daemon: ProxyDaemon, measure: Awaitable[Phase]) -> Phase:
    """Await ``measure`` (a `probe`) and print its rows, with the daemon's CPU use meanwhile
    and how long its reactor waited for a CPU."""
    cpu, waited, begin = daemon.cpu_seconds(), reactor_waited(daemon.pid), time.perf_counter()
    phase = await measure
    elapsed = time.perf_counter() - begin
    busy, waiting = (daemon.cpu_seconds() - cpu) / elapsed, (reactor_waited(daemon.pid) - waited) / elapsed
    say(f"  {name}: daemon CPU {busy:.0%} of a core; its reactor waited for a CPU {waiting:.0%} of the time")
    say(f"    list_pages through mcproxy       {_row(phase.list_pages)}")
    say(f"    raw CDP Target.getTargets (B's)  {_row(phase.raw_cdp)}")
    say(
        f"    /health probe                    {_row(phase.health)}   longest {max(phase.health, default=0):8.3f} ms "
        "(bounds the reactor's longest turn)"
    )
    for reason, n in phase.failures.items():
        say(f"    failed {n}x: {reason}")
    return phase


def loaded_phases(options) -> list[LoadedPhase]:
    """The loaded phases ``--isolation-phases`` and ``--isolation-loads`` select."""
    heavy = heavy_loads(Limits.from_code())
    if options.isolation_loads:
        heavy = [load for load in heavy if load.tool in options.isolation_loads.split(",")]
    phases = [
        LoadedPhase("isolation", "user A's heavy calls running", heavy, TARGET_MS),
        LoadedPhase(
            "isolation_screenshots",
            "user A streaming 5 MB screenshots",
            [screenshot_stream()],
            SCREENSHOTS_TARGET_MS,
            inclusive=True,
        ),
    ]
    chosen = options.isolation_phases.split(",")
    return [phase for phase in phases if phase.loads and PHASES[phase.name] in chosen]


#: The loaded phases by verdict, with their ``--isolation-phases`` names.
PHASES = {"isolation": "heavy", "isolation_screenshots": "screenshots"}


async def run(options) -> list[Verdict]:
    """Time user B's list_pages with user A idle, then in each loaded phase."""
    calls, seconds = options.isolation_calls, options.isolation_seconds
    phases = loaded_phases(options)
    say(f"== isolation: user B's list_pages ({calls} calls over {seconds:g} s per phase) while user A is busy ==")
    # Users' browsers run on their own machines; here the daemon gets a core of its own and
    # the browsers and both users' clients share the rest, so the figure measures the daemon,
    # not the scheduler (on a single core everything shares it).
    cores = sorted(os.sched_getaffinity(0))
    daemon_cores, other_cores = ({cores[0]}, set(cores[1:])) if len(cores) > 1 else (None, None)
    chromium_a, chromium_b = Chromium(cpus=other_cores), Chromium(cpus=other_cores)
    daemon = ProxyDaemon.for_benchmark(options, "isolation")
    daemon.cpus = daemon_cores
    if other_cores:
        os.sched_setaffinity(0, other_cores)  # the bench process, and the probers it spawns
    clients: dict[int, _Client] = {}
    hammers: list[asyncio.Task] = []
    # spawn, not fork: this process runs an event loop and (for user A) big buffers.
    probers = ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"))
    loop = asyncio.get_running_loop()
    try:
        await asyncio.gather(chromium_a.start(), chromium_b.start(), daemon.start())
        token_a = await daemon.user_token("bench-heavy", chromium_a.browser_url)
        token_b = await daemon.user_token("bench-lister", chromium_b.browser_url)
        lister = _Client(daemon.base_url, token_b)
        page_b = await lister.open_page(_fixture_url("user-b"))
        lister.close()
        socket_b = await chromium_b.browser_socket_url()
        for load in (load for phase in phases for load in phase.loads):
            clients[id(load)] = _Client(daemon.base_url, token_a)
            await _set_up(load, clients[id(load)])

        async def measure() -> Phase:
            listed, health = await asyncio.gather(
                loop.run_in_executor(probers, probe, daemon.base_url, token_b, page_b, socket_b, calls, seconds),
                loop.run_in_executor(probers, health_probe, daemon.base_url, seconds),
            )
            return attrs.evolve(listed, health=health)

        idle = await _phase("idle (user A's tabs open, no calls)", daemon, measure())
        verdicts = []
        for phase in phases:
            hammers = [
                asyncio.create_task(_hammer(load, clients[id(load)], seconds * PATIENCE)) for load in phase.loads
            ]
            loaded = await _phase(f"loaded ({phase.title})", daemon, measure())
            for task in hammers:
                task.cancel()
            await asyncio.wait(hammers, timeout=CATCH_UP_TIMEOUT)
            say("  user A's calls during that phase:")
            for load, task in zip(phase.loads, hammers, strict=True):
                say(load.line())
                if not task.done():
                    say(f"      still running {CATCH_UP_TIMEOUT:g} s after it was cancelled")
                elif not task.cancelled() and task.exception() is not None:
                    outcome = task.exception()
                    say(f"      stopped early: {type(outcome).__name__}: {str(outcome)[:300]}")
            verdicts.append(_verdict(phase, idle, loaded))
        return verdicts
    finally:
        for task in hammers:
            task.cancel()
        for client in clients.values():
            client.close()
        probers.shutdown(cancel_futures=True)
        await chromium_a.stop()
        await chromium_b.stop()
        await _caught_up(daemon)
        await daemon.stop()
        os.sched_setaffinity(0, cores)


async def _caught_up(daemon: ProxyDaemon) -> None:
    """Wait (a bounded time) until the daemon answers /health again: it may still be busy
    with user A's cancelled calls, and a daemon that does not stop within
    `bench.procs.STOP_TIMEOUT` is killed before it saves its profile."""
    if daemon.process is None or daemon.process.returncode is not None:
        return
    try:
        connection = await HttpConnection.open(daemon.base_url)
        try:
            await asyncio.wait_for(connection.request("GET", "/health", {"Connection": "close"}), CATCH_UP_TIMEOUT)
        finally:
            connection.close()
    except BROKEN:
        pass  # stopping it is all that is left to do


def _verdict(phase: LoadedPhase, idle: Phase, loaded: Phase) -> Verdict:
    """PASS when every one of user B's calls answered and the loaded p99 meets the phase's target."""
    failures = sum(idle.failures.values()) + sum(loaded.failures.values())
    if not (idle.list_pages and loaded.list_pages):
        return Verdict(phase.name, False, f"{failures} of user B's list_pages calls failed, no p99 to compare")
    idle_p99, loaded_p99 = p99(idle.list_pages), p99(loaded.list_pages)
    say(f"  list_pages p99 loaded / idle: {loaded_p99 / idle_p99:.2f}x")
    detail = (
        f"user B's list_pages p99 {loaded_p99:.1f} ms with {phase.title} "
        f"(idle {idle_p99:.1f} ms, {loaded_p99 / idle_p99:.2f}x; target {phase.target}); "
        f"longest /health wait {max(loaded.health, default=0):.1f} ms"
    )
    if failures:
        detail += f"; {failures} of user B's calls failed (all must succeed)"
    return Verdict(phase.name, phase.met(loaded_p99) and not failures, detail)
