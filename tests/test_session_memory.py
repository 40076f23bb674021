"""The memory of ended sessions goes back to the system: `MemoryRelease` on the clock."""

import platform

from twisted.internet.task import Clock

from mcproxy.session.memory import MemoryRelease, malloc_trim
from mcproxy.session.registry import SessionRegistry


def make(after=3, quiet=1.0, max_wait=10.0):
    clock, released = Clock(), []
    memory = MemoryRelease(clock, lambda: released.append(clock.seconds()), after, quiet, max_wait)
    return clock, memory, released


def test_a_release_follows_enough_ended_sessions_once_they_stop_ending():
    clock, memory, released = make(after=3)
    memory.session_ended()
    memory.session_ended()
    clock.advance(60)
    assert released == []  # too few to be worth it
    memory.session_ended()
    clock.advance(0.5)
    memory.session_ended()  # the burst goes on: the release waits for its end
    clock.advance(0.9)
    assert released == []
    clock.advance(0.1)
    assert released == [61.5] and memory.releases == 1
    clock.advance(60)
    assert released == [61.5] and not clock.getDelayedCalls()


def test_sessions_that_never_stop_ending_still_get_a_release():
    clock, memory, released = make(after=1, quiet=1.0, max_wait=10.0)
    for _ in range(30):
        memory.session_ended()
        clock.advance(0.5)
    assert released == [10.0]


def test_the_registry_counts_every_ended_session_and_stopping_forgets_the_release():
    clock, memory, released = make(after=2)
    sessions = SessionRegistry(clock, 60, memory=memory)
    sessions.close(sessions.create("alice", "sse").id)
    sessions.close("not a session")
    sessions.create("bob", "streamable")
    sessions.close_user("bob")
    clock.advance(1)
    assert released == [1.0]
    sessions.create("carol", "sse")
    sessions.create("carol", "sse")
    sessions.stopService()
    assert not clock.getDelayedCalls()
    clock.advance(60)
    assert released == [1.0]


def test_without_a_trim_nothing_is_scheduled(monkeypatch):
    from mcproxy.session import memory as module

    monkeypatch.setattr(module, "malloc_trim", lambda: None)  # a C library without malloc_trim
    clock = Clock()
    memory = MemoryRelease(clock, after=1)
    memory.session_ended()
    assert not clock.getDelayedCalls()


def test_glibc_trims():
    trim = malloc_trim()
    if platform.libc_ver()[0] != "glibc":
        assert trim is None
        return
    assert trim is not None and trim() in (0, 1)
