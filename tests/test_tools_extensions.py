"""Extension tools against a real headless Chromium that loads tests/fixtures/extension.

The fixture extension's service worker logs "fixture worker started <id>" on every start,
writes chrome.storage.local on install, and counts action clicks in chrome.storage.session.
One Chromium (and one user browser, so attached workers stay alive) serves the module; the
install/reload/uninstall test works on a copy in its own folder, which gets its own id.
"""

import os
import re
import shutil

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.defer import Deferred

from mcproxy.errors import CDPError
from mcproxy.testing.tool_calls import failed, make_context, ok, sleep, text_of
from mcproxy.tools import extension_targets, extensions

EXTENSION = os.path.join(os.path.dirname(__file__), "fixtures", "extension")
MISSING_ID = "a" * 32


@pytest.fixture(scope="module")
def ext_chromium(reactor):
    """A Chromium of this module with the fixture extension loaded and extension debugging allowed."""
    from mcproxy.testing.chromium import Chromium

    browser = Chromium(reactor, extra_flags=(f"--load-extension={EXTENSION}", extensions.FLAG))
    pytest_twisted.blockon(browser.start())
    yield browser
    pytest_twisted.blockon(browser.stop())


@pytest.fixture(scope="module")
def ext_browser(reactor, ext_chromium):
    """User alice's browser on that Chromium, collecting console and network like the daemon."""
    from mcproxy.browser.collect import Collector
    from mcproxy.browser.connect import default_http_client
    from mcproxy.browser.dialogs import track_dialogs
    from mcproxy.browser.pool import BrowserPool
    from mcproxy.config import BrowserConfig

    config = BrowserConfig(call_timeout=10.0, connect_timeout=5.0, health_interval=30.0, backoff_initial=0.2)
    pool = BrowserPool(reactor, config, default_http_client(reactor), page_listeners=[track_dialogs, Collector()])
    browser = pool.browser_for("alice", ext_chromium.browser_url)
    pytest_twisted.blockon(Deferred.fromCoroutine(browser.connected(10)))
    yield browser
    pytest_twisted.blockon(pool.close())


@pytest.fixture
def registry(reactor, ext_browser):
    """Every default tool plus the extension tools, on alice's browser, every tab in scope."""
    from mcproxy.config import ToolsConfig
    from mcproxy.tools.registry import ToolRegistry

    async def get_browser(user_id):
        assert user_id == "alice"
        return ext_browser

    return ToolRegistry(get_browser, ToolsConfig(tab_scope="browser"), reactor)


@pytest.fixture
def context():
    return make_context()


async def eventually(reactor, check, seconds=10.0):
    """Call the coroutine function ``check`` until it returns something true; that value."""
    waited = 0.0
    while True:
        value = await check()
        if value:
            return value
        assert waited < seconds, f"condition not met within {seconds} s"
        await sleep(reactor, 0.1)
        waited += 0.1


async def listed(registry, context) -> dict:
    """list_extensions' structured content, by extension id."""
    result = await ok(registry, context, "list_extensions")
    return {item["id"]: item for item in result["structuredContent"]["extensions"]}


async def fixture_id(registry, context) -> str:
    """The id Chrome gave the fixture extension (it derives from the folder's path)."""
    found = [item for item in (await listed(registry, context)).values() if item.get("path") == EXTENSION]
    assert len(found) == 1, found
    return found[0]["id"]


async def worker_of(reactor, registry, context, extension_id: str, *, not_id: str | None = None) -> str:
    """The id list_pages gives the extension's service worker (other than ``not_id``), once it runs."""

    async def look():
        result = await ok(registry, context, "list_pages")
        for worker in result["structuredContent"].get("extensionServiceWorkers", ()):
            if worker["url"].startswith(f"chrome-extension://{extension_id}/") and worker["id"] != not_id:
                return worker["id"]
        return None

    return await eventually(reactor, look)


def page_id(browser) -> int:
    return browser.pages()[0].page_id


async def console_texts(registry, context, browser, worker_id: str) -> list[str]:
    result = await ok(registry, context, "list_console_messages", pageId=page_id(browser), serviceWorkerId=worker_id)
    return [message["text"] for message in result["structuredContent"]["consoleMessages"]]


async def logged(reactor, registry, context, browser, worker_id: str, *texts: str) -> None:
    """Wait until the worker's console holds every one of ``texts`` (a starting worker logs a bit later)."""

    async def all_there():
        return set(texts) <= set(await console_texts(registry, context, browser, worker_id))

    await eventually(reactor, all_there)


@pytest_twisted.ensureDeferred
async def test_list_extensions_and_service_workers(reactor, registry, context):
    extension_id = await fixture_id(registry, context)
    worker_id = await worker_of(reactor, registry, context, extension_id)  # once the worker runs
    result = await ok(registry, context, "list_extensions")
    text = text_of(result)
    assert text.startswith("## Extensions\n")
    assert re.search(
        rf'^id={extension_id} "mcproxy test extension" v1\.2\.3 Enabled serviceWorkers=sw-\d+$', text, re.M
    ), text
    item = (await listed(registry, context))[extension_id]
    assert item["name"] == "mcproxy test extension" and item["version"] == "1.2.3" and item["enabled"] is True

    pages = await ok(registry, context, "list_pages")
    assert f"## Extension Service Workers\n{worker_id}: chrome-extension://{extension_id}/worker.js" in text_of(pages)
    assert "## Pages" in text_of(pages) and pages["structuredContent"]["pages"]
    assert worker_id in item["serviceWorkers"]


@pytest_twisted.ensureDeferred
async def test_evaluate_script_in_service_worker(reactor, registry, context, ext_browser):
    extension_id = await fixture_id(registry, context)
    worker_id = await worker_of(reactor, registry, context, extension_id)
    pid = page_id(ext_browser)
    result = await ok(
        registry, context, "evaluate_script", pageId=pid, serviceWorkerId=worker_id, function="() => chrome.runtime.id"
    )
    assert text_of(result) == f'Script ran on service worker {worker_id} and returned:\n```json\n"{extension_id}"\n```'
    result = await ok(
        registry,
        context,
        "evaluate_script",
        pageId=pid,
        serviceWorkerId=worker_id,
        format="script",
        function="chrome.runtime.getManifest().version",
    )
    assert '"1.2.3"' in text_of(result)
    # No DOM in a worker: a page element uid makes no sense there.
    text = await failed(
        registry, context, "evaluate_script", pageId=pid, serviceWorkerId=worker_id, function="(el) => 1", args=["1_1"]
    )
    assert "service worker has no DOM" in text
    text = await failed(
        registry, context, "evaluate_script", pageId=pid, serviceWorkerId=worker_id, function="() => nope"
    )
    assert "The script failed: ReferenceError: nope is not defined" in text


@pytest_twisted.ensureDeferred
async def test_service_worker_console_messages(reactor, registry, context, ext_browser):
    extension_id = await fixture_id(registry, context)
    worker_id = await worker_of(reactor, registry, context, extension_id)
    # Logged at start-up, before the proxy attached (Chrome replays them), or just after.
    await logged(
        reactor,
        registry,
        context,
        ext_browser,
        worker_id,
        f"fixture worker started {extension_id}",
        "fixture installed: install",
    )
    await ok(
        registry,
        context,
        "evaluate_script",
        pageId=page_id(ext_browser),
        serviceWorkerId=worker_id,
        function="() => { console.warn('from the test', 7); return 1; }",
    )
    result = await ok(
        registry,
        context,
        "list_console_messages",
        pageId=page_id(ext_browser),
        serviceWorkerId=worker_id,
        types=["warn"],
    )
    assert [m["text"] for m in result["structuredContent"]["consoleMessages"]] == ["from the test 7"]
    assert re.search(r"msgid=\d+ \[warn\] from the test 7 \(2 args\)", text_of(result)), text_of(result)
    # The page's own console is a different journal.
    page_messages = await ok(registry, context, "list_console_messages", pageId=page_id(ext_browser))
    assert "from the test" not in text_of(page_messages)


@pytest_twisted.ensureDeferred
async def test_get_extension_storage(registry, context):
    extension_id = await fixture_id(registry, context)
    result = await ok(registry, context, "get_extension_storage", id=extension_id, area="local")
    assert result["structuredContent"] == {
        "id": extension_id,
        "area": "local",
        "items": {"installedBy": "fixture", "reason": "install", "answer": 42},
    }
    assert text_of(result).startswith(f"## chrome.storage.local of extension {extension_id}\n```json\n")
    assert '"answer": 42' in text_of(result)
    result = await ok(registry, context, "get_extension_storage", id=extension_id, area="sync")
    assert result["structuredContent"]["items"] == {}
    # "local" is the default area.
    result = await ok(registry, context, "get_extension_storage", id=extension_id)
    assert result["structuredContent"]["area"] == "local"
    text = await failed(registry, context, "get_extension_storage", id=extension_id, area="managed")
    assert '"area"' in text


@pytest_twisted.ensureDeferred
async def test_trigger_extension_action(reactor, registry, context, ext_browser):
    extension_id = await fixture_id(registry, context)
    worker_id = await worker_of(reactor, registry, context, extension_id)

    async def clicks():
        result = await ok(registry, context, "get_extension_storage", id=extension_id, area="session")
        return result["structuredContent"]["items"].get("clicks", 0)

    before = await clicks()
    result = await ok(registry, context, "trigger_extension_action", id=extension_id)
    assert text_of(result) == f"Extension action triggered. Id: {extension_id}"

    async def counted():
        return await clicks() == before + 1

    await eventually(reactor, counted)
    await logged(reactor, registry, context, ext_browser, worker_id, f"fixture action clicked {before + 1}")


@pytest_twisted.ensureDeferred
async def test_unknown_extension_and_worker_ids(reactor, registry, context, ext_browser):
    extension_id = await fixture_id(registry, context)
    for tool in ("uninstall_extension", "reload_extension", "trigger_extension_action", "get_extension_storage"):
        text = await failed(registry, context, tool, id=MISSING_ID)
        assert f'No extension with id "{MISSING_ID}"' in text, tool
        assert f'{extension_id} ("mcproxy test extension")' in text, tool
        assert "list_extensions" in text
    worker_id = await worker_of(reactor, registry, context, extension_id)
    for tool, arguments in (
        ("evaluate_script", {"function": "() => 1"}),
        ("list_console_messages", {}),
    ):
        text = await failed(registry, context, tool, pageId=page_id(ext_browser), serviceWorkerId="sw-999", **arguments)
        assert 'No extension service worker with id "sw-999"' in text, tool
        assert f"{worker_id} (chrome-extension://{extension_id}/worker.js)" in text, tool


@pytest_twisted.ensureDeferred
async def test_install_reload_uninstall(reactor, registry, context, ext_browser, tmp_path):
    copy = str(tmp_path / "extension-copy")
    shutil.copytree(EXTENSION, copy)
    result = await ok(registry, context, "install_extension", path=copy)
    match = re.fullmatch(r"Extension installed\. Id: ([a-p]{32})", text_of(result))
    assert match, text_of(result)
    copy_id = match.group(1)
    assert copy_id != await fixture_id(registry, context)
    assert (await listed(registry, context))[copy_id]["path"] == copy

    first = await worker_of(reactor, registry, context, copy_id)
    started = f"fixture worker started {copy_id}"
    await logged(reactor, registry, context, ext_browser, first, started, "fixture installed: install")

    result = await ok(registry, context, "reload_extension", id=copy_id)
    text = text_of(result)
    assert text.startswith(f"Extension reloaded. Id: {copy_id}")
    restarted = re.search(r"Its service worker restarted as (sw-\d+) ", text)
    assert restarted, text
    second = restarted.group(1)
    assert second != first
    await logged(reactor, registry, context, ext_browser, second, started, "fixture installed: update")
    # The old worker is gone, and so is its id.
    text = await failed(registry, context, "list_console_messages", pageId=page_id(ext_browser), serviceWorkerId=first)
    assert f'No extension service worker with id "{first}"' in text

    result = await ok(registry, context, "uninstall_extension", id=copy_id)
    assert text_of(result) == f"Extension uninstalled. Id: {copy_id}"
    assert copy_id not in await listed(registry, context)


@pytest_twisted.ensureDeferred
async def test_install_and_uninstall_refusals(registry, context, tmp_path):
    missing = str(tmp_path / "no-such-folder")
    text = await failed(registry, context, "install_extension", path=missing)
    assert f"Chrome could not load an unpacked extension from {missing}" in text
    assert "on the machine the browser runs on" in text
    # Loaded with --load-extension, not unpacked over DevTools: Chrome will not remove it.
    extension_id = await fixture_id(registry, context)
    text = await failed(registry, context, "uninstall_extension", id=extension_id)
    assert "chrome://extensions" in text and extension_id in text
    assert extension_id in await listed(registry, context)


@pytest_twisted.ensureDeferred
async def test_worker_console_survives_a_reconnect(reactor, registry, context, ext_browser):
    """After the connection drops, the same worker id works again and no message is listed twice."""
    extension_id = await fixture_id(registry, context)
    worker_id = await worker_of(reactor, registry, context, extension_id)
    before = await console_texts(registry, context, ext_browser, worker_id)
    assert f"fixture worker started {extension_id}" in before
    dropped = ext_browser.cdp
    dropped.abort()

    async def back():
        return ext_browser.status == "connected" and ext_browser.cdp not in (None, dropped)

    await eventually(reactor, back)
    assert await worker_of(reactor, registry, context, extension_id) == worker_id
    await ok(
        registry,
        context,
        "evaluate_script",
        pageId=page_id(ext_browser),
        serviceWorkerId=worker_id,
        function="() => { console.log('after the reconnect'); }",
    )
    await logged(reactor, registry, context, ext_browser, worker_id, "after the reconnect")
    assert await console_texts(registry, context, ext_browser, worker_id) == [*before, "after the reconnect"]


class RefusingBrowser:
    """A user's browser whose Chrome keeps the Extensions domain off, as Chrome does without the flag."""

    def __init__(self, browser):
        self._browser = browser

    def __getattr__(self, name):
        return getattr(self._browser, name)

    def send(self, method, params=None, *, timeout=None):
        if method.startswith("Extensions."):
            return defer.fail(CDPError(f"{method}: Method not available."))
        return self._browser.send(method, params, timeout=timeout)


@pytest_twisted.ensureDeferred
async def test_without_the_extensions_domain(reactor, registry, context, ext_browser, tmp_path):
    """Listing falls back to the targets, the refusals name the flag, reload asks the worker itself."""
    from mcproxy.config import ToolsConfig
    from mcproxy.tools.registry import ToolRegistry

    extension_id = await fixture_id(registry, context)
    copy = str(tmp_path / "reloaded-by-itself")
    shutil.copytree(EXTENSION, copy)
    copy_id = text_of(await ok(registry, context, "install_extension", path=copy)).rpartition(" ")[2]
    await worker_of(reactor, registry, context, copy_id)
    refusing = RefusingBrowser(ext_browser)

    async def get_browser(user_id):
        return refusing

    limited = ToolRegistry(get_browser, ToolsConfig(tab_scope="browser"), reactor)
    text = text_of(await ok(limited, context, "list_extensions"))
    line = rf'^id={extension_id} "mcproxy test extension" v1\.2\.3 Enabled serviceWorkers=sw-\d+$'
    assert re.search(line, text, re.M), text
    assert "Method not available.); shown are those with a running service worker or open page." in text
    assert f"Start Chrome with {extensions.FLAG} to see every unpacked extension." in text
    for tool, arguments in (
        ("install_extension", {"path": copy}),
        ("trigger_extension_action", {"id": extension_id}),
        ("uninstall_extension", {"id": extension_id}),
    ):
        assert f"start Chrome with {extensions.FLAG}" in await failed(limited, context, tool, **arguments), tool
    # Storage is read through the worker's own session, which Chrome allows without the flag.
    storage = await ok(limited, context, "get_extension_storage", id=extension_id)
    assert storage["structuredContent"]["items"]["answer"] == 42

    text = text_of(await ok(limited, context, "reload_extension", id=copy_id))
    assert text.startswith(f"Extension reloaded. Id: {copy_id}\nIts service worker called chrome.runtime.reload().")
    await ok(registry, context, "uninstall_extension", id=copy_id)
    assert copy_id not in await listed(registry, context)


def test_refusal_names_the_flag():
    """A Chrome that keeps the Extensions domain off (branded Chrome without the flag) says so."""
    error = extensions._domain_error(CDPError("Extensions.loadUnpacked: Method not available."), "install an extension")
    assert extensions.FLAG in error.message and "Method not available" in error.message
    error = extensions._domain_error(
        CDPError("'Extensions.triggerAction' wasn't found", cdp_code=-32601), "trigger the action"
    )
    assert "no such DevTools method" in error.message


def test_worker_registry_goes_with_its_browser():
    """The per-browser registry must not keep a forgotten user's browser (and its pages) alive."""
    import gc
    import weakref

    class Browser:
        cdp = None

    browser = Browser()
    registry = extension_targets.targets_of(browser)
    assert extension_targets.targets_of(browser) is registry
    gone = weakref.ref(browser)
    del browser, registry
    gc.collect()
    assert gone() is None
