"""Giving the memory of ended sessions back to the system.

Python frees a session's objects as soon as it ends, but the C allocator keeps what they
occupied for its own reuse: after ten thousand streams close, the process would stay as big
as it was with them open. glibc's ``malloc_trim`` hands the free pages inside its heap back;
`MemoryRelease` calls it once many sessions have ended and their ends have quietened down
(a burst of closes is trimmed once, after its last close).
"""

import ctypes
import ctypes.util
from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

log = Logger()

#: Sessions that must have ended since the last release before another is worth its time.
RELEASE_AFTER = 1000
#: The release waits until no session has ended for this many seconds (the end of a burst
#: of closes)...
QUIET_SECONDS = 1.0
#: ...but no longer than this after `RELEASE_AFTER` was reached (sessions may never stop
#: ending on a busy server).
MAX_WAIT_SECONDS = 10.0


def malloc_trim() -> Callable[[], object] | None:
    """glibc's ``malloc_trim(0)``, or None where the C library has none (musl, macOS)."""
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


class MemoryRelease:
    """Calls ``release`` (`malloc_trim` by default) once `RELEASE_AFTER` sessions have ended
    since the previous call, when none has ended for `QUIET_SECONDS` (or `MAX_WAIT_SECONDS`
    after the count was reached)."""

    def __init__(
        self,
        clock,
        release: Callable[[], object] | None = None,
        after: int = RELEASE_AFTER,
        quiet: float = QUIET_SECONDS,
        max_wait: float = MAX_WAIT_SECONDS,
    ):
        self._clock = clock
        self._release = release if release is not None else malloc_trim()
        self._after = after
        self._quiet = quiet
        self._max_wait = max_wait
        self._ended = 0
        self._last_end = 0.0
        self._due = 0.0
        self._call: IDelayedCall | None = None
        #: How many times the memory was released (for tests and curious admins).
        self.releases = 0

    def session_ended(self) -> None:
        if self._release is None:
            return
        self._ended += 1
        self._last_end = now = self._clock.seconds()
        if self._call is None and self._ended >= self._after:
            self._due = now
            self._call = self._clock.callLater(self._quiet, self._run)

    def stop(self) -> None:
        """Forget any release still to come (shutdown)."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _run(self) -> None:
        now = self._clock.seconds()
        quiet_at = self._last_end + self._quiet
        if quiet_at > now and now - self._due < self._max_wait:
            self._call = self._clock.callLater(quiet_at - now, self._run)
            return
        self._call = None
        ended, self._ended = self._ended, 0
        self.releases += 1
        release = self._release
        assert release is not None  # nothing is scheduled without it
        try:
            release()
        except Exception:
            log.failure("Could not give the memory of {ended} ended sessions back", ended=ended)
