"""Child processes for tests and benchmarks, driven by their PIDs: any program
(`ChildProcess`) and a real ``twistd -n mcproxy`` (`Daemon`).

`Daemon` writes a config file the test can rewrite (reloads) and keeps the process's log
records for assertions and failure messages.
"""

import json
import os
import random
import signal
import socket
import sys

from twisted.internet import protocol
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProcessTransport

import mcproxy
from mcproxy.testing.daemon import RunningProxy

#: Seconds a daemon may take from spawn to its "listening on" line.
STARTUP_TIMEOUT = 30.0


#: Where `free_port` looks: from here up to the first port the kernel hands out itself.
LOWEST_PORT = 10_000


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody holds right now, below the kernel's range of
    ephemeral ports: between this choice and the daemon's listening (or while a daemon is
    down for a restart on it), no outgoing connection of another process can be given it."""
    top = max(_first_ephemeral_port(), LOWEST_PORT + 1000)  # an odd range may start low
    for _ in range(1000):
        port = random.randrange(LOWEST_PORT, top)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free TCP port between {LOWEST_PORT} and {top}")


def _first_ephemeral_port() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768  # Linux's default


def toml(sections: dict[str, dict]) -> str:
    """A TOML document of flat sections (JSON strings, numbers and lists are TOML too)."""
    lines = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines.extend(f"{key} = {json.dumps(value)}" for key, value in values.items())
    return "\n".join(lines) + "\n"


def checkout_environment() -> dict[str, str]:
    """The environment for a child that must import this checkout's mcproxy: no inherited
    systemd sockets or ``MCPROXY_`` settings, and the checkout first on PYTHONPATH."""
    checkout = os.path.dirname(os.path.dirname(os.path.abspath(mcproxy.__file__)))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LISTEN_", "NOTIFY_", "MCPROXY_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [checkout, env.get("PYTHONPATH")]))
    return env


class ChildProcess(protocol.ProcessProtocol):
    """A child process started, signalled and stopped by its PID, its output lines kept.

    Tests wait for a line (`line_with`) or for the exit (`exited`); both fail or return
    at once when the process ends, so a test never waits out a timeout on a dead child.
    The same instance may be spawned again once the process has ended (a restart).
    """

    def __init__(self, reactor):
        self.reactor = reactor
        self.lines: list[str] = []
        #: The exit reason (ProcessDone or ProcessTerminated) once the process has ended.
        self.exit_reason: BaseException | None = None
        self.transport = None
        self._buffer = b""
        self._waiting: list[tuple[str, Deferred]] = []
        self._exit_waiters: list[Deferred] = []

    def launch(self, argv: list[str], *, env: dict[str, str] | None = None, path: str | None = None) -> None:
        """Start ``argv`` (its first item is the executable) without waiting for anything."""
        self.exit_reason = None
        self._buffer = b""
        self.reactor.spawnProcess(self, argv[0], argv, env=env, path=path)

    @property
    def process(self) -> IProcessTransport:
        """The running process's transport (launch first)."""
        if self.transport is None:
            raise RuntimeError(f"{self.describe()} was never started")
        return self.transport

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.transport is not None and self.exit_reason is None

    def describe(self) -> str:
        """A short name for failure messages."""
        return "the child process"

    def tail(self, count: int = 30) -> str:
        """The last ``count`` output lines, for failure messages."""
        return "\n".join(self.lines[-count:])

    def signal(self, name: str) -> None:
        """Send signal ``name`` ("TERM", "KILL", "STOP", "CONT", ...) to the process, by its PID."""
        self.process.signalProcess(getattr(signal, f"SIG{name}"))

    def stop(self) -> None:
        """Kill the process if it still runs (test clean-up)."""
        if self.running:
            self.process.signalProcess("KILL")

    async def kill(self) -> None:
        """``kill -9``, and wait until the process is gone (its ports are free again)."""
        self.signal("KILL")
        await self.exited()

    async def close(self) -> None:
        """Kill the process if it runs, and wait until it is gone (clean-up)."""
        if self.running:
            await self.kill()

    async def exited(self, seconds: float = 30.0) -> BaseException:
        """The exit reason (ProcessDone or ProcessTerminated), waiting at most ``seconds``."""
        if self.exit_reason is not None:
            return self.exit_reason
        waiter: Deferred = Deferred()
        self._exit_waiters.append(waiter)
        waiter.addTimeout(seconds, self.reactor)
        try:
            return await waiter
        finally:
            if waiter in self._exit_waiters:
                self._exit_waiters.remove(waiter)

    def line_with(self, text: str) -> Deferred:
        """Fires with the first line's text (from now on) that contains ``text``; fails if
        the process ends first."""
        d: Deferred = Deferred(lambda cancelled: self._waiting.remove((text, cancelled)))
        self._waiting.append((text, d))
        return d

    def recorded(self, line: str) -> str:
        """Keep what an output line says; the text `line_with` matches (here the line)."""
        return line

    def outReceived(self, data: bytes) -> None:
        self._buffer += data
        *complete, self._buffer = self._buffer.split(b"\n")
        for raw in complete:
            line = raw.decode("utf-8", "replace")
            self.lines.append(line)
            text = self.recorded(line)
            for wanted, d in list(self._waiting):
                if wanted in text:
                    self._waiting.remove((wanted, d))
                    d.callback(text)

    errReceived = outReceived

    def processEnded(self, reason) -> None:
        self.exit_reason = reason.value
        waiting, self._waiting = self._waiting, []
        for text, d in waiting:
            d.errback(AssertionError(f"{self.describe()} ended before printing {text!r}: {reason.value}"))
        exit_waiters, self._exit_waiters = self._exit_waiters, []
        for waiter in exit_waiters:
            waiter.callback(reason.value)


class Daemon(ChildProcess):
    """``twistd -n mcproxy --config PATH`` in its own process, with its JSON log records kept.

    `write_config` rewrites the file (for reloads); ``records`` are the parsed log lines.
    """

    def __init__(self, reactor, root, **sections: dict):
        super().__init__(reactor)
        self.root = str(root)
        self.port = free_port()
        self.config_path = os.path.join(self.root, "mcproxy.toml")
        self.records: list[dict] = []
        self.write_config(**sections)

    def base_sections(self) -> dict[str, dict]:
        """What every config of this daemon holds before the test's sections: a loopback
        listener, a memory store, data and audit log in the daemon's directory."""
        return {
            "server": {"listen": [f"tcp:{self.port}:interface=127.0.0.1"], "data_dir": self.root},
            "store": {"url": "memory:"},
            "audit": {"path": os.path.join(self.root, "audit.jsonl")},
        }

    def write_config(self, **sections: dict) -> None:
        """The daemon's config file: `base_sections` with ``sections`` on top."""
        base = self.base_sections()
        for name, values in sections.items():
            base.setdefault(name, {}).update(values)
        self.write_raw(toml(base))

    def write_raw(self, text: str) -> None:
        with open(self.config_path, "w") as f:
            f.write(text)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def spawn(self) -> None:
        """Start the process without waiting for anything."""
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        self.launch(
            [twistd, "-n", "--pidfile=", "mcproxy", "--config", self.config_path],
            env=checkout_environment(),
            path=self.root,
        )

    async def listening(self, seconds: float = STARTUP_TIMEOUT) -> None:
        """Wait for the "listening on" line; on a timeout or an early exit kill the process
        and fail with its last log lines."""
        listening = self.line_with("listening on")
        listening.addTimeout(seconds, self.reactor)
        try:
            await listening
        except Exception:
            self.stop()
            raise AssertionError(f"{self.describe()} did not start:\n{self.tail()}") from None

    async def restart(self) -> None:
        """SIGTERM (a clean stop), then start again on the same port and config."""
        self.signal("TERM")
        await self.exited()
        self.spawn()
        await self.listening()

    async def start(self) -> RunningProxy:
        """Start the process; a `RunningProxy` (admin API and tool-call helpers) for talking to it."""
        self.spawn()
        await self.listening()
        with open(os.path.join(self.root, "admin-token")) as f:
            admin_token = f.read().strip()
        return RunningProxy(service=None, base_url=self.base_url, admin_token=admin_token)

    def describe(self) -> str:
        return f"the daemon in {self.root}"

    def messages(self) -> list[str]:
        return [record.get("message", "") for record in self.records]

    def recorded(self, line: str) -> str:
        """Keep the log record (twistd logs one JSON record a line); its message."""
        try:
            record = json.loads(line)
        except ValueError:
            record = {"message": line}
        if not isinstance(record, dict):
            record = {"message": line}
        self.records.append(record)
        return str(record.get("message", ""))
