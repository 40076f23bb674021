"""The browsing policy reads URLs the way Chromium does.

For each URL of `CORPUS` (tricky spellings of hosts), real Chromium says which host it
would load, twice: its URL parser (``new URL(url).hostname`` in a page) and its navigation
(the document request ``Page.navigate`` makes, seen paused by ``Fetch`` and failed there,
so nothing leaves the machine). The policy must refuse what Chromium refuses and, for the
rest, decide on that same host: a deny rule naming it refuses the URL, an allow rule naming
it admits it. `CORPUS` is a plain list so that a fuzz run can extend and reuse it.
"""

import json

import pytest_twisted

from mcproxy.browser.policy import BrowsingPolicy, scheme_and_host

#: Tricky URL forms: userinfo and backslashes, control characters, percent-encoding, IDN and
#: Unicode look-alikes, trailing dots, numeric/octal/hex IPv4, IPv6 forms, case, missing slashes.
CORPUS = [
    # Where the authority ends: "@", backslashes, "#", "?"
    "http://evil\\@allowed.example/",
    "http://allowed.example\\@evil.example/",
    "http://user:pw@allowed.example/",
    "http://foo@evil.example@allowed.example/",
    "http://evil.example:80@allowed.example/",
    "http://evil.example:@allowed.example/",
    "http://evil.example%2F@allowed.example/",
    "http://:@evil.example/",
    "http://@evil.example/",
    "http://allowed.example#@evil.example/",
    "http://allowed.example?@evil.example/",
    "http://127.0.0.1\\@evil.example/",
    "http://[::1]:8080\\@evil.example/",
    "http://evil.example\\\\allowed.example/",
    # Tabs, newlines, spaces, NUL
    "http://ev\til.example/",
    "http://ev\nil.example/",
    "http://evil.example\r/",
    "http://evil.example/\t",
    " http://evil.example/ ",
    "http://a b.example/",
    "http://a\u3000b.example/",
    "http://a\u00a0b.example/",
    "http://ex%00ample/",
    "http://evil.example%00/",
    # Percent-encoded hosts
    "http://%65vil.example/",
    "http://evil%2eexample/",
    "http://evil.example%2f/",
    "http://%31%32%37.0.0.1/",
    "http://%30/",
    "http://%zz.example/",
    "http://%5B::1%5D/",
    "http://1.2.3.4%2E5/",
    # IDN, Unicode look-alikes and odd labels
    "http://bücher.example/",
    "http://BÜCHER.example/",
    "http://faß.example/",
    "http://e\u0301vil.example/",
    "http://\u0435vil.example/",
    "http://ｅｖｉｌ．ｅｘａｍｐｌｅ/",  # noqa: RUF001 -- the full-width look-alikes are the case
    "http://Ⓔⓥⓘⓛ.example/",
    "http://evil。example/",
    "http://evil｡example/",
    "http://exa\u00admple.example/",
    "http://\u00adevil.example/",
    "http://ex\u200dample.example/",
    "http://💩.example/",
    "http://xn--ls8h.example/",
    "http://xn--nxasmq6b.example/",
    "http://xn--evil.example/",
    "http://xn--/",
    "http://a_b.example/",
    "http://a*b.example/",
    "http://*.example/",
    "http://-evil.example/",
    "http://evil-.example/",
    "http://ab--c.example/",
    "http://a..b.example/",
    "http://.evil.example/",
    # Trailing dots
    "http://evil.example./",
    "http://localhost./",
    "http://127.0.0.1./",
    "http://0x7f.1./",
    # IPv4 in numeric, octal and hex forms, and names that end in a number
    "http://2130706433/",
    "http://017700000001/",
    "http://0x7f000001/",
    "http://0x7f.1/",
    "http://0X7f.1/",
    "http://0x7f.0x0.0x0.0x1/",
    "http://127.1/",
    "http://127.0.1/",
    "http://0177.0.0.1/",
    "http://①②⑦.0.0.1/",
    "http://127。0。0。1/",
    "http://1.2.3/",
    "http://0/",
    "http://0x/",
    "http://0.0.0.0/",
    "http://0xffffffff/",
    "http://255.255.255.255/",
    "http://0x100000000/",
    "http://4294967296/",
    "http://256.0.0.1/",
    "http://09/",
    "http://1.2.3.09/",
    "http://00x7f.1/",
    "http://0x7g.1/",
    "http://1.2.3.4.5/",
    "http://1.2.3.4.example/",
    "http://example.1/",
    "http://example.0x1/",
    "http://1.example.2/",
    # IPv6
    "http://[::1]/",
    "http://[0:0:0:0:0:0:0:1]/",
    "http://[::]/",
    "http://[::ffff:127.0.0.1]/",
    "http://[0::FFFF:7F00:1]/",
    "http://[0:0::0:0:ffff:7f00:0001]/",
    "https://[::ffff:7f00:1]:443/",
    "http://[::ffff:0.0.0.0]/",
    "http://[::127.0.0.1]/",
    "http://[ffff::127.0.0.1]/",
    "http://[1:2:3:4:5:6:7:8]/",
    "http://user@[::1]:8080/",
    "http://[1:2:3:4:5:6:7:8:9]/",
    "http://[::ffff:1.2.3]/",
    "http://[::ffff:1.2.3.4.5]/",
    "http://[::1%25eth0]/",
    "http://[::1]%2F/",
    "http://[::1/",
    # Case, slashes, ports
    "HTTP://EVIL.Example/",
    "hTtPs://Evil.EXAMPLE/",
    "http://EVIL.example:0080/",
    "http://evil.example:99999/",
    "http:evil.example",
    "https:evil.example",
    "http:/evil.example/",
    "http:///evil.example/",
    "http:\\\\evil.example\\x",
    "//evil.example/",
]

SCHEMES = frozenset({"http", "https"})


async def chromium_hostnames(page, urls: list[str]) -> list[str | None]:
    """``new URL(url).hostname`` in ``page`` for each URL; None where Chromium's parser throws."""
    expression = f"{json.dumps(urls)}.map(u => {{ try {{ return new URL(u).hostname }} catch (e) {{ return null }} }})"
    reply = await page.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})
    return reply["result"]["value"]


async def chromium_requests(page, urls: list[str]) -> list[str | None]:
    """The URL of the document request Chromium makes navigating ``page`` to each URL (failed
    before it is sent); None where Chromium will not navigate there at all."""
    from mcproxy.errors import CDPError

    seen: list[str] = []

    def paused(_: str, params: dict) -> None:
        seen.append(params["request"]["url"])
        page.send("Fetch.failRequest", {"requestId": params["requestId"], "errorReason": "BlockedByClient"})

    page.subscribe("Fetch.requestPaused", paused)
    await page.send("Fetch.enable", {"patterns": [{"urlPattern": "*", "resourceType": "Document"}]})
    requests = []
    for url in urls:
        del seen[:]
        try:
            await page.send("Page.navigate", {"url": url})
        except CDPError as e:
            assert "invalid URL" in e.message, e.message
        assert len(seen) <= 1, seen
        requests.append(seen[0] if seen else None)
    return requests


def disagreement(url: str, hostname: str | None, request: str | None) -> str | None:
    """How the policy's reading of ``url`` differs from Chromium's (None: it does not)."""
    if hostname is None or request is None:
        if (hostname, request) != (None, None):
            return f"Chromium itself is inconsistent: new URL() gives {hostname!r}, navigation requests {request!r}"
        return None if BrowsingPolicy(SCHEMES).refusal(url) else "Chromium refuses it, the policy lets it through"
    try:
        host = scheme_and_host(url)[1]
    except ValueError:
        # The one known difference: Chromium loads a host with a space in it ("%20"), which
        # the standard forbids; the policy refuses such URLs.
        return None if "%20" in hostname else f"the policy refuses it as invalid, Chromium loads {hostname!r}"
    if scheme_and_host(request)[1] != hostname:
        return f"Chromium requests {request!r}, not host {hostname!r}"
    if host != hostname:
        return f"the policy reads host {host!r}, Chromium loads {hostname!r}"
    denied = BrowsingPolicy(SCHEMES, deny=(hostname,)).refusal(url)
    if denied != f'the host "{hostname}" is on the deny list':
        return f"a deny rule for {hostname!r} does not refuse it: {denied!r}"
    allowed = BrowsingPolicy(SCHEMES, allow=(hostname,)).refusal(url)
    if allowed is not None:
        return f"an allow rule for {hostname!r} does not admit it: {allowed!r}"
    return None


@pytest_twisted.ensureDeferred
async def test_the_policy_decides_on_the_host_chromium_loads(user_browser):
    page = await user_browser.new_page("about:blank")
    hostnames = await chromium_hostnames(page, CORPUS)
    requests = await chromium_requests(page, CORPUS)
    problems = [
        f"{url!r}: {problem}"
        for url, hostname, request in zip(CORPUS, hostnames, requests, strict=True)
        if (problem := disagreement(url, hostname, request)) is not None
    ]
    assert not problems, "\n".join(problems)
    # The corpus covers both outcomes.
    assert None in hostnames and len(set(hostnames)) > 20
