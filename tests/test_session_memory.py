"""The memory of ended sessions goes back to the system: `MemoryRelease` on the clock, the
C allocator the daemon starts again on, and what a release does on each allocator."""

import gc
import platform
import sys

import pytest
from twisted.internet.task import Clock

from mcproxy.session import memory as module
from mcproxy.session.memory import MemoryRelease, give_back, malloc_trim, run_on_c_allocator
from mcproxy.session.registry import SessionRegistry

GLIBC = platform.libc_ver()[0] == "glibc"


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
    if not GLIBC:
        assert trim is None
        return
    assert trim is not None and trim() in (0, 1)


def test_the_daemon_starts_again_as_it_was_started_on_the_c_allocator():
    """On glibc, whose malloc_trim hands free pages back; elsewhere nothing is done."""
    started = []
    environ = {"PATH": "/usr/bin", "LISTEN_FDS": "1"}
    run_on_c_allocator(environ, lambda *arguments: started.append(arguments))
    if not GLIBC:
        assert started == []
        return
    assert started == [
        (sys.executable, sys.orig_argv, {"PATH": "/usr/bin", "LISTEN_FDS": "1", "PYTHONMALLOC": "malloc"})
    ]
    assert environ == {"PATH": "/usr/bin", "LISTEN_FDS": "1"}  # the caller's mapping is left alone


@pytest.mark.parametrize("chosen", ["malloc", "pymalloc", "debug"])
def test_an_allocator_chosen_already_is_kept(chosen):
    """An operator's PYTHONMALLOC, or the process's own second start: no third."""
    started = []
    run_on_c_allocator({"PYTHONMALLOC": chosen}, lambda *arguments: started.append(arguments))
    assert started == []


def test_without_a_trim_the_allocator_is_kept(monkeypatch):
    monkeypatch.setattr(module, "malloc_trim", lambda: None)
    started = []
    run_on_c_allocator({}, lambda *arguments: started.append(arguments))
    assert started == []


def test_a_release_on_the_c_allocator_empties_the_free_lists_then_trims(monkeypatch):
    steps = []
    monkeypatch.setattr(module, "malloc_trim", lambda: lambda: steps.append("trim"))
    monkeypatch.setattr(gc, "collect", lambda *generation: steps.append(("collect", generation)))
    monkeypatch.setenv("PYTHONMALLOC", "malloc")
    release = give_back()
    assert release is not None
    release()
    assert steps == [("collect", ()), "trim"]  # a full collection: the one that empties the free lists


@pytest.mark.parametrize("allocator", [None, "pymalloc"])
def test_a_release_on_pythons_allocator_only_trims(monkeypatch, allocator):
    def trim():
        return 1

    monkeypatch.setattr(module, "malloc_trim", lambda: trim)
    if allocator is None:
        monkeypatch.delenv("PYTHONMALLOC", raising=False)
    else:
        monkeypatch.setenv("PYTHONMALLOC", allocator)
    assert give_back() is trim


def test_no_release_without_a_trim(monkeypatch):
    monkeypatch.setattr(module, "malloc_trim", lambda: None)
    monkeypatch.setenv("PYTHONMALLOC", "malloc")
    assert give_back() is None
