"""Shared fixtures: the reactor, real headless Chromium, a local fixture site, a browser pool.

Nothing here imports the reactor (or txredisapi) at module level: pytest-twisted
installs the asyncio reactor first, fixtures import it when they run.
"""

import os

import pytest
import pytest_twisted

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


@pytest.fixture(scope="session")
def reactor():
    """The reactor pytest-twisted installed (asyncio)."""
    from twisted.internet import reactor as installed

    return installed


@pytest.fixture(scope="session")
def chromium(reactor):
    """One headless Chromium shared by the whole session; do not kill it (use private_chromium)."""
    from mcproxy.testing.chromium import Chromium

    browser = Chromium(reactor)
    pytest_twisted.blockon(browser.start())
    yield browser
    pytest_twisted.blockon(browser.stop())


@pytest_twisted.async_yield_fixture()
async def private_chromium(reactor):
    """A Chromium of this test alone, for tests that kill or restart it."""
    from mcproxy.testing.chromium import Chromium

    browser = Chromium(reactor)
    await browser.start()
    yield browser
    await browser.stop()


class FixtureSite:
    """The static pages of tests/fixtures served on 127.0.0.1."""

    def __init__(self, port: int):
        self.port = port
        self.origin = f"http://127.0.0.1:{port}"

    def url(self, name: str = "") -> str:
        """The URL of ``name`` on the site (the root when empty)."""
        return f"{self.origin}/{name}"

    def page(self, name: str = "index.html") -> str:
        """The URL of one fixture page (index.html by default)."""
        return self.url(name)


def _fixture_resource():
    """A leaf resource serving the files of tests/fixtures by name (404 for anything else)."""
    from twisted.web.resource import Resource

    class Fixtures(Resource):
        isLeaf = True

        def render_GET(self, request):
            name = request.postpath[0].decode() if request.postpath and request.postpath[0] else "index.html"
            path = os.path.join(FIXTURES, name)
            if len(request.postpath) > 1 or name.startswith(".") or not os.path.isfile(path):
                request.setResponseCode(404)
                request.setHeader(b"Content-Type", b"text/plain")
                return b"not found"
            request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
            with open(path, "rb") as f:
                return f.read()

    return Fixtures()


@pytest.fixture(scope="session")
def fixture_site(reactor):
    """A twisted.web Site serving tests/fixtures (index.html, second.html)."""
    from twisted.web.server import Site

    port = reactor.listenTCP(0, Site(_fixture_resource()), interface="127.0.0.1")
    yield FixtureSite(port.getHost().port)
    pytest_twisted.blockon(port.stopListening())


@pytest.fixture
def http_client(reactor):
    """A treq client without persistent connections (no sockets outlive a test)."""
    from treq.client import HTTPClient
    from twisted.web.client import Agent, HTTPConnectionPool

    return HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))


@pytest.fixture
def browser_config():
    """Browser settings with test-sized timeouts."""
    from mcproxy.config import BrowserConfig

    return BrowserConfig(call_timeout=10.0, connect_timeout=5.0, health_interval=30.0)


@pytest_twisted.async_yield_fixture()
async def browser_pool(reactor, browser_config, http_client):
    """A BrowserPool with the page listeners the daemon installs, closed after the test."""
    from mcproxy.browser.policy import PolicyBook
    from mcproxy.browser.pool import BrowserPool
    from mcproxy.config import Config
    from mcproxy.service import page_listeners

    config = Config(browser=browser_config)
    listeners = page_listeners(config, PolicyBook(config.browsing))
    pool = BrowserPool(reactor, browser_config, http_client, page_listeners=listeners)
    yield pool
    await pool.close()


@pytest_twisted.async_yield_fixture()
async def user_browser(browser_pool, chromium):
    """User "alice"'s connected browser on the shared Chromium; closes the pages it opened."""
    browser = browser_pool.browser_for("alice", chromium.browser_url)
    await browser.connected(10)
    before = {page.target_id for page in browser.pages()}
    yield browser
    for page in browser.pages():
        if page.target_id not in before and browser.status == "connected":
            await browser.close_page(page.page_id)


def pytest_terminal_summary(terminalreporter):
    """The number of fuzz cases run (``make fuzz`` quotes it)."""
    from mcproxy.testing import fuzz

    if fuzz.cases_run():
        terminalreporter.write_line(
            f"hypothesis fuzz cases run: {fuzz.cases_run()} ({fuzz.SCALE_VARIABLE}={fuzz.scale():g})"
        )


@pytest_twisted.async_yield_fixture()
async def proxy(reactor, tmp_path):
    """A whole daemon of this test alone (memory store), listening on a free loopback port."""
    from mcproxy.testing.daemon import start_proxy

    running = await start_proxy(reactor, tmp_path)
    yield running
    await running.stop()


@pytest.fixture
def fake_server(reactor):
    """A stand-in DevTools WebSocket endpoint (`mcproxy.testing.fake_cdp`) on a free port."""
    from mcproxy.testing.fake_cdp import serve_fake_chrome

    factory = serve_fake_chrome(reactor)
    yield factory
    factory.drop_all()
    pytest_twisted.blockon(factory.listening.stopListening())


@pytest_twisted.async_yield_fixture()
async def control(reactor):
    """A cluster control connection to the test Redis, under a key prefix of its own
    (deleted afterwards)."""
    from mcproxy.testing.coordination import discard_test_control, open_test_control

    opened = await open_test_control(reactor)
    yield opened
    await discard_test_control(opened)


@pytest.fixture
def clock():
    """A fake clock (`twisted.internet.task.Clock`) at a plausible epoch time."""
    from twisted.internet.task import Clock

    clock = Clock()
    clock.advance(1_700_000_000)
    return clock


@pytest_twisted.async_yield_fixture()
async def own_cluster(reactor, tmp_path):
    """Three cluster nodes of this test alone (it kills, pauses or partitions some), with the
    short fault timers."""
    from mcproxy.testing.cluster import started_cluster

    running = await started_cluster(reactor, tmp_path)
    yield running
    await running.stop()


@pytest_twisted.async_yield_fixture()
async def connects(reactor):
    """Start `mcproxy.testing.tunnel.Connect` processes; every one is stopped afterwards."""
    from mcproxy.testing.tunnel import Connect

    started: list[Connect] = []

    def start(proxy_url: str, token: str, *args: str) -> Connect:
        client = Connect(reactor, proxy_url, token, *args)
        client.start()
        started.append(client)
        return client

    yield start
    for client in started:
        await client.close()


@pytest_twisted.async_yield_fixture()
async def tunnel_daemon(reactor, tmp_path):
    """A real ``twistd mcproxy`` (sqlite store, so it keeps its users over a restart), its
    `RunningProxy` as ``running_proxy``; browsers reconnect within 2 s."""
    from mcproxy.testing.process import Daemon

    process = Daemon(
        reactor,
        tmp_path,
        store={"url": f"sqlite:{tmp_path / 'store.db'}"},
        browser={"backoff_max": 2.0, "connect_timeout": 5.0, "max_message_bytes": 1024 * 1024},
    )
    running = await process.start()
    process.running_proxy = running
    yield process
    await process.close()
