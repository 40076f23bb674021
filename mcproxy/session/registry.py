"""MCP sessions: ids, owners, idle expiry.

A session belongs to the user who opened it. Looking a session up always names the user
too, so another user's session id behaves exactly like one that does not exist.
"""

import secrets
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.logger import Logger

from mcproxy.errors import LimitReached, ServerFull
from mcproxy.session.memory import MemoryRelease

log = Logger()


class Session:
    """One MCP session: its id, owner, transport, protocol state and open streams.

    ``state`` is whatever the transport keeps (the `McpSession`); ``on_close`` callbacks
    end its streams and cancel its work when the session ends for any reason.
    """

    __slots__ = (
        "registry",
        "id",
        "user_id",
        "transport",
        "token_id",
        "state",
        "stream",
        "closed",
        "created_at",
        "last_activity",
        "_holds",
        "_expiry",
        "_on_close",
    )

    def __init__(
        self, registry: "SessionRegistry", session_id: str, user_id: str, transport: str, token_id: str | None = None
    ):
        self.registry = registry
        self.id = session_id
        self.user_id = user_id
        self.transport = transport
        self.token_id = token_id
        self.state: Any = None
        self.stream: Any = None  # the SSE stream server messages go to, when one is open
        self.closed = False
        self.created_at = registry.clock.seconds()
        self.last_activity = self.created_at
        self._holds = 0
        self._expiry = None
        self._on_close: list[Callable[[], Any]] = []

    def touch(self) -> None:
        """Record activity: the idle timer starts again."""
        self.last_activity = self.registry.clock.seconds()
        self._schedule()

    def hold(self) -> None:
        """An open stream or running request: no idle expiry until the matching `release`."""
        self._holds += 1
        self.touch()

    def release(self) -> None:
        self._holds = max(0, self._holds - 1)
        self.touch()

    def on_close(self, callback: Callable[[], Any]) -> None:
        """Call ``callback`` when the session ends (at once if it already has)."""
        if self.closed:
            callback()
        else:
            self._on_close.append(callback)

    def forget_on_close(self, callback: Callable[[], Any]) -> None:
        """Drop a callback given to `on_close` (what it would end has ended already)."""
        if callback in self._on_close:
            self._on_close.remove(callback)

    def _schedule(self) -> None:
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        self._expiry = None
        if not self.closed and self._holds == 0:
            self._expiry = self.registry.clock.callLater(self.registry.idle_timeout, self._expire)

    def _expire(self) -> None:
        self._expiry = None
        log.info(
            "MCP session {session_id} of user {user_id} ended after being idle",
            session_id=self.id,
            user_id=self.user_id,
        )
        self.registry.close(self.id)

    def _close(self) -> None:
        self.closed = True
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        self._expiry = None
        callbacks, self._on_close = self._on_close, []
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.failure("Error while closing MCP session {session_id}", session_id=self.id)


class SessionRegistry(Service):
    """Every live MCP session of this process, with clock-driven idle expiry; stopping the
    service ends them all. What ended sessions leave in the C allocator is given back to the
    system by ``memory`` (a `MemoryRelease` on ``clock`` unless given)."""

    def __init__(
        self,
        clock,
        idle_timeout: float,
        max_per_user: int = 0,
        max_total: int = 0,
        memory: MemoryRelease | None = None,
    ):
        self.clock = clock
        self.idle_timeout = idle_timeout
        self.max_per_user = max_per_user
        self.max_total = max_total
        self.memory = memory if memory is not None else MemoryRelease(clock)
        self._sessions: dict[str, Session] = {}
        self._end_listeners: list[Callable[[Session], Any]] = []

    @classmethod
    def from_config(cls, clock, config) -> "SessionRegistry":
        """The registry with ``session.idle_timeout`` and the ``limits.max_sessions*``."""
        registry = cls(clock, config.session.idle_timeout)
        registry.reconfigure(config)
        return registry

    def reconfigure(self, config) -> None:
        """Apply ``session.idle_timeout`` and the session limits (live); sessions already
        over a lowered limit stay."""
        self.idle_timeout = config.session.idle_timeout
        self.max_per_user = config.limits.max_sessions_per_user
        self.max_total = config.limits.max_sessions

    def add_end_listener(self, listener: Callable[[Session], Any]) -> None:
        """Call ``listener(session)`` when a session ends for good: closed by its client,
        idle, its token revoked or its user deleted; not when this process only lets it
        go (the user moves to another process, or this one stops), as another process
        may then resume it."""
        self._end_listeners.append(listener)

    def create(
        self, user_id: str, transport: str, token_id: str | None = None, *, session_id: str | None = None
    ) -> Session:
        """A new session for ``user_id`` over ``transport`` (``"sse"`` or ``"streamable"``),
        opened with the API token ``token_id`` (it ends when that token is revoked);
        ``session_id`` is given for a session resumed from its record, else a new one is made.

        Raises LimitReached / ServerFull over ``limits.max_sessions_per_user`` /
        ``limits.max_sessions`` (0: no limit).
        """
        if self.max_total and len(self._sessions) >= self.max_total:
            raise ServerFull(
                f"this proxy process has its maximum of {self.max_total} open MCP sessions (limits.max_sessions); "
                "try again later or another instance"
            )
        if self.max_per_user and self.count_for_user(user_id) >= self.max_per_user:
            raise LimitReached(
                f"user {user_id} already has {self.max_per_user} open MCP sessions (limits.max_sessions_per_user); "
                "close one (DELETE /mcp with its Mcp-Session-Id) or let idle ones expire"
            )
        session = Session(self, session_id or secrets.token_urlsafe(24), user_id, transport, token_id)
        self._sessions[session.id] = session
        session.touch()
        return session

    def get(self, session_id: str | None, user_id: str) -> Session | None:
        """The session with this id if ``user_id`` owns it, else None (whether or not it exists)."""
        session = self._sessions.get(session_id) if session_id else None
        if session is None or not secrets.compare_digest(session.user_id, user_id):
            return None
        return session

    def close(self, session_id: str, *, for_good: bool = True) -> bool:
        """End a session and its streams. Whether it existed. ``for_good=False``: only this
        process lets it go (the end listeners are not told)."""
        session = self._sessions.pop(session_id, None)
        if session is None:
            return False
        session._close()
        self.memory.session_ended()
        if for_good:
            for listener in self._end_listeners:
                try:
                    listener(session)
                except Exception:
                    log.failure("Error telling the end of MCP session {session_id}", session_id=session_id)
        return True

    def close_user(self, user_id: str, *, for_good: bool = True) -> int:
        """End every session of ``user_id`` (``for_good=False``: only in this process, as
        the user moves to another); how many there were."""
        ids = [s.id for s in self._sessions.values() if s.user_id == user_id]
        for session_id in ids:
            self.close(session_id, for_good=for_good)
        return len(ids)

    def token_ids(self) -> set[str]:
        """The API tokens live sessions were opened with."""
        return {s.token_id for s in self._sessions.values() if s.token_id is not None}

    def close_token(self, token_id: str) -> int:
        """End every session opened with ``token_id``; how many there were."""
        ids = [s.id for s in self._sessions.values() if s.token_id == token_id]
        for session_id in ids:
            self.close(session_id)
        return len(ids)

    def close_all(self) -> None:
        """Let go of every session (shutdown)."""
        for session_id in list(self._sessions):
            self.close(session_id, for_good=False)

    def stopService(self) -> None:
        super().stopService()
        self.close_all()
        self.memory.stop()

    def count(self, transport: str | None = None) -> int:
        """Live sessions, of one transport or all."""
        if transport is None:
            return len(self._sessions)
        return sum(1 for s in self._sessions.values() if s.transport == transport)

    def counts(self) -> dict[tuple[str, str], int]:
        """Live sessions per (transport, protocol revision), for the sessions gauge."""
        counts: dict[tuple[str, str], int] = {}
        for session in self._sessions.values():
            key = (session.transport, getattr(session.state, "protocol_version", None) or "unknown")
            counts[key] = counts.get(key, 0) + 1
        return counts

    def count_for_user(self, user_id: str) -> int:
        return sum(1 for s in self._sessions.values() if s.user_id == user_id)

    def last_activity(self, user_id: str) -> float | None:
        """The latest activity (epoch seconds) over the user's sessions, or None."""
        times = [s.last_activity for s in self._sessions.values() if s.user_id == user_id]
        return max(times) if times else None
