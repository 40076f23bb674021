"""The processes a benchmark runs: headless Chromium, a ``twistd -n mcproxy`` daemon, a fixture site.

Each is started with a fresh temporary directory and stopped by its own PID (TERM, then KILL).
"""

import asyncio
import json
import os
import shutil
import signal
import sys
import tempfile

import mcproxy
from bench.wire import HttpConnection, WireError
from mcproxy.testing.chromium import FLAGS, find_chrome
from mcproxy.testing.process import free_port

START_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB, from /proc/PID/status."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time ``pid`` has used so far, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _stop_process(process: asyncio.subprocess.Process) -> None:
    """TERM the process by its PID, KILL it if it lingers, and reap it."""
    if process.returncode is not None:
        return
    os.kill(process.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
    except TimeoutError:
        os.kill(process.pid, signal.SIGKILL)
        await asyncio.wait_for(process.wait(), STOP_TIMEOUT)


async def _get_json(base_url: str, path: str, headers: dict | None = None):
    """One GET on a throw-away connection: ``(status, parsed body or None)``."""
    connection = await HttpConnection.open(base_url)
    try:
        status, _, body = await connection.request("GET", path, {"Connection": "close", **(headers or {})})
    finally:
        connection.close()
    return status, (json.loads(body) if body else None)


async def _wait_until(check, process: asyncio.subprocess.Process, what: str, log_path: str | None = None):
    """Poll ``check()`` until it returns a truthy value; fail early if ``process`` dies."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_TIMEOUT
    while True:
        if process.returncode is not None:
            raise RuntimeError(f"{what} exited with code {process.returncode} at start{_tail(log_path)}")
        try:
            found = await check()
        except (TimeoutError, OSError, WireError, ValueError):
            found = None
        if found:
            return found
        if loop.time() > deadline:
            raise RuntimeError(f"{what} did not come up within {START_TIMEOUT:.0f} s{_tail(log_path)}")
        await asyncio.sleep(0.1)


def _tail(log_path: str | None) -> str:
    if not log_path or not os.path.exists(log_path):
        return ""
    with open(log_path, errors="replace") as f:
        return ":\n" + f.read()[-3000:]


def _pinned(cpus: set[int] | None):
    """A ``preexec_fn`` that keeps a child (and its children) on ``cpus`` (None: anywhere)."""
    return (lambda: os.sched_setaffinity(0, cpus)) if cpus else None


class Chromium:
    """Debian's headless Chromium with remote debugging on a free loopback port.

    ``cpus`` keeps it and its renderers on those cores: in production each browser runs on
    its user's own machine, not on the cores the daemon is measured on.
    """

    def __init__(self, cpus: set[int] | None = None):
        self.profile = tempfile.mkdtemp(prefix="mcproxy-bench-chrome-")
        self.port = free_port()
        self.cpus = cpus
        self.process: asyncio.subprocess.Process | None = None

    @property
    def browser_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> "Chromium":
        self.process = await asyncio.create_subprocess_exec(
            find_chrome(),
            *FLAGS,
            f"--remote-debugging-port={self.port}",
            f"--user-data-dir={self.profile}",
            "about:blank",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            preexec_fn=_pinned(self.cpus),
        )

        async def ready():
            status, body = await _get_json(self.browser_url, "/json/version")
            return status == 200 and body.get("webSocketDebuggerUrl")

        await _wait_until(ready, self.process, "Chromium")
        return self

    async def browser_socket_url(self) -> str:
        """The browser-level WebSocket (what a pool connects to)."""
        _, version = await _get_json(self.browser_url, "/json/version")
        return version["webSocketDebuggerUrl"]

    async def page_socket_url(self, page_url: str) -> str:
        """The page-level WebSocket of the tab showing ``page_url``."""
        _, targets = await _get_json(self.browser_url, "/json/list")
        for target in targets or ():
            if target.get("type") == "page" and target.get("url") == page_url:
                return target["webSocketDebuggerUrl"]
        raise RuntimeError(f"Chromium has no tab showing {page_url}")

    async def stop(self) -> None:
        if self.process is not None:
            await _stop_process(self.process)
        shutil.rmtree(self.profile, ignore_errors=True)


class ProxyDaemon:
    """``twistd -n mcproxy`` as a separate process with its own temporary config and data dir."""

    def __init__(self, store: str = "sqlite", profile: str | None = None, cpus: set[int] | None = None):
        #: ``store``: "sqlite", "memory", or a store URL (``redis://...``).
        self.root = tempfile.mkdtemp(prefix="mcproxy-bench-")
        #: The cores the daemon may run on (None: any).
        self.cpus = cpus
        self.data_dir = os.path.join(self.root, "var")
        self.log_path = os.path.join(self.root, "twistd.log")
        self.port = free_port()
        self.store = store
        #: Where twistd writes cProfile stats of the daemon when it stops (None: no profiling).
        self.profile = profile
        #: What runs twistd (its path and arguments follow): nothing, or a wrapper such as
        #: `bench.stages`.
        self.launcher: list[str] = []
        self.process: asyncio.subprocess.Process | None = None
        self.admin_token = ""
        #: More TOML one benchmark needs, in sections `_write_config` does not write.
        self.extra_config = ""

    @classmethod
    def for_benchmark(cls, options, benchmark: str) -> "ProxyDaemon":
        """A daemon set up from the command line (``--store``, ``--profile-daemon``)."""
        prefix = options.profile_daemon
        return cls(store=options.store, profile=f"{os.path.abspath(prefix)}-{benchmark}.pstats" if prefix else None)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def _write_config(self) -> str:
        store_url = {"memory": "memory:", "sqlite": "sqlite:" + os.path.join(self.data_dir, "mcproxy.sqlite3")}.get(
            self.store, self.store
        )
        path = os.path.join(self.root, "mcproxy.toml")
        with open(path, "w") as f:
            f.write(
                "[server]\n"
                f'listen = ["tcp:{self.port}:interface=127.0.0.1"]\n'
                f"data_dir = {json.dumps(self.data_dir)}\n"
                # Every benchmark client comes from 127.0.0.1 (sse_memory holds ten thousand streams).
                "max_connections_per_address = 0\n"
                "[store]\n"
                f"url = {json.dumps(store_url)}\n"
                "[audit]\n"
                f"path = {json.dumps(os.path.join(self.data_dir, 'audit.jsonl'))}\n"
                # One benchmark user sends thousands of requests in seconds: lift the rate limits.
                "[ratelimit]\nuser_rate = 1000000.0\nuser_burst = 1000000\n"
                "address_rate = 1000000.0\naddress_burst = 1000000\n"
                # ... and the sessions one user and the process may hold (sse_memory opens ten thousand).
                "[limits]\nmax_sessions_per_user = 0\nmax_sessions = 0\n"
                f"{self.extra_config}"
            )
        return path

    async def start(self) -> "ProxyDaemon":
        config = self._write_config()
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        # An editable install does not expose twisted/plugins/mcproxy_plugin.py: put the
        # checkout that holds the imported mcproxy package on the path so twistd finds it.
        checkout = os.path.dirname(os.path.dirname(os.path.abspath(mcproxy.__file__)))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [checkout, os.environ.get("PYTHONPATH")])))
        profiling = ["--profile", self.profile, "--profiler", "cprofile", "--savestats"] if self.profile else []
        with open(self.log_path, "wb") as log:
            self.process = await asyncio.create_subprocess_exec(
                *self.launcher, twistd, "--nodaemon", "--pidfile=", *profiling, "mcproxy", "--config", config,
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=asyncio.subprocess.STDOUT,
                cwd=self.root, env=env, preexec_fn=_pinned(self.cpus),
            )  # fmt: skip

        async def healthy():
            status, _ = await _get_json(self.base_url, "/health")
            return status == 200

        await _wait_until(healthy, self.process, "twistd mcproxy", self.log_path)
        token_file = os.path.join(self.data_dir, "admin-token")
        if not self.admin_token:  # a daemon sharing a store with another has the other's
            with open(token_file) as f:
                self.admin_token = f.read().strip()
        return self

    async def api(self, method: str, path: str, body: dict, token: str | None = None) -> dict:
        """One admin-API call that must succeed; returns the JSON answer."""
        connection = await HttpConnection.open(self.base_url)
        try:
            status, _, answer = await connection.request(
                method,
                path,
                {"Authorization": f"Bearer {token or self.admin_token}", "Content-Type": "application/json"},
                json.dumps(body).encode(),
            )
        finally:
            connection.close()
        if status >= 300:
            raise RuntimeError(f"{method} {path} answered {status}: {answer[:500]!r}")
        return json.loads(answer)

    async def user_token(self, user_id: str, browser_url: str | None = None) -> str:
        """A token for ``user_id`` (created with the admin token), registering a browser if given."""
        token = (await self.api("POST", "/api/tokens", {"userId": user_id, "permissions": ["tools:*", "register"]}))[
            "token"
        ]
        if browser_url:
            await self.api("POST", "/api/register", {"userId": user_id, "browserURL": browser_url}, token)
        return token

    def rss_kib(self) -> int:
        return rss_kib(self.pid)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    async def stop(self) -> None:
        if self.process is not None:
            await _stop_process(self.process)
        shutil.rmtree(self.root, ignore_errors=True)


FORM_PAGE = b"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Bench form</title></head>
<body>
<label for="name">Name</label> <input id="name" type="text">
<button type="button" onclick="document.getElementById('out').textContent = 'clicked ' +
  document.getElementById('name').value">Submit</button>
<p id="out">not clicked</p>
</body></html>
"""


class FixtureSite:
    """A loopback HTTP server answering every GET with the trivial form page."""

    def __init__(self):
        self.server: asyncio.base_events.Server | None = None
        self.port = 0
        self._writers: set[asyncio.StreamWriter] = set()

    def url(self, tag: str) -> str:
        """A distinct URL per page, so each tab can be found again by its URL."""
        return f"http://127.0.0.1:{self.port}/form.html?{tag}"

    async def start(self) -> "FixtureSite":
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
                found = head.startswith(b"GET /form.html")
                body = FORM_PAGE if found else b"not found"
                writer.write(
                    b"HTTP/1.1 %d %s\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: %d\r\n\r\n%s"
                    % (200 if found else 404, b"OK" if found else b"Not Found", len(body), body)
                )
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        except asyncio.CancelledError:
            pass  # the benchmark is over and the loop is cancelling idle keep-alive connections
        finally:
            self._writers.discard(writer)
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for writer in list(self._writers):
                writer.close()
            await self.server.wait_closed()
