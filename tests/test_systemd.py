"""systemd: the notify protocol against sockets the test opens, socket activation, the unit files."""

import json
import os
import platform
import signal
import socket
import sys

import pytest
import pytest_twisted
import treq
from twisted.internet import protocol
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from mcproxy import systemd
from mcproxy.config import ConfigError
from mcproxy.testing.tool_calls import sleep

ETC = os.path.join(os.path.dirname(__file__), "..", "etc", "systemd")


@pytest.fixture
def notify_socket(tmp_path):
    """A datagram socket bound where NOTIFY_SOCKET will point; yields (path, socket)."""
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    yield path, sock
    sock.close()


def received(sock) -> list[str]:
    """Every datagram waiting on ``sock``."""
    messages = []
    sock.setblocking(False)
    try:
        while True:
            messages.append(sock.recv(4096).decode())
    except BlockingIOError:
        return messages
    finally:
        sock.settimeout(2)


def test_notify_sends_the_state_to_the_socket(notify_socket):
    path, sock = notify_socket
    assert systemd.notify("READY=1\nSTATUS=Listening", {"NOTIFY_SOCKET": path})
    assert sock.recv(4096) == b"READY=1\nSTATUS=Listening"


def test_notify_reaches_an_abstract_socket():
    name = f"mcproxy-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        assert systemd.notify("STOPPING=1", {"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(4096) == b"STOPPING=1"


def test_notify_without_systemd_does_nothing():
    with capturedLogs() as events:
        assert not systemd.notify("READY=1", {})
    assert events == []


@pytest.mark.parametrize("where", ["/nonexistent/mcproxy/notify", "@mcproxy-nobody-listens-here", "vsock:2:1234"])
def test_notify_socket_pointing_nowhere_is_a_warning_not_a_crash(where, tmp_path):
    with capturedLogs() as events:
        assert not systemd.notify("READY=1", {"NOTIFY_SOCKET": where})
    (event,) = events
    assert event["log_level"].name == "warn"
    assert event["socket"] == where


def test_notify_to_a_socket_file_nobody_reads_is_a_warning(tmp_path):
    path = str(tmp_path / "stale")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
    with capturedLogs() as events:
        assert not systemd.notify("READY=1", {"NOTIFY_SOCKET": path})
    assert [e["log_level"].name for e in events] == ["warn"]
    assert "refused" in events[0]["error"].lower()


def test_notifier_says_ready_pings_the_watchdog_and_says_stopping(notify_socket):
    path, sock = notify_socket
    clock = Clock()
    notifier = systemd.Notifier(
        clock, {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())}
    )
    notifier.ready("Listening on tcp:3000")
    assert received(sock) == ["READY=1\nSTATUS=Listening on tcp:3000", "WATCHDOG=1"]
    clock.advance(1.9)
    assert received(sock) == []
    clock.advance(0.1)  # half of WATCHDOG_USEC
    clock.advance(2.0)
    assert received(sock) == ["WATCHDOG=1", "WATCHDOG=1"]
    notifier.stopping("Draining")
    clock.advance(10)
    assert received(sock) == ["STOPPING=1\nSTATUS=Draining"]
    assert clock.getDelayedCalls() == []


def test_no_watchdog_pings_when_the_watchdog_is_meant_for_another_process(notify_socket):
    path, sock = notify_socket
    clock = Clock()
    notifier = systemd.Notifier(clock, {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"})
    notifier.ready("up")
    clock.advance(10)
    assert received(sock) == ["READY=1\nSTATUS=up"]
    assert clock.getDelayedCalls() == []


def test_watchdog_stops_when_systemd_goes_away(tmp_path):
    clock = Clock()
    notifier = systemd.Notifier(clock, {"NOTIFY_SOCKET": str(tmp_path / "gone"), "WATCHDOG_USEC": "2000000"})
    with capturedLogs() as events:
        notifier.ready("up")
        clock.advance(5)
    assert len(events) == 2  # READY and the first ping; then the pings stop
    assert clock.getDelayedCalls() == []


def test_socket_activation_check_leaves_other_listeners_alone(reactor):
    systemd.check_socket_activation(reactor, ["tcp:3000:interface=127.0.0.1", "unix:/tmp/x.sock"])


@pytest.mark.parametrize("endpoint", ["systemd:domain=INET:index=0", "systemd:domain=INET:name=mcproxy"])
def test_socket_activation_check_explains_a_missing_socket(reactor, endpoint):
    # This test process was not socket-activated: systemd passed nothing.
    with pytest.raises(ConfigError) as raised:
        systemd.check_socket_activation(reactor, [endpoint])
    message = str(raised.value)
    assert message.startswith("server.listen: ") and endpoint in message and "mcproxy.socket" in message


def read_unit(name: str) -> dict[str, dict[str, list[str]]]:
    """A systemd unit file as section -> key -> values (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    with open(os.path.join(ETC, name)) as f:
        for raw in f:
            line = raw.strip()
            if not line or line.startswith(("#", ";")):
                continue
            if line.startswith("["):
                assert line.endswith("]"), line
                current = sections.setdefault(line[1:-1], {})
                continue
            key, equals, value = line.partition("=")
            assert equals and current is not None, f"not a key=value line in {name}: {line!r}"
            current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_service_unit_has_the_required_keys():
    unit = read_unit("mcproxy.service")
    service = {key: values[-1] for key, values in unit["Service"].items()}
    assert service["Type"] == "notify" and service["NotifyAccess"] == "main"
    command = service["ExecStart"].split()
    assert command[0].endswith("/twistd")
    assert {"--nodaemon", "--pidfile="} <= set(command[1 : command.index("mcproxy")])
    assert command[command.index("mcproxy") :] == ["mcproxy", "--config", "/etc/mcproxy/mcproxy.toml"]
    assert service["Restart"] == "on-failure"
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ReadWritePaths": "/var/lib/mcproxy",
        "PrivateTmp": "yes",
        "ProtectHome": "yes",
        "CapabilityBoundingSet": "",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    }.items():
        assert service[key] == value, key
    assert "@system-service" in unit["Service"]["SystemCallFilter"]
    drain_timeout = 30
    assert int(service["TimeoutStopSec"].removesuffix("s")) > drain_timeout
    assert int(service["WatchdogSec"].removesuffix("s")) > 0
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_socket_unit_feeds_the_service_one_named_stream():
    unit = read_unit("mcproxy.socket")
    sock = unit["Socket"]
    assert len(sock["ListenStream"]) == 1  # so systemd:domain=INET:index=0 is unambiguous
    assert sock["Service"] == ["mcproxy.service"] and sock["Accept"] == ["no"]
    assert sock["FileDescriptorName"] == ["mcproxy"]
    assert unit["Install"]["WantedBy"] == ["sockets.target"]


class _Output(protocol.ProcessProtocol):
    """Collects a child's stdout lines and tells when one matches."""

    def __init__(self):
        self.lines: list[str] = []
        self.stderr = b""
        self._buffer = b""
        self.ended: Deferred = Deferred()
        self._waiting: list[tuple[str, Deferred]] = []

    def outReceived(self, data):
        self._buffer += data
        *complete, self._buffer = self._buffer.split(b"\n")
        for raw in complete:
            line = raw.decode()
            self.lines.append(line)
            for text, d in list(self._waiting):
                if text in line:
                    self._waiting.remove((text, d))
                    d.callback(line)

    def errReceived(self, data):
        self.stderr += data

    def processEnded(self, reason):
        self.ended.callback(reason.value)

    def line_with(self, text: str) -> Deferred:
        d = Deferred()
        self._waiting.append((text, d))
        return d


async def start_daemon(reactor, data_dir, *twistd_options, env=()):
    """``twistd -n mcproxy`` on a listening socket passed the way systemd passes it.

    Returns (process, its output, the port); LISTEN_PID must be the daemon's own pid, so
    the shell exports its ``$$`` and execs twistd.
    """
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    daemon = ["mcproxy", "--listen", "systemd:domain=INET:index=0", "--store", "memory:", "--data-dir", str(data_dir)]
    command = " ".join([twistd, "-n", "--pidfile=", *twistd_options, *daemon])
    environ = {
        k: v for k, v in os.environ.items() if not k.startswith(("LISTEN_", "NOTIFY_", "MCPROXY_", "PYTHONMALLOC"))
    }
    environ.update(LISTEN_FDS="1", LISTEN_FDNAMES="mcproxy", **dict(env))
    output = _Output()
    process = reactor.spawnProcess(
        output,
        "/bin/sh",
        ["sh", "-c", f"export LISTEN_PID=$$; exec {command}"],
        env=environ,
        childFDs={0: "w", 1: "r", 2: "r", 3: listener.fileno()},
    )
    listener.close()  # the daemon holds its own copy now
    try:
        listening = output.line_with("listening on")
        listening.addTimeout(30, reactor)
        await listening
    except Exception:
        process.signalProcess("KILL")
        await output.ended
        raise AssertionError(f"the daemon did not start: {output.stderr.decode()} {output.lines}") from None
    return process, output, port


async def stop_daemon(process, output) -> None:
    """SIGTERM, as systemd stops it; twistd shuts down cleanly, then re-raises the signal."""
    process.signalProcess("TERM")
    ended = await output.ended
    assert ended.exitCode == 0 or ended.signal == signal.SIGTERM, ended
    assert "Server Shut Down." in output.lines[-1]


@pytest_twisted.ensureDeferred
async def test_daemon_serves_a_socket_systemd_passed_and_logs_json(reactor, tmp_path):
    process, output, port = await start_daemon(reactor, tmp_path, "--logger=mcproxy.logs.observer")
    try:
        response = await treq.get(f"http://127.0.0.1:{port}/health", persistent=False)
        assert response.code == 200
        assert (await response.json())["status"] == "ok"
    finally:
        await stop_daemon(process, output)
    records = [json.loads(line) for line in output.lines if line.strip()]
    assert any(r["message"] == "mcproxy listening on systemd:domain=INET:index=0" for r in records), output.lines
    assert all({"time", "level", "namespace", "message"} <= set(r) for r in records)
    assert (tmp_path / "admin-token").read_text().strip() not in "\n".join(output.lines)


def allocator_of(pid: int) -> str | None:
    """The PYTHONMALLOC process ``pid`` was last started with (its environment at its last exec)."""
    with open(f"/proc/{pid}/environ", "rb") as f:
        variables = dict(item.partition(b"=")[::2] for item in f.read().split(b"\0") if item)
    value = variables.get(b"PYTHONMALLOC")
    return None if value is None else value.decode()


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("chosen", [None, "pymalloc"])
async def test_daemon_runs_on_the_c_allocator_unless_one_was_chosen(reactor, tmp_path, chosen):
    """On glibc the daemon starts again on the C allocator, keeping its pid (LISTEN_PID is
    still its own) and systemd's socket; an operator's PYTHONMALLOC is kept."""
    env = {} if chosen is None else {"PYTHONMALLOC": chosen}
    process, output, port = await start_daemon(reactor, tmp_path, env=env)
    try:
        response = await treq.get(f"http://127.0.0.1:{port}/health", persistent=False)
        assert response.code == 200
        expected = chosen or ("malloc" if platform.libc_ver()[0] == "glibc" else None)
        assert allocator_of(process.pid) == expected
    finally:
        await stop_daemon(process, output)


async def datagrams(reactor, sock, count: int) -> list[str]:
    """Wait (up to 10 s) until ``count`` datagrams arrived on ``sock``."""
    got: list[str] = []
    for _ in range(200):
        got += received(sock)
        if len(got) >= count:
            return got
        await sleep(reactor, 0.05)
    raise AssertionError(f"only {got} arrived")


@pytest_twisted.ensureDeferred
async def test_daemon_tells_systemd_serves_metrics_and_tags_logs_with_request_ids(reactor, tmp_path, notify_socket):
    """The operator's path: READY=1 once listening, JSON logs by default with each request's
    id, /metrics counting real traffic, STOPPING=1 and a clean stop on SIGTERM."""
    path, sock = notify_socket
    process, output, port = await start_daemon(reactor, tmp_path, env={"NOTIFY_SOCKET": path})
    base = f"http://127.0.0.1:{port}"
    try:
        assert await datagrams(reactor, sock, 1) == ["READY=1\nSTATUS=Listening on systemd:domain=INET:index=0"]
        admin = {"Authorization": "Bearer " + (tmp_path / "admin-token").read_text().strip()}
        response = await treq.post(
            base + "/api/tokens",
            json={"userId": "carol", "permissions": ["metrics"]},
            headers={**admin, "X-Request-Id": "ops-req-42"},
            persistent=False,
        )
        assert response.code == 201
        scraper = {"Authorization": "Bearer " + (await response.json())["token"]}
        refused = await treq.get(base + "/metrics", persistent=False)
        assert refused.code == 401
        await refused.content()
        scrape = await treq.get(base + "/metrics", headers=scraper, persistent=False)
        assert scrape.code == 200
        text = (await scrape.content()).decode()
    finally:
        await stop_daemon(process, output)
    assert await datagrams(reactor, sock, 1) == ["STOPPING=1\nSTATUS=Stopping"]
    assert 'mcproxy_http_requests_total{code="201",route="/api/tokens"} 1.0' in text
    assert 'mcproxy_auth_failures_total{reason="missing"} 1.0' in text
    assert "mcproxy_users_registered 0.0" in text
    records = [json.loads(line) for line in output.lines]  # JSON without --logger: stdout is a pipe
    created = [r for r in records if r["message"].startswith("Created API token") and r.get("user_id") == "carol"]
    assert created and created[0]["request_id"] == "ops-req-42"
