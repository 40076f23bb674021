"""What survives a change of a user's owner, against a real Redis: the page book (ids,
flags, emulation, isolated contexts) and Streamable HTTP session records, every write
fenced with the owner's token. Each test works under a key prefix of its own.

An "owner" here is what a process of the cluster holds for a user: the fencing token of
its claim (the owner record ``owner:<user>`` carries the current one) and its writer.
"""

import json

import pytest_twisted
from test_transports_sdk import _auth, _call, _events, _init_body, _post
from twisted.internet.defer import fail
from twisted.internet.task import Clock

from mcproxy.auth.admission import Admission
from mcproxy.browser.emulation import Emulation, Viewport, emulation_listener, set_emulation
from mcproxy.browser.page import Page
from mcproxy.browser.pool import UserBrowser
from mcproxy.cluster.control import CoordinationUnavailable
from mcproxy.cluster.state import FencedWriter, RedisPageBook, RedisSessionRecords
from mcproxy.config import BrowserConfig, Config
from mcproxy.session.registry import SessionRegistry
from mcproxy.testing.fake_cdp import FakeChrome, memory_link
from mcproxy.testing.fake_tools import FakeToolProvider, fake_authenticate
from mcproxy.testing.tool_calls import until
from mcproxy.web.front import build_router
from mcproxy.web.origins import OriginPolicy
from mcproxy.web.site import ConnectionLimits, ProxySite
from mcproxy.web.transports import McpTransports

USER = "alice"
CLIENT = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}


class Owner:
    """One process's hold on users: the token of its claim and a writer using it."""

    def __init__(self, reactor, control, token: int | None):
        self.token = token
        self.writer = FencedWriter(reactor, lambda user: self.token)
        self.writer.start(control)

    def book(self, user=USER) -> RedisPageBook:
        return RedisPageBook(self.writer, user)


async def claim(control, token: int, user=USER) -> None:
    """Make ``token`` the current one of ``user``'s owner record (what CLAIM does)."""
    await control.redis.hset(control.key("owner", user), "token", str(token))


async def pages_hash(control, user=USER) -> dict:
    return await control.redis.hgetall(control.key("pages", user))


def page(book, target_id: str) -> Page:
    """A page as `PageTargets` makes one for a target new to this process."""
    made = Page(None, book.page_id(target_id), target_id)
    book.restore(made)
    return made


@pytest_twisted.ensureDeferred
async def test_a_new_owner_keeps_page_ids_flags_emulation_and_contexts(reactor, control):
    await claim(control, 100)
    first = Owner(reactor, control, 100)
    book = first.book()
    await book.load()
    blank, opened, other = page(book, "T1"), page(book, "T2"), page(book, "T3")
    assert (blank.page_id, opened.page_id, other.page_id) == (1, 2, 3)
    opened.via_proxy, opened.opener = True, "session-1"
    opened.state.emulation = Emulation(network="Slow 3G", cpu_rate=4, viewport=Viewport(390, 844, 3, mobile=True))
    book.record(opened)
    book.context_made("shop", "CTX-1")
    await first.writer.flushed()

    await claim(control, 200)  # the user moved: a larger token
    second = Owner(reactor, control, 200)
    book = second.book()
    await book.load()
    assert book.contexts == {"shop": "CTX-1"}
    again = {target: page(book, target) for target in ("T3", "T2", "T1", "T4")}  # any order
    assert {target: p.page_id for target, p in again.items()} == {"T1": 1, "T2": 2, "T3": 3, "T4": 4}
    assert (again["T2"].via_proxy, again["T2"].opener) == (True, "session-1")
    assert again["T2"].state.emulation == opened.state.emulation
    assert not again["T1"].via_proxy and again["T1"].opener is None and again["T1"].state.emulation is None


@pytest_twisted.ensureDeferred
async def test_writes_with_an_old_token_are_refused(reactor, control):
    await claim(control, 100)
    stale = Owner(reactor, control, 100)
    book = stale.book()
    await book.load()
    kept = page(book, "T1")
    await stale.writer.flushed()
    before = await pages_hash(control)
    assert json.loads(before["t:T1"]) == {"id": 1}

    await claim(control, 200)  # another process owns the user now; this one does not know yet
    kept.via_proxy = True
    book.record(kept)
    page(book, "T2")
    book.forget("T1")
    book.context_made("shop", "CTX-9")
    await stale.writer.flushed()
    assert await pages_hash(control) == before
    assert await control.redis.hgetall(control.key("ctx", USER)) == {}
    assert stale.writer.refused == 1  # one call carried all four changes

    current = Owner(reactor, control, 200)
    book = current.book()
    await book.load()
    page(book, "T5")
    await current.writer.flushed()
    assert json.loads((await pages_hash(control))["t:T5"]) == {"id": 2}


@pytest_twisted.ensureDeferred
async def test_page_ids_are_never_handed_out_twice(reactor, control):
    await claim(control, 100)
    owner = Owner(reactor, control, 100)
    book = owner.book()
    await book.load()
    for target in ("T1", "T2", "T3"):
        page(book, target)
    book.forget("T3")  # closed: its id is not used again
    book.prune({"T1"})  # T2 went while the proxy was away
    await owner.writer.flushed()
    assert sorted(await pages_hash(control)) == ["#next", "t:T1"]

    book = Owner(reactor, control, 100).book()
    await book.load()
    assert page(book, "T9").page_id == 4

    # A counter behind the records (its write was lost) still hands out fresh ids.
    await control.redis.hset(control.key("pages", USER), "#next", "2")
    book = Owner(reactor, control, 100).book()
    await book.load()
    assert page(book, "T10").page_id == 5


class Flaky:
    """A control whose next ``failures`` script calls fail as if Redis were away."""

    def __init__(self, control, failures: int):
        self.target = control
        self.failures = failures
        self.timeout = control.timeout

    def key(self, *parts):
        return self.target.key(*parts)

    def eval(self, script, keys, args):
        if self.failures:
            self.failures -= 1
            return fail(CoordinationUnavailable("Redis did not answer within 1 s"))
        return self.target.eval(script, keys, args)


@pytest_twisted.ensureDeferred
async def test_writes_are_retried_in_order_until_redis_answers(reactor, control):
    await claim(control, 100)
    flaky = Flaky(control, failures=2)
    writer = FencedWriter(reactor, lambda user: 100)
    writer.start(flaky)
    key = control.key("pages", USER)
    writer.set_fields(USER, key, {"a": "1", "b": "1"})
    await until(reactor, lambda: flaky.failures == 1, what="the first attempt failed")
    writer.set_fields(USER, key, {"a": "2"})  # made while the first is being retried: lands after it
    writer.delete_fields(USER, key, ["b"])
    await writer.flushed()
    assert flaky.failures == 0
    assert await control.redis.hgetall(key) == {"a": "2"}

    # A user this node no longer owns is given up, not retried forever.
    owned = {USER: 100}
    flaky.failures = 1_000_000
    writer = FencedWriter(reactor, owned.get)
    writer.start(flaky)
    writer.set_fields(USER, key, {"a": "3"})
    await until(reactor, lambda: flaky.failures < 1_000_000, what="the write was attempted")
    del owned[USER]
    await writer.flushed()
    assert await control.redis.hgetall(key) == {"a": "2"}


@pytest_twisted.ensureDeferred
async def test_a_browser_taken_over_keeps_its_pages_and_reapplies_their_emulation(reactor, control):
    """Two processes in turn hold one Chrome (a `FakeChrome`): the second numbers and flags
    its tabs as the first did, re-applies their emulation, and forgets a tab closed between."""
    chrome = FakeChrome()
    chrome.handlers["Target.createBrowserContext"] = lambda p, s: {"browserContextId": "CTX-shop"}
    chrome.handlers["Target.getBrowserContexts"] = lambda p, s: {"browserContextIds": ["CTX-shop"]}

    async def open_link(browser):
        return memory_link(chrome, reactor, default_timeout=5.0)

    def browser_of(owner) -> UserBrowser:
        browser = UserBrowser(
            reactor, BrowserConfig(), None, USER, "http://127.0.0.1:9222", open_link=open_link, book=owner.book()
        )
        browser.add_page_listener(emulation_listener)
        browser.start()
        return browser

    await claim(control, 100)
    first = Owner(reactor, control, 100)
    browser = browser_of(first)
    await browser.connected(5.0)
    opened = await browser.new_page("about:blank", opener="session-1")
    isolated = await browser.new_page("about:blank", opener="session-1", isolated_context="shop")
    doomed = await browser.new_page("about:blank", opener="session-2")
    set_emulation(opened, Emulation(cpu_rate=4))
    assert [p.page_id for p in browser.pages()] == [1, 2, 3, 4]
    await first.writer.flushed()
    await browser.stop()  # a handover: the tabs live on in Chrome
    chrome.handlers["Target.closeTarget"]({"targetId": doomed.target_id}, None)  # closed while nobody held it

    await claim(control, 200)
    second = Owner(reactor, control, 200)
    taken = browser_of(second)
    await taken.connected(5.0)
    pages = {p.page_id: p for p in taken.pages()}
    assert sorted(pages) == [1, 2, 3]
    assert (pages[2].target_id, pages[2].via_proxy, pages[2].opener) == (opened.target_id, True, "session-1")
    assert pages[3].target_id == isolated.target_id and taken.contexts == {"shop": "CTX-shop"}
    assert not pages[1].via_proxy
    session = pages[2].session_id
    await until(
        reactor,
        lambda: ("Emulation.setCPUThrottlingRate", {"rate": 4}, session) in chrome.calls,
        what="the emulation re-applied on the new session",
    )
    assert ("Emulation.setCPUThrottlingRate", {"rate": 4}, pages[3].session_id) not in chrome.calls
    fresh = await taken.new_page("about:blank", isolated_context="shop")
    assert fresh.page_id == 5  # 4 was the tab closed in between
    assert chrome.methods().count("Target.createBrowserContext") == 1  # the context was found again
    await second.writer.flushed()
    await taken.stop()


def _serve(reactor, control, owner: Owner, config: Config):
    """The MCP endpoints of one process of a cluster (its own sessions, records in Redis)
    on loopback: (url, tools, sessions, records, port)."""
    tools = FakeToolProvider(reactor)
    sessions = SessionRegistry(reactor, config.session.idle_timeout)
    records = RedisSessionRecords(owner.writer, sessions, reactor)
    transports = McpTransports(reactor, config, tools, sessions, records=records)
    root = build_router(origins=OriginPolicy(config), admission=Admission(fake_authenticate), transports=transports)
    site = ProxySite(
        root, max_body_bytes=config.server.max_body_bytes, limits=ConnectionLimits.from_config(config), reactor=reactor
    )
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    return f"http://127.0.0.1:{port.getHost().port}/mcp", tools, sessions, records, port


def _set_level(rid: int, level: str) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": rid, "method": "logging/setLevel", "params": {"level": level}}).encode()


@pytest_twisted.ensureDeferred
async def test_a_streamable_session_is_resumed_by_the_next_owner(reactor, control):
    config = Config()
    await claim(control, 100)
    first, second = Owner(reactor, control, 100), Owner(reactor, control, 200)
    a_url, _, a_sessions, _, a_port = _serve(reactor, control, first, config)
    b_url, b_tools, b_sessions, _, b_port = _serve(reactor, control, second, config)
    try:
        init = await _post(a_url, _init_body("2025-11-25"), _auth(USER))
        assert init.code == 200
        await init.json()
        session_id = init.headers.getRawHeaders(b"mcp-session-id")[0].decode()
        headers = {"Mcp-Session-Id": session_id, **_auth(USER)}
        assert (await _post(a_url, _set_level(2, "warning"), headers)).code == 200
        view = a_sessions.get(session_id, USER).state.view
        view.opened_page_ids.update({4, 7})  # as new_page and select_page leave it
        view.selected_page_id = 7
        assert (await _post(a_url, _call(3, "echo", {"text": "on A"}), headers)).code == 200
        await first.writer.flushed()
        key = control.key("sess", USER, session_id)
        ttl = await control.eval("return redis.call('PTTL', KEYS[1])", [key], [])
        assert 0 < ttl <= config.session.idle_timeout * 1000
        assert (await control.redis.hget(key, "sel")) == "7"

        # The user moves to B, which has never seen the session.
        a_sessions.close_user(USER, for_good=False)
        await claim(control, 200)
        wrong_user = await _post(b_url, _call(4, "echo", {"text": "x"}), {**headers, **_auth("bob")})
        assert wrong_user.code == 404  # the record binds the user
        logged = await _post(b_url, _call(5, "log"), {**headers, "Accept": "text/event-stream"})
        assert logged.code == 200
        levels = [e["params"]["level"] for e in _events(await logged.content()) if e.get("method")]
        assert levels == ["warning", "error", "critical", "alert", "emergency"]  # the level set on A
        context = b_tools.calls[-1][2]
        assert context.session.session_id == session_id
        assert (context.session.selected_page_id, context.session.opened_page_ids) == (7, {4, 7})
        assert context.protocol_version == "2025-11-25"
        b_view = b_sessions.get(session_id, USER).state.view
        b_view.selected_page_id = None  # as close_page of the selected page leaves it
        assert (await _post(b_url, _call(6, "echo", {"text": "x"}), headers)).code == 200
        await second.writer.flushed()
        assert await control.redis.hmget(key, ["sel", "op", "lvl"]) == [None, "[4,7]", "warning"]

        deleted = await _post(b_url, b"", headers, method="DELETE")
        assert deleted.code == 204
        await second.writer.flushed()
        assert await control.redis.exists(key) == 0
        gone = await _post(a_url, _call(7, "echo", {"text": "x"}), headers)
        assert gone.code == 404  # ended for good: no process resumes it
    finally:
        for sessions, port in ((a_sessions, a_port), (b_sessions, b_port)):
            sessions.close_all()
            await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_session_records_end_with_idle_expiry_and_revocation_not_with_a_handover(reactor, control):
    await claim(control, 100)
    owner = Owner(reactor, control, 100)
    clock = Clock()
    sessions = SessionRegistry(clock, 60.0)
    records = RedisSessionRecords(owner.writer, sessions, reactor)
    sessions.add_end_listener(records.ended)

    async def recorded(token_id: str):
        from mcproxy.auth.principal import Principal
        from mcproxy.calls import SessionView
        from mcproxy.mcp.protocol import McpSession

        entry = sessions.create(USER, "streamable", token_id)
        entry.state = McpSession(None, Principal(USER, token_id=token_id), SessionView(entry.id))
        entry.state.resume("2025-06-18", CLIENT, None)
        records.saved(entry)
        await owner.writer.flushed()
        assert (await records.load(USER, entry.id)).token_id == token_id
        return entry.id

    moved = await recorded("tok-1")
    sessions.close_user(USER, for_good=False)
    revoked = await recorded("tok-2")
    sessions.close_token("tok-2")
    idle = await recorded("tok-3")
    clock.advance(61)
    assert sessions.get(idle, USER) is None
    await owner.writer.flushed()
    assert await records.load(USER, revoked) is None
    assert await records.load(USER, idle) is None
    assert (await records.load(USER, moved)).protocol_version == "2025-06-18"
    assert await records.load("bob", moved) is None
