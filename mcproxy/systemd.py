"""systemd integration: the notify protocol (``Type=notify``) and socket-activated listeners.

Everything here is a no-op outside systemd. A notify socket that cannot be reached is
logged, never fatal: a daemon must not die because its supervisor went away.
"""

import os
import socket
from collections.abc import Iterable, Mapping

from twisted.internet.endpoints import serverFromString
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from mcproxy.config import ConfigError

log = Logger()


def _address(value: str) -> str | None:
    """The socket address of ``NOTIFY_SOCKET``: a path, or an abstract name given as ``@name``."""
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None


def notify(state: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Send ``state`` (``"READY=1\\nSTATUS=..."``) to systemd; whether it was delivered.

    The datagram is sent without blocking; with no ``NOTIFY_SOCKET`` nothing happens.
    """
    value = environ.get("NOTIFY_SOCKET")
    if not value:
        return False
    address = _address(value)
    if address is None:
        log.warn(
            "NOTIFY_SOCKET={socket} is not a Unix socket; systemd is not told about {state}",
            socket=value,
            state=state.replace("\n", " "),
        )
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.setblocking(False)
            sock.sendto(state.encode("utf-8"), address)
    except OSError as e:
        log.warn(
            "Could not notify systemd at {socket} ({state}): {error}",
            socket=value,
            state=state.replace("\n", " "),
            error=e.strerror or str(e),
        )
        return False
    return True


def watchdog_interval(environ: Mapping[str, str] = os.environ) -> float | None:
    """Seconds between watchdog pings (half of ``WATCHDOG_USEC``), or None when no watchdog is set for us."""
    usec = environ.get("WATCHDOG_USEC")
    pid = environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2_000_000 if value > 0 else None


class Notifier:
    """Tells systemd when the daemon is ready and when it stops, and pings its watchdog.

    The watchdog pings come from a reactor timer, so a blocked reactor stops them and
    systemd restarts the daemon (``WatchdogSec=``).
    """

    def __init__(self, clock, environ: Mapping[str, str] = os.environ):
        self._clock = clock
        self._environ = environ
        self._watchdog: LoopingCall | None = None

    def ready(self, status: str) -> None:
        """The daemon listens: ``READY=1`` with a human ``STATUS``; watchdog pings start."""
        notify(f"READY=1\nSTATUS={status}", self._environ)
        interval = watchdog_interval(self._environ)
        if interval is not None and self._watchdog is None:
            self._watchdog = LoopingCall(self._ping)
            self._watchdog.clock = self._clock
            self._watchdog.start(interval, now=True)

    def stopping(self, status: str = "Stopping") -> None:
        """The daemon is shutting down: ``STOPPING=1``; no more watchdog pings."""
        self._stop_watchdog()
        notify(f"STOPPING=1\nSTATUS={status}", self._environ)

    def _ping(self) -> None:
        if not notify("WATCHDOG=1", self._environ):
            self._stop_watchdog()  # the failure is logged once, not every few seconds

    def _stop_watchdog(self) -> None:
        if self._watchdog is not None and self._watchdog.running:
            self._watchdog.stop()
        self._watchdog = None


def check_socket_activation(reactor, listen: Iterable[str]) -> None:
    """Refuse ``systemd:`` listeners whose socket systemd did not pass, with advice (ConfigError).

    Asks Twisted's own ``systemd:`` endpoint parser, which took ``LISTEN_FDS`` and friends
    out of the environment when it was imported, so this agrees with what listening will find.
    """
    for endpoint in listen:
        if not endpoint.startswith("systemd:"):
            continue
        try:
            serverFromString(reactor, endpoint)
        except (IndexError, KeyError):
            raise ConfigError(
                f"server.listen: {endpoint!r} needs a socket from systemd socket activation, and systemd"
                " passed no such socket; start mcproxy through its .socket unit (etc/systemd/mcproxy.socket),"
                " or listen on tcp:PORT:interface=ADDRESS instead"
            ) from None
