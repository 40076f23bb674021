"""What answers at a browserURL is untrusted: a stand-in DevTools endpoint over a real
WebSocket sends garbage, oversize and huge frames and hostile accessibility trees; the
proxy drops, bounds or decodes them off the reactor and keeps serving."""

import threading

import attrs
import pytest
import pytest_twisted
from twisted.internet import task

from mcproxy.browser.cdp import connection as cdp
from mcproxy.browser.cdp.messages import THREAD_DECODE_BYTES
from mcproxy.browser.cdp.websocket import open_websocket
from mcproxy.errors import BrowserUnavailable, CDPError
from mcproxy.testing.fake_cdp import HANG, ax_cycle, ax_deep, ax_duplicated, ax_wide
from mcproxy.tools import snapshot


async def connect(reactor, server, **kw):
    protocol = await open_websocket(reactor, server.url, address="127.0.0.1", port=server.port_number, timeout=5, **kw)
    return protocol.cdp


class ReactorWitness:
    """Holds work in a worker thread until the reactor has run a timed call meanwhile, which
    it can only do if that work is not holding the reactor thread."""

    def __init__(self, reactor):
        self.reactor = reactor
        self.reactor_ran = threading.Event()
        self.threads: list[str] = []

    def wrap(self, function):
        def wrapped(*args):
            if threading.current_thread() is not threading.main_thread():
                self.threads.append(threading.current_thread().name)
                self.reactor.callFromThread(self.reactor.callLater, 0.01, self.reactor_ran.set)
                assert self.reactor_ran.wait(30), "the reactor did not run while the work was in a thread"
            return function(*args)

        return wrapped


@pytest_twisted.ensureDeferred
async def test_garbage_frames_are_dropped_and_the_connection_keeps_answering(reactor, fake_server):
    link = await connect(reactor, fake_server)
    try:
        chrome = fake_server.chrome
        chrome.handlers["Runtime.evaluate"] = lambda p, s: HANG
        pending = link.send("Runtime.evaluate")
        garbage = [
            "not json", "[" * 200_000, "[1]", "null", '{"id": "1", "result": {}}', '{"id": 1, "result": [1]}',
            '{"method": 5}', '{"method": "Target.targetCreated", "params": "x"}', '{"id": 424242, "result": {}}',
            b'{"method": "Runtime.consoleAPICalled", "params": {"t": "\xff\xfe"}}',  # not UTF-8
            b'{"id": 9, "result": {"v": "\xc3"}}' + b" " * (1 << 20),  # not UTF-8, and big (a thread)
        ]  # fmt: skip
        for text in garbage:
            chrome.send_raw(text)
        version = await link.send("Browser.getVersion")
        assert version["product"] == "FakeChrome/1.0"
        # {"id": 1, "result": [1]} answered the pending call 1 with a malformed reply: only it fails.
        with pytest.raises(CDPError, match=r"^Runtime.evaluate: the browser sent a malformed reply"):
            await pending
        assert link.dropped == len(garbage) - 1 and not link.closed  # the unknown id is ignored, not counted
        assert (await link.send("Browser.getVersion"))["product"] == "FakeChrome/1.0"
    finally:
        link.abort()


@pytest_twisted.ensureDeferred
async def test_an_oversize_frame_closes_the_connection_with_a_reason(reactor, fake_server):
    link = await connect(reactor, fake_server, max_message_bytes=256 * 1024)
    fake_server.chrome.handlers["Runtime.evaluate"] = lambda p, s: HANG
    pending = link.send("Runtime.evaluate")
    fake_server.chrome.emit("Page.screencastFrame", {"data": "x" * 300_000}, session_id="S1")
    with pytest.raises(BrowserUnavailable, match=r"lost during Runtime\.evaluate") as raised:
        await pending
    assert "exceeds payload limit of 262144" in raised.value.message
    assert raised.value.message.endswith("up to browser.max_message_bytes)") and link.closed


@pytest_twisted.ensureDeferred
async def test_a_huge_valid_frame_is_decoded_off_the_reactor_and_keeps_its_place(reactor, fake_server, monkeypatch):
    witness = ReactorWitness(reactor)
    monkeypatch.setattr(cdp, "parse_message", witness.wrap(cdp.parse_message))
    link = await connect(reactor, fake_server)
    try:
        ticks = []
        ticker = task.LoopingCall(lambda: ticks.append(1))
        ticker.clock = reactor
        ticker.start(0.005)
        order = []
        chrome = fake_server.chrome
        chrome.handlers["Page.captureScreenshot"] = lambda p, s: HANG
        chrome.handlers["Runtime.evaluate"] = lambda p, s: HANG
        big, small = link.send("Page.captureScreenshot"), link.send("Runtime.evaluate")
        big.addCallback(lambda result: order.append(("big", len(result["data"]))))
        small.addCallback(lambda result: order.append(("small", result)))
        link.subscribe("Page.loadEventFired", lambda m, p: order.append(("event", p)), session_id="S1")
        # 8 MiB of JSON, then a small event and a small reply right behind it on the wire.
        chrome.send_raw('{"id": 1, "result": {"data": "' + "x" * (8 * THREAD_DECODE_BYTES) + '"}}')
        chrome.emit("Page.loadEventFired", {"timestamp": 1}, session_id="S1")
        chrome.send_raw('{"id": 2, "result": {"value": 2}}')
        await small
        ticker.stop()
        assert order == [("big", 8 * THREAD_DECODE_BYTES), ("event", {"timestamp": 1}), ("small", {"value": 2})]
        assert len(witness.threads) == 1 and witness.reactor_ran.is_set() and ticks
    finally:
        link.abort()


@pytest_twisted.ensureDeferred
async def test_hostile_accessibility_trees_through_take_snapshot(reactor, fake_server, monkeypatch):
    from mcproxy.browser.pool import BrowserPool
    from mcproxy.config import BrowserConfig

    witness = ReactorWitness(reactor)
    monkeypatch.setattr(snapshot, "render", witness.wrap(snapshot.render))
    pool = BrowserPool(reactor, attrs.evolve(BrowserConfig(), connect_timeout=5.0, call_timeout=60.0))
    try:
        browser = pool.browser_for("alice", fake_server.url)
        await browser.connected(5)
        [page] = browser.pages()
        trees = {
            "duplicated": ax_duplicated(30),
            "cycle": ax_cycle(),
            "wide": ax_wide(200_000),
            "deep": ax_deep(200_000),
        }
        shown = {}
        for name, nodes in trees.items():
            fake_server.chrome.handlers["Accessibility.getFullAXTree"] = lambda p, s, nodes=nodes: {"nodes": nodes}
            shown[name] = (await snapshot.take_snapshot(page, verbose=True)).splitlines()
        assert len(shown["duplicated"]) == 31 and len(shown["cycle"]) == 3
        assert len(shown["wide"]) == snapshot.MAX_NODES + 1
        assert shown["wide"][-1].startswith("Note: this snapshot is incomplete")
        assert len(shown["deep"]) == snapshot.MAX_DEPTH + 2 and "nested more than" in shown["deep"][-1]
        # Element n5 (backend node 5) got uid 3_2 in the wide snapshot (the third; the cycle
        # had only n0-n2), kept it in the deep one and keeps it again: uids stay stable
        # through threaded renders.
        again = (await snapshot.take_snapshot(page, verbose=True)).splitlines()
        assert again == shown["deep"] and '          uid=3_2 generic "d5"' in again
        assert snapshot.resolve_uid(page, "3_2") == 5
        # The three big trees were rendered in a thread while the reactor went on.
        assert len(witness.threads) == 3
    finally:
        await pool.close()
