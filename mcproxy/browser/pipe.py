"""Chromium over ``--remote-debugging-pipe``: no DevTools port, CDP on fds 3 and 4.

Both ``mcproxy-connect --launch`` (`mcproxy.tunnel.client`) and the proxy's launched
browsers (`mcproxy.browser.launch`) start Chromium this way: the proxy's calls go in on fd 3
and Chromium's messages come out on fd 4, each a JSON text ended by a NUL byte. Nothing
listens on a socket, so no other local user can drive the browser.
"""

import json
import os
import re
import shutil
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol

CHROME_NAMES = ("google-chrome", "google-chrome-stable", "chromium", "chromium-browser", "chrome", "msedge")
CHROME_PATHS = (
    "/Applications/Google Chrome.app/Contents/MacOS/Google Chrome",
    "/Applications/Chromium.app/Contents/MacOS/Chromium",
)
#: Seconds a browser has to end after SIGTERM before it gets SIGKILL.
STOP_GRACE = 5.0
#: Lines of the browser's stderr kept to say why it ended.
KEPT_ERROR_CHUNKS = 20


def find_chrome() -> str | None:
    """The Chrome or Chromium binary of this machine, None when there is none."""
    for name in CHROME_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return next((path for path in CHROME_PATHS if os.path.exists(path)), None)


def pipe_argv(chrome: str, profile: str, *, headless: bool, extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The command line of a browser driven over the pipe, with ``profile`` its own."""
    return [
        chrome,
        "--remote-debugging-pipe",
        f"--user-data-dir={profile}",
        "--no-first-run",
        "--no-default-browser-check",
        *(["--headless"] if headless else []),
        *extra,
        "about:blank",
    ]


#: The start of an answer as Chrome writes it: its id first.
_REPLY_ID = re.compile(rb'\{"id":(\d+),')


class Renumbering:
    """The pipe is one DevTools client for the browser's whole life, while the proxy opens a
    fresh browser connection now and then: calls go to the browser under ids of the pipe's
    own, so a late answer to a call of an earlier connection reaches nobody, and the sessions
    an earlier connection attached are detached when it closes (none keeps a new tab paused
    waiting for a debugger that went away)."""

    def __init__(self) -> None:
        self._next_id = 0
        self._calls: dict[int, Any] = {}  # pipe id -> the proxy's id
        self._attaching: set[int] = set()  # pipe ids of calls whose answer names a new session
        self._sessions: set[str] = set()

    def outgoing(self, message: bytes) -> bytes | None:
        """The proxy's call as the browser gets it (None: not a call; dropped)."""
        try:
            call = json.loads(message)
            their_id = call["id"]
        except (ValueError, KeyError, TypeError):
            return None
        call["id"] = pipe_id = self._own(their_id)
        if str(call.get("method", "")).startswith("Target.attach"):
            self._attaching.add(pipe_id)
        return json.dumps(call, separators=(",", ":")).encode("utf-8")

    def incoming(self, message: bytes) -> bytes | None:
        """The browser's message as the proxy gets it (None: it answers a call of nobody now).

        Chrome writes an answer's id first and an event's method first: an answer only has its
        id swapped and an event that cannot name a session of its own passes as it is, so a
        big answer or event (a screenshot, a snapshot) is not decoded here on its way to the
        connection, which decodes it once. Any other shape is read whole."""
        reply = _REPLY_ID.match(message)
        if reply is not None:
            pipe_id = int(reply[1])
            if pipe_id in self._attaching:
                self._attaching.discard(pipe_id)
                return self._read_whole(message)
            their_id = self._calls.pop(pipe_id, None)
            if their_id is None:
                return None
            return b'{"id":' + json.dumps(their_id).encode("utf-8") + b"," + message[reply.end() :]
        if message.startswith(b'{"method":"') and not message.startswith(b'{"method":"Target.'):
            return message
        return self._read_whole(message)

    def _read_whole(self, message: bytes) -> bytes | None:
        try:
            parsed = json.loads(message)
        except ValueError:
            return None
        if not isinstance(parsed, dict):
            return None
        self._note_session(parsed)
        if "id" not in parsed:
            return message
        their_id = self._calls.pop(parsed["id"], None) if isinstance(parsed["id"], int) else None
        if their_id is None:
            return None
        parsed["id"] = their_id
        return json.dumps(parsed, separators=(",", ":")).encode("utf-8")

    def _own(self, their_id: Any) -> int:
        self._next_id += 1
        self._calls[self._next_id] = their_id
        return self._next_id

    def _note_session(self, message: dict) -> None:
        params = message.get("params") or message.get("result")
        session = params.get("sessionId") if isinstance(params, dict) else None
        if isinstance(session, str):
            if message.get("method") == "Target.detachedFromTarget":
                self._sessions.discard(session)
            else:
                self._sessions.add(session)

    def closing(self) -> list[bytes]:
        """What the browser is told when the proxy's connection closes: the calls answered
        since are forgotten, auto-attach stops, and its sessions are detached."""
        self._calls.clear()
        sessions, self._sessions = self._sessions, set()
        calls = [
            ("Target.setAutoAttach", {"autoAttach": False, "waitForDebuggerOnStart": False}),
            ("Target.setDiscoverTargets", {"discover": False}),
            *(("Target.detachFromTarget", {"sessionId": session}) for session in sorted(sessions)),
        ]
        messages = []
        for method, params in calls:
            self._next_id += 1  # answered to nobody: not in _calls
            messages.append(json.dumps({"id": self._next_id, "method": method, "params": params}).encode("utf-8"))
        return messages


class PipeProcess(ProcessProtocol):
    """One browser process on the pipe: ``on_message(bytes)`` for each message it writes,
    ``on_exit(last_words)`` once when it ends (its last line of stderr, if any)."""

    def __init__(self, on_message: Callable[[bytes], None], on_exit: Callable[[str], None]):
        self._on_message = on_message
        self._on_exit = on_exit
        self._ended = False
        self._waiting: list[Deferred] = []
        self._buffer = b""
        self._errors: list[bytes] = []
        self._process: Any = None

    @classmethod
    def spawn(
        cls, reactor, argv: list[str], on_message: Callable[[bytes], None], on_exit: Callable[[str], None]
    ) -> "PipeProcess":
        """Start ``argv`` with the pipe on fds 3 (its input) and 4 (its output)."""
        protocol = cls(on_message, on_exit)
        protocol._process = reactor.spawnProcess(
            protocol, argv[0], argv, env=dict(os.environ), childFDs={0: "w", 1: "r", 2: "r", 3: "w", 4: "r"}
        )
        return protocol

    @property
    def pid(self) -> int | None:
        """The process id while it runs."""
        return None if self._ended or self._process is None else self._process.pid

    @property
    def running(self) -> bool:
        return not self._ended

    def gone(self) -> Deferred:
        """Deferred[None] fired once the process has ended."""
        if self._ended:
            return defer.succeed(None)
        waiting: Deferred = Deferred()
        self._waiting.append(waiting)
        return waiting

    def write(self, message: bytes) -> None:
        """Send one message (a call) to the browser."""
        if self.running:
            self._process.writeToChild(3, message + b"\0")

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD != 4:
            self._errors.append(data)
            del self._errors[:-KEPT_ERROR_CHUNKS]
            return
        *messages, self._buffer = (self._buffer + data).split(b"\0")
        for message in messages:
            self._on_message(message)

    def processEnded(self, reason) -> None:
        last = b"".join(self._errors).decode("utf-8", "replace").strip().splitlines()[-1:]
        self._ended = True
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            waiter.callback(None)
        self._on_exit(last[0] if last else "")

    def stop(self, reactor) -> Deferred:
        """End the browser by its PID: TERM, then KILL after `STOP_GRACE` seconds. Deferred[None]
        once it is gone (``on_exit`` is not told: the caller knows)."""
        if not self.running:
            return defer.succeed(None)
        self._on_exit = lambda last_words: None
        try:
            self._process.signalProcess("TERM")
        except ProcessExitedAlready:
            return defer.succeed(None)

        def kill() -> None:
            if self.running:
                self._process.signalProcess("KILL")

        killing = reactor.callLater(STOP_GRACE, kill)
        return self.gone().addCallback(lambda _: killing.cancel() if killing.active() else None)
