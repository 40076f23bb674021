"""Console and network tools against real headless Chromium, collected by `Collector` from attach on."""

import json
import os
import re

import jsonschema
import pytest
import pytest_twisted
from zope.interface import implementer

from mcproxy.testing.tool_calls import failed, make_context, make_registry, ok, sleep, text_of, until
from mcproxy.tools import console, network

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
BIG_SIZE = 100_000_000
_BLOCK = b"".join(b"line %07d of the big body\n" % i for i in range(2500))  # 65,000 bytes of text


def _site_resource():
    """The collect_*.html fixtures plus a few dynamic resources for the network tests."""
    from twisted.internet.interfaces import IPushProducer
    from twisted.web import pages
    from twisted.web.resource import Resource
    from twisted.web.server import NOT_DONE_YET

    class Fixture(Resource):
        isLeaf = True

        def __init__(self, path):
            super().__init__()
            self.path = path

        def render_GET(self, request):
            request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
            with open(self.path, "rb") as f:
                return f.read()

    class Root(Resource):
        def getChild(self, name, request):
            path = os.path.join(FIXTURES, name.decode())
            if name.startswith(b"collect_") and name.endswith(b".html") and os.path.isfile(path):
                return Fixture(path)
            return pages.notFound()

    class Data(Resource):
        isLeaf = True

        def render_GET(self, request):
            request.setHeader(b"Content-Type", b"application/json")
            request.setHeader(b"X-Test", b"yes")
            request.setHeader(b"Set-Cookie", b"session=topsecret; Path=/")
            return json.dumps({"answer": 42, "items": ["a", "b"]}).encode()

    class Echo(Resource):
        isLeaf = True

        def render_POST(self, request):
            request.setHeader(b"Content-Type", b"text/plain")
            return b"got " + request.content.read()

    class Hop(Resource):
        isLeaf = True

        def render_GET(self, request):
            request.setResponseCode(302)
            request.setHeader(b"Location", b"data.json")
            return b""

    @implementer(IPushProducer)
    class Filler:
        """Writes BIG_SIZE bytes as the connection takes them (the test process must not buffer them)."""

        def __init__(self, request):
            self.request = request
            self.left = BIG_SIZE
            self.paused = False
            self.done = False
            request.registerProducer(self, True)
            self.resumeProducing()

        def resumeProducing(self):
            self.paused = False
            while not self.paused and self.left > 0:
                chunk = _BLOCK[: min(len(_BLOCK), self.left)]
                self.left -= len(chunk)
                self.request.write(chunk)
            if self.left == 0 and not self.done:
                self.done = True
                self.request.unregisterProducer()
                self.request.finish()

        def pauseProducing(self):
            self.paused = True

        def stopProducing(self):
            self.left = 0
            self.done = True

    class Big(Resource):
        isLeaf = True

        def render_GET(self, request):
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            request.setHeader(b"Content-Length", str(BIG_SIZE).encode())
            request.notifyFinish().addErrback(lambda _: None)
            Filler(request)
            return NOT_DONE_YET

    root = Root()
    for name, child in ((b"data.json", Data()), (b"echo", Echo()), (b"hop", Hop()), (b"big.txt", Big())):
        root.putChild(name, child)
    return root


@pytest.fixture(scope="module")
def site(reactor):
    from twisted.web.server import Site

    port = reactor.listenTCP(0, Site(_site_resource()), interface="127.0.0.1")
    yield f"http://127.0.0.1:{port.getHost().port}"
    pytest_twisted.blockon(port.stopListening())


@pytest_twisted.async_yield_fixture()
async def browser(reactor, browser_config, http_client, chromium):
    """User alice's browser through a pool that runs the collector on every page."""
    from mcproxy.browser.collect import Collector
    from mcproxy.browser.pool import BrowserPool

    pool = BrowserPool(reactor, browser_config, http_client, page_listeners=[Collector()])
    browser = pool.browser_for("alice", chromium.browser_url)
    await browser.connected(10)
    before = {page.target_id for page in browser.pages()}
    yield browser
    for page in browser.pages():
        if page.target_id not in before and browser.status == "connected":
            await browser.close_page(page.page_id)
    if browser.status == "connected":
        # The site's cookie (session=topsecret) must not reach later tests on the shared Chromium.
        await browser.send("Storage.clearCookies")
    await pool.close()


def registry(reactor, browser, artifacts=None, **config):
    return make_registry(reactor, browser, artifacts=artifacts, **config)


async def open_page(tools, context, url):
    await ok(tools, context, "new_page", url=url)
    return context.session.selected_page_id


def records(browser, page_id):
    return browser.page(page_id).state.records


def messages(browser, page_id):
    return [(m.type, m.text) for m in records(browser, page_id).console.entries()]


@pytest_twisted.ensureDeferred
async def test_console_messages_listed_and_detailed(reactor, browser, site):
    tools, context = registry(reactor, browser), make_context()
    page_id = await open_page(tools, context, f"{site}/collect_console.html")
    await until(reactor, lambda: len(messages(browser, page_id)) >= 7)

    result = await ok(tools, context, "list_console_messages", pageId=page_id)
    text = text_of(result)
    lines = text.splitlines()
    assert lines[:2] == ["## Console messages", "Showing 1-7 of 7 (Page 1 of 1)."], text
    assert lines[2:5] == [
        "msgid=1 [log] page loaded (1 args)",
        "msgid=2 [warn] a warning (1 args)",
        'msgid=3 [log] data {"a":1,"b":"x"} [1,2,3] (3 args)',
    ]
    assert lines[5] == "msgid=4 [info] styled words and 42 (5 args)"
    assert lines[6] == "msgid=5 [error] an error null undefined true (4 args)"
    rest = "\n".join(lines[7:])
    assert re.search(r"msgid=\d \[error\] Failed to load resource: .* status of 404 .*\(0 args\)", rest)
    assert re.search(r"msgid=\d \[error\] Uncaught Error: boom \(0 args\)", rest)
    structured = result["structuredContent"]
    jsonschema.validate(structured, console.CONSOLE_OUTPUT_SCHEMA)  # what SDK clients check
    assert [m["id"] for m in structured["consoleMessages"]] == [1, 2, 3, 4, 5, 6, 7]
    assert structured["consoleMessages"][0] == {"id": 1, "type": "log", "text": "page loaded", "argsCount": 1}
    assert structured["pagination"]["totalPages"] == 1

    detail = text_of(await ok(tools, context, "get_console_message", pageId=page_id, msgid=3))
    assert detail.splitlines()[:5] == [
        "ID: 3",
        'Message: log> data {"a":1,"b":"x"} [1,2,3]',
        "### Arguments",
        "Arg #0: data",
        'Arg #1: {"a":1,"b":"x"}',
    ]
    assert f"### Stack trace\nat <anonymous> ({site}/collect_console.html:10:13)" in detail
    assert detail.endswith("Note: line and column numbers use 1-based indexing")
    boom = next(m for m in records(browser, page_id).console.entries() if "boom" in m.text)
    detail = text_of(await ok(tools, context, "get_console_message", pageId=page_id, msgid=boom.id))
    assert f"at fail ({site}/collect_console.html:13:29)" in detail

    # Types filter and paging, upstream's wording.
    result = await ok(tools, context, "list_console_messages", pageId=page_id, types=["log"], pageSize=1, pageIdx=1)
    assert text_of(result) == (
        "## Console messages\nShowing 2-2 of 2 (Page 2 of 2).\nPrevious page: 0\n"
        'msgid=3 [log] data {"a":1,"b":"x"} [1,2,3] (3 args)'
    )
    assert result["structuredContent"]["pagination"] == {
        "currentPage": 1,
        "totalPages": 2,
        "hasNextPage": False,
        "hasPreviousPage": True,
        "startIndex": 1,
        "endIndex": 2,
        "invalidPage": False,
    }
    result = await ok(tools, context, "list_console_messages", pageId=page_id, types=["warn", "error"], pageSize=2)
    assert text_of(result).splitlines()[1:4] == [
        "Showing 1-2 of 4 (Page 1 of 2).",
        "Next page: 1",
        "msgid=2 [warn] a warning (1 args)",
    ]
    result = await ok(tools, context, "list_console_messages", pageId=page_id, types=["table"])
    assert text_of(result) == "## Console messages\n<no console messages found>"
    assert result["structuredContent"] == {"consoleMessages": []}

    with_stacks = text_of(await ok(tools, context, "list_console_messages", pageId=page_id, includeStackTraces=True))
    assert f"msgid=1 [log] page loaded (1 args)\n  at <anonymous> ({site}/collect_console.html:8:13)" in with_stacks
    assert with_stacks.endswith("Note: stack trace line and column numbers use 1-based indexing")

    # Ids are stable: new messages get new ids, old ones keep theirs.
    await browser.page(page_id).send("Runtime.evaluate", {"expression": "console.log('later')"})
    await until(reactor, lambda: len(messages(browser, page_id)) == 8)
    again = text_of(await ok(tools, context, "list_console_messages", pageId=page_id))
    assert "\n".join(lines[2:]) in again
    assert again.endswith("msgid=8 [log] later (1 args)")

    assert "No console message with msgid 99 on page" in await failed(
        tools, context, "get_console_message", pageId=page_id, msgid=99
    )
    assert 'No extension service worker with id "sw-1"' in await failed(
        tools, context, "list_console_messages", pageId=page_id, serviceWorkerId="sw-1"
    )


@pytest_twisted.ensureDeferred
async def test_a_tab_someone_else_opened_is_collected_only_once_a_caller_may_see_it(reactor, browser, site):
    """Under session scope a tab opened past the proxy is no caller's: nothing is collected
    for it. Under browser scope, once a tool lists it, it is, with what it logged before."""
    url = f"{site}/collect_step.html?early"
    target = await browser.send("Target.createTarget", {"url": url})
    page = await until(reactor, lambda: next((p for p in browser.pages() if p.target_id == target["targetId"]), None))
    try:
        tools, context = registry(reactor, browser), make_context()
        assert f"{page.page_id}: " not in text_of(await ok(tools, context, "list_pages"))
        await page.send("Runtime.evaluate", {"expression": "console.log('logged unseen')"})
        assert page.state.records is None
        assert "No page with id" in await failed(tools, context, "list_console_messages", pageId=page.page_id)
        assert page.state.records is None

        wide = registry(reactor, browser, tab_scope="browser")
        assert f"{page.page_id}: " in text_of(await ok(wide, context, "list_pages"))
        text = text_of(await ok(wide, context, "list_console_messages", pageId=page.page_id))
        assert "[log] step early (1 args)" in text and "[log] logged unseen (1 args)" in text, text
    finally:
        await browser.close_page(page.page_id)


@pytest_twisted.ensureDeferred
async def test_three_navigations_are_preserved(reactor, browser, site):
    tools, context = registry(reactor, browser), make_context()
    page_id = await open_page(tools, context, f"{site}/collect_step.html?one")
    for step in ("two", "three", "four"):
        await ok(tools, context, "navigate_page", pageId=page_id, type="url", url=f"{site}/collect_step.html?{step}")
    await until(reactor, lambda: messages(browser, page_id) == [("log", "step four")])

    current = text_of(await ok(tools, context, "list_console_messages", pageId=page_id))
    assert current.splitlines()[1:] == ["Showing 1-1 of 1 (Page 1 of 1).", "msgid=4 [log] step four (1 args)"]
    preserved = text_of(
        await ok(tools, context, "list_console_messages", pageId=page_id, includePreservedMessages=True)
    )
    assert preserved.splitlines()[2:] == [
        "msgid=2 [log] step two (1 args)",
        "msgid=3 [log] step three (1 args)",
        "msgid=4 [log] step four (1 args)",
    ]
    dropped = await failed(tools, context, "get_console_message", pageId=page_id, msgid=1)
    assert "is no longer kept" in dropped
    assert "Message: log> step two" in text_of(await ok(tools, context, "get_console_message", pageId=page_id, msgid=2))

    requests = text_of(await ok(tools, context, "list_network_requests", pageId=page_id))
    assert requests.splitlines()[2:] == [f"reqid=4 GET {site}/collect_step.html?four [200]"]
    preserved = text_of(
        await ok(tools, context, "list_network_requests", pageId=page_id, includePreservedRequests=True)
    )
    assert [line.split(" ")[2] for line in preserved.splitlines()[2:]] == [
        f"{site}/collect_step.html?{step}" for step in ("two", "three", "four")
    ]


@pytest_twisted.ensureDeferred
async def test_network_requests(reactor, browser, site, tmp_path):
    from mcproxy.artifacts.store import ArtifactStore
    from mcproxy.config import ArtifactsConfig

    store = ArtifactStore(str(tmp_path), ArtifactsConfig(), reactor)
    tools, context = registry(reactor, browser, artifacts=store), make_context()
    page_id = await open_page(tools, context, f"{site}/collect_network.html")
    entries = lambda: records(browser, page_id).network.entries()  # noqa: E731
    await until(
        reactor,
        lambda: sum(r.finished for r in entries()) >= 6,
        # Every kept navigation's requests, to tell a lost event from a misplaced navigation.
        seen=lambda: [
            (r.id, r.url, r.loader_id, r.status, r.finished, r.failure)
            for r in records(browser, page_id).network.entries(preserved=True)
        ],
    )

    result = await ok(tools, context, "list_network_requests", pageId=page_id)
    lines = text_of(result).splitlines()
    assert lines[:2] == ["## Network requests", "Showing 1-6 of 6 (Page 1 of 1)."]
    assert lines[2:] == [
        f"reqid=1 GET {site}/collect_network.html [200]",
        f"reqid=2 GET {site}/data.json [200]",
        f"reqid=3 POST {site}/echo [200]",
        f"reqid=4 GET {site}/hop [302]",
        f"reqid=5 GET {site}/data.json [200]",
        f"reqid=6 GET {site}/nowhere.json [404]",
    ]
    jsonschema.validate(result["structuredContent"], network.NETWORK_OUTPUT_SCHEMA)
    assert result["structuredContent"]["networkRequests"][2] == {
        "requestId": 3,
        "method": "POST",
        "url": f"{site}/echo",
        "status": 200,
        "resourceType": "fetch",
    }
    documents = await ok(tools, context, "list_network_requests", pageId=page_id, resourceTypes=["document"])
    assert [r["requestId"] for r in documents["structuredContent"]["networkRequests"]] == [1]
    paged = text_of(await ok(tools, context, "list_network_requests", pageId=page_id, pageSize=4, pageIdx=1))
    assert paged.splitlines()[1:] == [
        "Showing 5-6 of 6 (Page 2 of 2).",
        "Previous page: 0",
        f"reqid=5 GET {site}/data.json [200]",
        f"reqid=6 GET {site}/nowhere.json [404]",
    ]

    detail = text_of(await ok(tools, context, "get_network_request", pageId=page_id, reqid=2))
    assert detail.startswith(f"## Request {site}/data.json\nStatus: 200\n### Request Headers\n")
    assert f"- referer:{site}/collect_network.html" in detail.lower()
    response_headers = detail.split("### Response Headers\n")[1].split("### Response Body")[0].lower()
    assert "- x-test:yes" in response_headers
    assert "- set-cookie:[redacted]" in response_headers
    assert "topsecret" not in detail
    assert detail.endswith('### Response Body\n{"answer": 42, "items": ["a", "b"]}')

    post = text_of(await ok(tools, context, "get_network_request", pageId=page_id, reqid=3))
    assert "### Request Body\nname=alice&secret=s3cret\n" in post
    assert post.endswith("### Response Body\ngot name=alice&secret=s3cret")

    redirected = text_of(await ok(tools, context, "get_network_request", pageId=page_id, reqid=5))
    # Chrome's raw request headers carry the cookie set by data.json: kept, value redacted.
    assert "- cookie:[redacted]" in redirected.split("### Response Headers")[0].lower()
    assert "topsecret" not in redirected
    assert redirected.endswith(f"### Redirect chain\nreqid=4 GET {site}/hop [302]")
    hop = text_of(await ok(tools, context, "get_network_request", pageId=page_id, reqid=4))
    assert "### Response Body" not in hop and "- location:data.json" in hop.lower()

    saved = await ok(
        tools,
        context,
        "get_network_request",
        pageId=page_id,
        reqid=3,
        requestFilePath="bodies/post.network-request",
        responseFilePath="bodies/post.network-response",
    )
    links = [block for block in saved["content"] if block["type"] == "resource_link"]
    assert [link["name"] for link in links] == ["bodies/post.network-request", "bodies/post.network-response"]
    assert store.read("alice", links[0]["uri"])[1] == b"name=alice&secret=s3cret"
    assert store.read("alice", links[1]["uri"])[1] == b"got name=alice&secret=s3cret"

    assert "goes up" in await failed(
        tools, context, "get_network_request", pageId=page_id, reqid=2, responseFilePath="../escape.json"
    )
    assert "No request with reqid 42" in await failed(tools, context, "get_network_request", pageId=page_id, reqid=42)
    assert 'Pass "reqid"' in await failed(tools, context, "get_network_request", pageId=page_id)


def _memory(field: str) -> int:
    """``VmRSS`` (resident now) or ``VmHWM`` (peak resident) of this process, in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/self/status")


def _reset_peak() -> None:
    """Start a new VmHWM measurement (Linux: "5" to clear_refs resets the peak)."""
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")


@pytest_twisted.ensureDeferred
async def test_100_mb_response_is_never_held_whole(reactor, browser, site, tmp_path):
    from mcproxy.artifacts.store import ArtifactStore
    from mcproxy.config import ArtifactsConfig

    store = ArtifactStore(str(tmp_path), ArtifactsConfig(), reactor)
    tools, context = registry(reactor, browser, artifacts=store), make_context()
    page_id = await open_page(tools, context, f"{site}/collect_step.html?big")
    read_all = """(async () => {
      const reader = (await fetch('big.txt')).body.getReader();
      let size = 0;
      for (;;) { const {done, value} = await reader.read(); if (done) break; size += value.length; }
      console.log('read ' + size);
    })()"""
    await browser.page(page_id).send("Runtime.evaluate", {"expression": read_all})
    await until(reactor, lambda: ("log", f"read {BIG_SIZE}") in messages(browser, page_id), timeout=60)
    big = next(r for r in records(browser, page_id).network.entries() if r.url.endswith("/big.txt"))
    await until(reactor, lambda: big.finished)
    assert big.body_size == BIG_SIZE

    before = _memory("VmRSS")
    _reset_peak()
    inline = text_of(await ok(tools, context, "get_network_request", pageId=page_id, reqid=big.id))
    body = inline.split("### Response Body\n", 1)[1]
    assert body.startswith("line 0000000 of the big body\nline 0000001 of the big body\n")
    body, note = body.rsplit("\n", 1)
    assert body.endswith("... <truncated>") and len(body) == 10_000 + len("... <truncated>")
    assert note == "Note: Chrome does not keep bodies this big, so this one was fetched again from the same URL."

    saved = await ok(
        tools, context, "get_network_request", pageId=page_id, reqid=big.id, responseFilePath="big.network-response"
    )
    growth = _memory("VmHWM") - before
    link = next(block for block in saved["content"] if block["type"] == "resource_link")
    assert link["size"] == BIG_SIZE
    artifact = store.get("alice", link["uri"])
    assert artifact.size == BIG_SIZE and artifact.mime_type.startswith("text/plain")
    assert f"(big.network-response, {BIG_SIZE} bytes)" in text_of(saved)
    files = [os.path.join(d, f) for d, _, names in os.walk(tmp_path) for f in names if f == "big.network-response"]
    assert len(files) == 1 and os.path.getsize(files[0]) == BIG_SIZE
    with open(files[0], "rb") as f:
        assert f.read(len(_BLOCK)) == _BLOCK
    assert growth < 40 * 1024 * 1024, f"the proxy's peak grew by {growth / 2**20:.1f} MiB saving a 100 MB body"


def _deep_size(journal) -> int:
    """Bytes the kept entries of a console journal really take (objects, tuples, strings, dicts)."""
    import sys

    total = sum(sys.getsizeof(navigation.entries) for navigation in journal._navigations)
    for message in journal.entries(preserved=True):
        kept = [
            message,
            message.line,
            message.stack,
            *message.stack,
            message._own_args or message._lengths,
            *message._lengths,
        ]
        total += sum(sys.getsizeof(part) for part in (*kept, *(message._own_args or ())))
    return total


@pytest_twisted.ensureDeferred
async def test_endless_console_flood_stays_bounded(reactor, browser, site):
    tools, context = registry(reactor, browser), make_context()
    page_id = await open_page(tools, context, f"{site}/collect_step.html?flood")
    journal = records(browser, page_id).console
    await browser.page(page_id).send(
        "Runtime.evaluate", {"expression": "for (let i = 0; i < 100000; i++) console.log('flood', i, {i})"}, timeout=120
    )
    await until(reactor, lambda: journal.entries() and journal.entries()[-1].text == 'flood 99999 {"i":99999}', 120)

    kept = journal.entries()
    assert len(journal) == len(kept) == journal.max_entries == 10_000
    assert kept[0].text == 'flood 90000 {"i":90000}'
    assert [m.id for m in kept] == list(range(kept[0].id, kept[0].id + 10_000))
    assert journal.dropped() == 90_001  # the page's own "step flood" too
    assert _deep_size(journal) <= journal.cost <= journal.max_bytes

    result = await ok(tools, context, "list_console_messages", pageId=page_id, pageSize=2, pageIdx=4999)
    assert text_of(result).splitlines()[1:] == [
        "Showing 9999-10000 of 10000 (Page 5000 of 5000).",
        "Previous page: 4998",
        "90001 older messages dropped to bound memory (a page keeps at most 10000 entries and 8 MiB).",
        f'msgid={kept[-2].id} [log] flood 99998 {{"i":99998}} (3 args)',
        f'msgid={kept[-1].id} [log] flood 99999 {{"i":99999}} (3 args)',
    ]


@pytest_twisted.ensureDeferred
async def test_reconnect_keeps_ids_and_adds_no_duplicates(reactor, browser, site):
    """After a dropped link Chrome reports its stored messages again; they are not collected twice."""
    tools, context = registry(reactor, browser), make_context()
    page_id = await open_page(tools, context, f"{site}/collect_console.html")
    await until(reactor, lambda: len(messages(browser, page_id)) >= 7)
    before = messages(browser, page_id)
    browser.cdp.abort()
    await until(reactor, lambda: browser.status == "reconnecting")
    await until(reactor, lambda: browser.status == "connected")
    page = browser.page(page_id)
    await page.send("Runtime.evaluate", {"expression": "console.log('after the reconnect')"})
    await until(reactor, lambda: len(messages(browser, page_id)) > len(before))
    await sleep(reactor, 0.3)  # any late replay would land now
    assert messages(browser, page_id) == [*before, ("log", "after the reconnect")]
    await ok(tools, context, "navigate_page", pageId=page_id, type="url", url=f"{site}/collect_step.html?again")
    text = text_of(await ok(tools, context, "list_network_requests", pageId=page_id))
    assert text.endswith(f"reqid=3 GET {site}/collect_step.html?again [200]"), text
