"""Session registry: ownership, idle expiry on the clock, bulk endings."""

from twisted.internet.task import Clock

from mcproxy.session.registry import SessionRegistry
from mcproxy.testing.deferreds import success_result_of


def make(idle=60):
    clock = Clock()
    return clock, SessionRegistry(clock, idle)


def test_ids_are_unguessable_and_lookups_need_the_owner():
    _, sessions = make()
    a = sessions.create("alice", "sse")
    b = sessions.create("alice", "streamable")
    assert a.id != b.id and len(a.id) == 32
    assert sessions.get(a.id, "alice") is a
    assert sessions.get(a.id, "bob") is None
    assert sessions.get("missing", "alice") is None
    assert sessions.get(None, "alice") is None


def test_idle_expiry_runs_the_close_callbacks():
    clock, sessions = make(idle=60)
    s = sessions.create("alice", "streamable")
    ended = []
    s.on_close(lambda: ended.append("stream"))
    clock.advance(59)
    assert sessions.get(s.id, "alice") is s
    s.touch()
    clock.advance(59)
    assert not ended
    clock.advance(1)
    assert ended == ["stream"] and s.closed
    assert sessions.get(s.id, "alice") is None and sessions.count() == 0


def test_open_streams_hold_the_session():
    clock, sessions = make(idle=10)
    s = sessions.create("alice", "sse")
    s.hold()
    clock.advance(1000)
    assert not s.closed
    s.release()
    clock.advance(9)
    assert not s.closed
    clock.advance(1)
    assert s.closed


def test_counts_and_bulk_closing():
    clock, sessions = make()
    a1 = sessions.create("alice", "sse")
    sessions.create("alice", "streamable")
    b = sessions.create("bob", "streamable")
    assert sessions.count() == 3
    assert sessions.count("sse") == 1 and sessions.count("streamable") == 2
    assert sessions.count_for_user("alice") == 2 and sessions.count_for_user("carol") == 0
    clock.advance(5)
    b.touch()
    assert sessions.last_activity("bob") == 5 and sessions.last_activity("carol") is None
    ended = []
    a1.on_close(lambda: ended.append("a1"))
    assert sessions.close_user("alice") == 2
    assert ended == ["a1"] and sessions.count() == 1
    sessions.close_all()
    assert sessions.count() == 0 and b.closed
    assert not clock.getDelayedCalls()


def test_close_is_idempotent_and_late_callbacks_run_at_once():
    _, sessions = make()
    s = sessions.create("alice", "sse")
    assert sessions.close(s.id) is True
    assert sessions.close(s.id) is False
    late = []
    s.on_close(lambda: late.append(True))
    assert late == [True]


def test_a_failing_close_callback_does_not_stop_the_others():
    _, sessions = make()
    s = sessions.create("alice", "sse")
    ran = []
    s.on_close(lambda: 1 / 0)
    s.on_close(lambda: ran.append(True))
    sessions.close(s.id)
    assert ran == [True]


def test_sessions_end_when_their_token_is_revoked_expired_or_deleted():
    from mcproxy.auth.tokens import create_token
    from mcproxy.session.revocation import RevocationWatch
    from mcproxy.storage.memory import MemoryStore

    clock, sessions = make(idle=3600)
    clock.advance(1_800_000_000)
    store = MemoryStore()
    _, kept = success_result_of(create_token(store, "alice", ["tools:*"], None, clock))
    _, revoked = success_result_of(create_token(store, "alice", ["tools:*"], None, clock))
    _, expiring = success_result_of(create_token(store, "bob", ["tools:*"], 7, clock))
    _, rotated = success_result_of(create_token(store, "bob", ["tools:*"], None, clock))
    opened = {
        name: sessions.create(user, "sse", record.token_id)
        for name, user, record in (
            ("kept", "alice", kept),
            ("revoked", "alice", revoked),
            ("expiring", "bob", expiring),
            ("rotated", "bob", rotated),
        )
    }
    no_token = sessions.create("local", "streamable")
    watch = RevocationWatch(sessions, store, clock, interval=5)
    watch.startService()
    success_result_of(store.revoke_token(revoked.token_id, clock.seconds()))
    success_result_of(store.revoke_token(rotated.token_id, clock.seconds() + 60))  # a rotation's grace period
    clock.advance(5)
    assert [name for name, s in opened.items() if s.closed] == ["revoked"]
    clock.advance(5)
    assert [name for name, s in opened.items() if s.closed] == ["revoked", "expiring"]
    clock.advance(60)
    assert [name for name, s in opened.items() if s.closed] == ["revoked", "expiring", "rotated"]
    assert not opened["kept"].closed and not no_token.closed
    watch.stopService()
    success_result_of(store.revoke_token(kept.token_id, clock.seconds()))
    clock.advance(30)
    assert not opened["kept"].closed  # a stopped watch checks nothing
