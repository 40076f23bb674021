"""Extension tools on a browser behind ``mcproxy-connect``: a real headless Chromium with the
fixture extension loaded (tests/fixtures/extension) and extension debugging allowed, relayed
by a real ``mcproxy-connect`` to a real ``twistd mcproxy``."""

import os

import pytest_twisted

from mcproxy.testing.chromium import Chromium
from mcproxy.testing.tool_calls import until
from mcproxy.testing.tunnel import alice_tunnelled
from mcproxy.tools import extensions

EXTENSION = os.path.join(os.path.dirname(__file__), "fixtures", "extension")


def text_of(answer: dict) -> str:
    assert "result" in answer and not answer["result"].get("isError"), answer
    return "\n".join(block.get("text", "") for block in answer["result"]["content"])


@pytest_twisted.ensureDeferred
async def test_extension_tools_reach_the_browser_behind_a_tunnel(reactor, tunnel_daemon, connects):
    chromium = Chromium(reactor, extra_flags=(f"--load-extension={EXTENSION}", extensions.FLAG))
    await chromium.start()
    try:
        proxy = tunnel_daemon.running_proxy
        token, _ = await alice_tunnelled(reactor, proxy, connects, "--browser-url", chromium.browser_url)
        listing: dict = {}

        async def worker_running() -> bool:
            listing["text"] = text_of(await proxy.call_tool(token, "list_extensions"))
            return "serviceWorkers=sw-" in listing["text"]

        await until(reactor, worker_running, 15, seen=lambda: listing, what="the extension's service worker")
        assert '"mcproxy test extension" v1.2.3 Enabled' in listing["text"], listing
        extension_id = listing["text"].split("id=", 1)[1].split(" ", 1)[0]
        stored = await proxy.call_tool(token, "get_extension_storage", {"id": extension_id})
        assert '"answer": 42' in text_of(stored) or '"answer":42' in text_of(stored), stored
    finally:
        await chromium.stop()
