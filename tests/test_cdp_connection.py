"""The CDP client: the protocol core on a Clock, then autobahn against a fake CDP server."""

import json

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.task import Clock

from mcproxy.browser.cdp.connection import ALL, CDPConnection
from mcproxy.browser.cdp.messages import THREAD_DECODE_BYTES
from mcproxy.browser.cdp.websocket import open_websocket
from mcproxy.errors import BrowserUnavailable, CDPError, InvalidBrowserURL
from mcproxy.testing.fake_cdp import HANG, FakeCDPError
from mcproxy.testing.fuzz import fuzz_settings


class Wire:
    """Captures what a CDPConnection writes."""

    def __init__(self):
        self.sent = []
        self.aborted = False

    def write(self, text):
        self.sent.append(json.loads(text))

    def abort(self):
        self.aborted = True


def make(clock=None, timeout=5.0):
    wire = Wire()
    connection = CDPConnection(clock or Clock(), wire.write, wire.abort, default_timeout=timeout)
    return connection, wire


def outcome(d):
    box = []
    d.addBoth(box.append)
    return box[0] if box else None


def test_ids_increase_and_replies_are_matched_by_id():
    connection, wire = make()
    first = connection.send("Browser.getVersion")
    second = connection.send("Runtime.evaluate", {"expression": "1"}, session_id="S1")
    assert [m["id"] for m in wire.sent] == [1, 2]
    assert wire.sent[1] == {"id": 2, "method": "Runtime.evaluate", "params": {"expression": "1"}, "sessionId": "S1"}
    connection.message_received(json.dumps({"id": 2, "result": {"result": {"value": 1}}, "sessionId": "S1"}))
    assert outcome(second) == {"result": {"value": 1}}
    assert not first.called
    connection.message_received(json.dumps({"id": 1, "result": {"product": "Chrome"}}))
    assert outcome(first) == {"product": "Chrome"}
    assert connection.pending_count == 0


def test_error_reply_becomes_cdp_error_with_chromes_message():
    connection, _ = make()
    call = connection.send("DOM.resolveNode", {"backendNodeId": 9})
    connection.message_received(
        json.dumps({"id": 1, "error": {"code": -32000, "message": "No node with given id found"}})
    )
    failure = outcome(call)
    assert failure.check(CDPError)
    assert failure.value.cdp_code == -32000
    assert failure.value.message == "DOM.resolveNode: No node with given id found"


def test_timeout_uses_the_clock_and_forgets_the_call():
    clock = Clock()
    connection, _ = make(clock, timeout=5)
    default = connection.send("Page.navigate", {"url": "about:blank"})
    short = connection.send("Page.reload", timeout=1)
    clock.advance(1)
    assert "did not answer Page.reload within 1 s" in outcome(short).value.message
    assert not default.called
    clock.advance(4)
    assert outcome(default).check(BrowserUnavailable)
    assert connection.pending_count == 0
    connection.message_received(json.dumps({"id": 1, "result": {}}))  # a late reply is ignored


def test_cancel_removes_the_call_from_the_pending_map():
    connection, _ = make()
    call = connection.send("Runtime.evaluate")
    assert connection.pending_count == 1
    call.cancel()
    assert outcome(call).check(defer.CancelledError)
    assert connection.pending_count == 0


def test_disconnect_fails_everything_pending_and_later_calls_fail_fast():
    connection, _ = make()
    calls = [connection.send("Runtime.evaluate"), connection.send("Page.navigate", session_id="S")]
    reasons = []
    connection.add_close_listener(reasons.append)
    connection.connection_lost("peer went away")
    failures = [outcome(call) for call in calls]
    assert all(f.check(BrowserUnavailable) for f in failures)
    assert "lost during Page.navigate (peer went away)" in failures[1].value.message
    assert reasons == ["peer went away"]
    assert outcome(connection.send("Browser.getVersion")).check(BrowserUnavailable)


def test_events_are_routed_by_session_and_method():
    connection, _ = make()
    seen = []
    connection.subscribe("Page.loadEventFired", lambda m, p: seen.append(("S1 load", p)), session_id="S1")
    connection.subscribe(None, lambda m, p: seen.append(("S1 any", m)), session_id="S1")
    unsubscribe = connection.subscribe("Target.targetCreated", lambda m, p: seen.append(("browser", m)))
    connection.message_received(json.dumps({"method": "Page.loadEventFired", "params": {"t": 1}, "sessionId": "S1"}))
    connection.message_received(json.dumps({"method": "Page.loadEventFired", "params": {}, "sessionId": "S2"}))
    connection.message_received(json.dumps({"method": "Target.targetCreated", "params": {}}))
    unsubscribe()
    connection.message_received(json.dumps({"method": "Target.targetCreated", "params": {}}))
    connection.message_received("not json")
    assert seen == [("S1 load", {"t": 1}), ("S1 any", "Page.loadEventFired"), ("browser", "Target.targetCreated")]


async def connect(reactor, server, **kw):
    return await open_websocket(reactor, server.url, address="127.0.0.1", port=server.port_number, timeout=5, **kw)


@pytest_twisted.ensureDeferred
async def test_websocket_round_trip_without_origin_header(reactor, fake_server):
    protocol = await connect(reactor, fake_server, host_header=f"localhost:{fake_server.port_number}")
    try:
        version = await protocol.cdp.send("Browser.getVersion")
        assert version["product"] == "FakeChrome/1.0"
        [request] = fake_server.requests
        assert "origin" not in request.headers
        assert request.headers["host"] == f"localhost:{fake_server.port_number}"
        fake_server.chrome.handlers["DOM.getDocument"] = lambda p, s: (_ for _ in ()).throw(
            FakeCDPError("Document needs to be loaded")
        )
        with pytest.raises(CDPError, match="Document needs to be loaded"):
            await protocol.cdp.send("DOM.getDocument", session_id="S1")
    finally:
        protocol.cdp.abort()


@pytest_twisted.ensureDeferred
async def test_unanswered_call_times_out_and_abrupt_disconnect_fails_pending(reactor, fake_server):
    fake_server.chrome.handlers["Runtime.evaluate"] = lambda p, s: HANG
    protocol = await connect(reactor, fake_server, call_timeout=0.2)
    with pytest.raises(BrowserUnavailable, match=r"did not answer Runtime\.evaluate within 0\.2 s"):
        await protocol.cdp.send("Runtime.evaluate")
    hanging = protocol.cdp.send("Runtime.evaluate", timeout=30)
    fake_server.drop_all()
    with pytest.raises(BrowserUnavailable, match=r"lost during Runtime\.evaluate"):
        await hanging
    assert protocol.cdp.closed


@pytest_twisted.ensureDeferred
async def test_huge_messages_within_and_over_the_cap(reactor, fake_server):
    protocol = await connect(reactor, fake_server, max_message_bytes=4 * 1024 * 1024)
    big = "x" * (3 * 1024 * 1024)
    fake_server.chrome.handlers["Page.captureScreenshot"] = lambda p, s: {"data": big}
    result = await protocol.cdp.send("Page.captureScreenshot")
    assert len(result["data"]) == len(big)
    fake_server.chrome.handlers["Page.captureScreenshot"] = lambda p, s: {"data": big + big}
    with pytest.raises(BrowserUnavailable, match=r"lost during Page\.captureScreenshot"):
        await protocol.cdp.send("Page.captureScreenshot")


@pytest_twisted.ensureDeferred
async def test_refused_handshake_explains_remote_allow_origins(reactor, fake_server):
    fake_server.refuse = (403, "Forbidden")
    with pytest.raises(InvalidBrowserURL, match="--remote-allow-origins"):
        await connect(reactor, fake_server)


@pytest_twisted.ensureDeferred
async def test_connect_to_a_closed_port_is_browser_unavailable(reactor, fake_server):
    with pytest.raises(BrowserUnavailable, match="cannot open the DevTools WebSocket"):
        await open_websocket(reactor, "ws://127.0.0.1:1/devtools/browser/x", address="127.0.0.1", port=1, timeout=5)


@pytest_twisted.ensureDeferred
async def test_pool_over_a_websocket_url_reconnects_after_a_drop(reactor, fake_server):
    """The whole real path (validation, autobahn, ClientService) with a ws:// browserURL."""
    import attrs
    from twisted.internet.task import deferLater

    from mcproxy.browser.pool import BrowserPool
    from mcproxy.config import BrowserConfig

    config = attrs.evolve(BrowserConfig(), backoff_initial=0.2, connect_timeout=5.0)
    pool = BrowserPool(reactor, config)
    try:
        browser = pool.browser_for("alice", fake_server.url)
        await browser.connected(5)
        [page] = browser.pages()
        methods = fake_server.chrome.methods()
        assert methods[0] == "Target.setDiscoverTargets" and "Target.getTargets" in methods
        fake_server.drop_all()
        while browser.status == "connected":
            await deferLater(reactor, 0.02)
        assert browser.status == "reconnecting"
        while browser.status != "connected":
            await deferLater(reactor, 0.02)
        assert browser.pages() == [page] and page.session_id.endswith("-2")
        assert len(fake_server.requests) == 2
    finally:
        await pool.close()
    assert browser.status == "disconnected" and browser.cdp is None
    for _ in range(100):  # the server side notices the closed socket a moment later
        if not fake_server.connections:
            break
        await deferLater(reactor, 0.02)
    assert fake_server.connections == []


# -- what a hostile browser sends (more over a real WebSocket in test_hostile_browser.py) -----


GARBAGE = [
    "not json",
    b"\xff\xfe not utf-8",
    "[" * 100_000 + "]" * 100_000,  # nesting deeper than the parser's stack
    "[1, 2]",
    '"a string"',
    "{}",
    '{"id": "1", "result": {}}',
    '{"id": true, "result": {}}',
    '{"id": 1.5, "result": {}}',
    '{"method": 7}',
    '{"method": "Page.loadEventFired", "params": [1]}',
    '{"method": "Page.loadEventFired", "params": {}, "sessionId": 3}',
    '{"id": 1, "result": {}, "sessionId": ["S1"]}',
]


def test_garbage_is_dropped_and_counted_and_the_connection_keeps_working():
    connection, _ = make()
    call = connection.send("Browser.getVersion")
    events = []
    connection.subscribe(ALL, lambda m, p: events.append(m), session_id="S1")
    connection.subscribe(ALL, lambda m, p: events.append(m))
    for text in GARBAGE:
        connection.message_received(text)
    assert connection.dropped == len(GARBAGE)
    assert not call.called and events == []
    connection.message_received(json.dumps({"id": 999, "result": {}}))  # answers nothing: ignored
    connection.message_received(json.dumps({"id": 1, "result": {"product": "Chrome"}}))
    assert outcome(call) == {"product": "Chrome"}
    assert connection.dropped == len(GARBAGE) and not connection.closed


@pytest.mark.parametrize(
    "reply, error",
    [
        ({"result": [1, 2]}, "Runtime.evaluate: FakeChrome sent a malformed reply (its result is not an object)"),
        ({"result": "x"}, "Runtime.evaluate: FakeChrome sent a malformed reply (its result is not an object)"),
        ({"error": "boom"}, "Runtime.evaluate: unknown error"),
        ({"error": {"message": 5, "code": "x", "data": {"a": 1}}}, "Runtime.evaluate: unknown error"),
        ({"error": {"message": "Bad", "code": -32000, "data": "details"}}, "Runtime.evaluate: Bad (details)"),
    ],
)
def test_a_malformed_reply_fails_only_the_call_it_answers(reply, error):
    connection = CDPConnection(Clock(), lambda text: None, lambda: None, description="FakeChrome")
    first, second = connection.send("Runtime.evaluate"), connection.send("Runtime.evaluate")
    connection.message_received(json.dumps({"id": 1, **reply}))
    failure = outcome(first)
    assert failure.check(CDPError) and failure.value.message == error
    assert failure.value.cdp_code in (None, -32000)
    assert not second.called and connection.pending_count == 1


class ManualThreads:
    """A run_in_thread whose "threads" finish when the test says so."""

    def __init__(self):
        self.running = []
        self.paused = 0
        self.resumed = 0

    def run(self, function, *args):
        done = defer.Deferred()
        self.running.append((done, function, args))
        return done

    def finish(self):
        done, function, args = self.running.pop(0)
        try:
            result = function(*args)
        except Exception:
            done.errback()
        else:
            done.callback(result)


def threaded():
    threads = ManualThreads()
    connection = CDPConnection(
        Clock(),
        lambda text: None,
        lambda: None,
        run_in_thread=threads.run,
        pause_reading=lambda: setattr(threads, "paused", threads.paused + 1),
        resume_reading=lambda: setattr(threads, "resumed", threads.resumed + 1),
    )
    return connection, threads


def test_a_big_message_is_decoded_in_a_thread_and_later_ones_wait_for_it():
    connection, threads = threaded()
    big_call, small_call = connection.send("Page.captureScreenshot"), connection.send("Runtime.evaluate")
    order = []
    big_call.addCallback(lambda r: order.append(("big", len(r["data"]))))
    small_call.addCallback(lambda r: order.append(("small", r)))
    connection.subscribe("Page.loadEventFired", lambda m, p: order.append(("event", p)))
    big = json.dumps({"id": 1, "result": {"data": "x" * THREAD_DECODE_BYTES}})
    connection.message_received(big.encode())
    connection.message_received(json.dumps({"method": "Page.loadEventFired", "params": {"n": 1}}))
    connection.message_received(json.dumps({"id": 2, "result": {"v": 2}}))
    # The big one is in its "thread", reading is paused, and nothing overtook it.
    assert len(threads.running) == 1 and threads.paused == 1 and threads.resumed == 0
    assert order == []
    threads.finish()
    assert order == [("big", THREAD_DECODE_BYTES), ("event", {"n": 1}), ("small", {"v": 2})]
    assert threads.resumed == 1
    # Small messages alone never go to a thread.
    connection.message_received(json.dumps({"method": "Page.loadEventFired", "params": {"n": 2}}))
    assert threads.running == [] and order[-1] == ("event", {"n": 2})


def test_big_garbage_is_dropped_after_its_thread_and_the_queue_goes_on():
    connection, threads = threaded()
    call = connection.send("Runtime.evaluate")
    connection.message_received("[" * THREAD_DECODE_BYTES)
    connection.message_received(json.dumps({"id": 1, "result": {}}))
    assert not call.called
    threads.finish()
    assert outcome(call) == {} and connection.dropped == 1


def test_a_disconnect_while_decoding_comes_after_the_messages_before_it():
    connection, threads = threaded()
    answered, unanswered = connection.send("Page.captureScreenshot"), connection.send("Runtime.evaluate")
    reasons = []
    connection.add_close_listener(reasons.append)
    connection.message_received(json.dumps({"id": 1, "result": {"data": "x" * THREAD_DECODE_BYTES}}))
    connection.connection_lost("peer went away")
    assert not answered.called and not unanswered.called and reasons == []
    threads.finish()
    assert len(outcome(answered)["data"]) == THREAD_DECODE_BYTES
    assert "lost during Runtime.evaluate (peer went away)" in outcome(unanswered).value.message
    assert reasons == ["peer went away"] and connection.closed
    assert threads.resumed == 0  # a lost transport is not resumed


def test_a_flood_is_handled_a_share_per_reactor_turn():
    """A browser sending thousands of events at once gets MESSAGES_PER_TURN of them handled a
    turn, reading paused between, so other users' sockets are served in between."""
    from mcproxy.browser.cdp.connection import MESSAGES_PER_TURN

    connection, threads = threaded()
    seen = []
    connection.subscribe("Runtime.consoleAPICalled", lambda m, p: seen.append(p["n"]))
    for n in range(2 * MESSAGES_PER_TURN + 50):
        connection.message_received(json.dumps({"method": "Runtime.consoleAPICalled", "params": {"n": n}}))
    assert seen == list(range(MESSAGES_PER_TURN)) and threads.paused == 1
    # (A Clock runs the turns scheduled meanwhile in one advance; a reactor, one a turn.)
    connection.clock.advance(0)
    assert seen == list(range(2 * MESSAGES_PER_TURN + 50))
    assert threads.paused == threads.resumed == 2  # held twice, a share at a time
    connection.clock.advance(0)  # a quiet turn: a fresh share, nothing held
    connection.message_received(json.dumps({"method": "Runtime.consoleAPICalled", "params": {"n": -1}}))
    assert seen[-1] == -1 and threads.paused == 2


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=30,
)


@fuzz_settings(300)
@given(_JSON, st.sampled_from([None, 1, 2]))
def test_big_messages_decode_in_pieces_exactly_as_json_loads_does(value, indent):
    """Big messages are decoded with many small decoder calls (the thread lets go of the GIL
    between them); the result is json.loads's, and broken JSON is refused the same way."""
    from mcproxy.browser.cdp.messages import loads_in_pieces

    text = json.dumps(value, indent=indent)
    assert loads_in_pieces(text) == json.loads(text)
    for broken in (text + " x", "[" + text, "{" + text + "}", f"[{text},]"):
        with pytest.raises(ValueError):
            loads_in_pieces(broken)
