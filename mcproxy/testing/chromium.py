"""A real headless Chromium for tests, started and stopped by its own PID.

``MCPROXY_TEST_CHROME`` names the binary; otherwise chromium, chromium-browser or
google-chrome from PATH. There is no silent skip: without a browser, `find_chrome`
raises.
"""

import os
import re
import shutil
import signal
import tempfile

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater

_LISTENING = re.compile(rb"DevTools listening on ws://[^:/]+:(\d+)/")

#: What a Chromium started by the proxy or mcproxy-connect needs in a test container: no
#: sandbox (tests run as root), no GPU, no big /dev/shm.
CONTAINER_ARGS = ("--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage")

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    # Background tabs must keep their timers: tests drive several tabs at once.
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
)


def find_chrome() -> str:
    """The Chrome binary to test with; RuntimeError (never a skip) when there is none."""
    given = os.environ.get("MCPROXY_TEST_CHROME")
    if given:
        return given
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    raise RuntimeError(
        "no Chrome/Chromium found: install Debian's chromium (apt-get install chromium) "
        "or set MCPROXY_TEST_CHROME to a Chrome binary"
    )


class _ChromeProcess(ProcessProtocol):
    def __init__(self) -> None:
        self.ended: Deferred = Deferred()
        self.output: list[bytes] = []
        self.port: int | None = None
        self._line = b""

    def errReceived(self, data: bytes) -> None:
        self.output.append(data)
        del self.output[:-50]
        *lines, self._line = (self._line + data).split(b"\n")
        for line in lines:
            found = _LISTENING.search(line)
            if found:
                self.port = int(found.group(1))

    def processEnded(self, reason) -> None:
        self.ended.callback(reason.value)


class Chromium:
    """A headless Chromium with remote debugging on 127.0.0.1 and a fresh profile."""

    def __init__(
        self, reactor, *, binary: str | None = None, start_timeout: float = 20.0, extra_flags: tuple[str, ...] = ()
    ):
        self.reactor = reactor
        self.binary = binary or find_chrome()
        self.start_timeout = start_timeout
        #: Added after `FLAGS`, e.g. ("--load-extension=...", "--enable-unsafe-extension-debugging").
        self.extra_flags = tuple(extra_flags)
        self.profile = tempfile.mkdtemp(prefix="mcproxy-chrome-")
        self.port: int | None = None
        self._process = None
        self._protocol: _ChromeProcess | None = None

    @property
    def pid(self) -> int | None:
        """The PID of the running browser process, or None."""
        return self._process.pid if self._process is not None else None

    @property
    def browser_url(self) -> str:
        """The DevTools HTTP endpoint, http://127.0.0.1:PORT."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Deferred:
        """Launch (on a free port the first time, on the same port afterwards)."""
        return Deferred.fromCoroutine(self._start())

    async def _start(self) -> "Chromium":
        active = os.path.join(self.profile, "DevToolsActivePort")
        if os.path.exists(active):
            os.unlink(active)
        args = [
            self.binary,
            *FLAGS,
            *self.extra_flags,
            f"--remote-debugging-port={self.port or 0}",
            f"--user-data-dir={self.profile}",
            "about:blank",
        ]
        self._protocol = _ChromeProcess()
        self._process = self.reactor.spawnProcess(
            self._protocol, self.binary, args, env=dict(os.environ), childFDs={0: "w", 1: "r", 2: "r"}
        )
        waited = 0.0
        while True:
            if self._protocol.ended.called:
                raise RuntimeError(
                    "Chromium exited at start: " + b"".join(self._protocol.output).decode("utf-8", "replace")[-2000:]
                )
            port = self._protocol.port or _read_port(active)
            if port is not None:
                self.port = port
                return self
            if waited > self.start_timeout:
                self.kill()
                raise RuntimeError(f"Chromium did not open its DevTools port within {self.start_timeout} s")
            await deferLater(self.reactor, 0.05)
            waited += 0.05

    def kill(self) -> Deferred:
        """SIGKILL the browser (crash tests). Deferred that fires when it is gone."""
        return self._signal(signal.SIGKILL)

    def restart(self) -> Deferred:
        """Start again on the same port after `kill` or `stop_process`."""
        return self.start()

    def _signal(self, signum: int) -> Deferred:
        protocol, process = self._protocol, self._process
        if protocol is None or process is None or protocol.ended.called:
            return defer.succeed(None)
        try:
            process.signalProcess(signum)
        except ProcessExitedAlready:
            pass
        done: Deferred = Deferred()

        def relay(result):
            if not done.called:
                done.callback(None)
            return result

        protocol.ended.addBoth(relay)
        return done

    def stop(self) -> Deferred:
        """End the browser by its own PID (TERM, then KILL) and remove the profile."""
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        ended = self._signal(signal.SIGTERM)
        ended.addTimeout(5, self.reactor)
        try:
            await ended
        except defer.TimeoutError:
            await self._signal(signal.SIGKILL)
        shutil.rmtree(self.profile, ignore_errors=True)


def _read_port(path: str) -> int | None:
    try:
        with open(path) as f:
            first = f.readline().strip()
    except OSError:
        return None
    return int(first) if first.isdigit() else None
