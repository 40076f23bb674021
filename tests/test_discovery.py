"""browserURL validation and /json/version discovery, against real servers on loopback."""

import ipaddress

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st

from mcproxy.browser.cdp.discovery import HOST_REJECTED, discover
from mcproxy.browser.urls import BrowserURL, check_address, parse_browser_url, validate_browser_url
from mcproxy.config import LOOPBACK_AND_PRIVATE
from mcproxy.errors import BrowserUnavailable, InvalidBrowserURL
from mcproxy.testing.fuzz import fuzz_settings


@pytest.mark.parametrize(
    "url, message",
    [
        ("ftp://127.0.0.1:9222", "scheme 'ftp' is not allowed"),
        ("file:///etc/passwd", "scheme 'file' is not allowed"),
        ("127.0.0.1:9222", "is not allowed"),
        ("http://127.0.0.1", "has no port"),
        ("http://user:pw@127.0.0.1:9222", "must not contain credentials"),
        ("http://127.0.0.1:9222/json/version", "no path"),
        ("http://127.0.0.1:9222?x=1", "no path"),
        ("http://:9222", "has no host"),
        ("http://127.0.0.1:99999", "malformed"),
        ("", "must be a URL"),
    ],
)
def test_malformed_urls_are_refused_with_advice(url, message):
    with pytest.raises(InvalidBrowserURL, match=message):
        parse_browser_url(url)


def test_accepted_shapes():
    assert parse_browser_url("http://127.0.0.1:9222/") == BrowserURL(
        url="http://127.0.0.1:9222/", scheme="http", host="127.0.0.1", port=9222, path=""
    )
    ws = parse_browser_url("ws://10.0.0.5:9222/devtools/browser/abc")
    assert ws.is_websocket and ws.path == "/devtools/browser/abc"
    assert parse_browser_url("https://[::1]:9222").host == "::1"


@pytest.mark.parametrize("address", ["169.254.169.254", "169.254.0.1", "fe80::1", "::ffff:169.254.169.254"])
def test_link_local_is_never_allowed_even_when_configured(address):
    with pytest.raises(InvalidBrowserURL, match="link-local"):
        check_address(address, ("0.0.0.0/0", "::/0", "169.254.0.0/16"), what="browserURL")


@pytest.mark.parametrize("address", ["8.8.8.8", "2001:db8::1", "0.0.0.0"])
def test_addresses_outside_the_allowed_networks_are_refused(address):
    with pytest.raises(InvalidBrowserURL, match=r"outside browser\.allowed_networks"):
        check_address(address, LOOPBACK_AND_PRIVATE, what="browserURL")


@fuzz_settings(100)
@given(
    st.one_of(
        st.ip_addresses(),
        # Addresses that carry an IPv4 address, which random IPv6 addresses almost never are.
        st.ip_addresses(v=4).map(lambda v4: ipaddress.ip_address(f"::ffff:{v4}")),
        st.ip_addresses(v=4).map(lambda v4: ipaddress.ip_address(f"64:ff9b::{v4}")),
        st.ip_addresses(v=4).map(lambda v4: ipaddress.IPv6Address((0x2002 << 112) | (int(v4) << 80))),
    )
)
def test_check_address_agrees_with_the_networks(ip):
    """Accepted exactly when the address, or the IPv4 address it carries (mapped, 6to4,
    NAT64), is inside the allowed networks and neither is link-local or a metadata service."""
    import ipaddress

    from mcproxy.browser.urls import CLOUD_METADATA, LINK_LOCAL

    forms = [ip]
    if ip.version == 6:
        carried = ip.ipv4_mapped or ip.sixtofour
        if carried is None and ip in ipaddress.ip_network("64:ff9b::/96"):
            carried = ipaddress.IPv4Address(ip.packed[-4:])
        forms += [carried] if carried is not None else []
    allowed = [ipaddress.ip_network(n) for n in LOOPBACK_AND_PRIVATE]
    inside = any(f in n for f in forms for n in allowed if n.version == f.version)
    never = any(f in n for f in forms for n in LINK_LOCAL + CLOUD_METADATA if n.version == f.version)
    try:
        check_address(str(ip), LOOPBACK_AND_PRIVATE, what="x")
        accepted = True
    except InvalidBrowserURL:
        accepted = False
    assert accepted == (inside and not never)


@pytest_twisted.ensureDeferred
async def test_validation_resolves_names_without_blocking(reactor):
    checked = await validate_browser_url("http://localhost:9222", LOOPBACK_AND_PRIVATE, reactor=reactor)
    assert checked.address in ("127.0.0.1", "::1")
    assert checked.host_header == "localhost:9222"
    with pytest.raises(InvalidBrowserURL, match=r"outside browser\.allowed_networks"):
        await validate_browser_url("http://localhost:9222", ("10.0.0.0/8",), reactor=reactor)
    with pytest.raises(InvalidBrowserURL, match="link-local"):
        await validate_browser_url("http://169.254.169.254:80", ("0.0.0.0/0",), reactor=reactor)


def test_host_header_uses_the_pinned_address_for_names():
    named = BrowserURL(
        url="http://chrome.lan:9222", scheme="http", host="chrome.lan", port=9222, path="", address="10.1.2.3"
    )
    assert named.host_header == "10.1.2.3:9222"
    v6 = BrowserURL(url="http://[::1]:9222", scheme="http", host="::1", port=9222, path="", address="::1")
    assert v6.host_header == "[::1]:9222"


@pytest_twisted.ensureDeferred
async def test_discover_real_chromium(reactor, chromium, http_client):
    ws_url = await discover(http_client, chromium.browser_url, timeout=5, clock=reactor)
    assert ws_url.startswith(f"ws://127.0.0.1:{chromium.port}/devtools/browser/")
    # A name that resolves to loopback gets the IP literal as Host, which Chrome accepts.
    pinned = BrowserURL(
        url="http://chrome.test:1", scheme="http", host="chrome.test", port=chromium.port, path="", address="127.0.0.1"
    )
    assert (await discover(http_client, pinned, timeout=5, clock=reactor)).startswith("ws://127.0.0.1:")


@pytest_twisted.ensureDeferred
async def test_real_chromium_rejects_a_named_host_header(reactor, chromium, http_client):
    """Keeps HOST_REJECTED honest: this is what Chrome answers to a name in Host."""
    response = await http_client.get(chromium.browser_url + "/json/version", headers={b"Host": [b"chrome.test"]})
    body = (await response.content()).decode()
    assert HOST_REJECTED in body


@pytest_twisted.ensureDeferred
async def test_websocket_urls_are_used_as_they_are(reactor, http_client):
    url = "ws://127.0.0.1:9/devtools/browser/x"
    assert await discover(http_client, url, timeout=1, clock=reactor) == url


@pytest_twisted.ensureDeferred
async def test_nothing_listening(reactor, http_client):
    from twisted.internet.protocol import Factory

    port = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
    number = port.getHost().port
    await port.stopListening()
    with pytest.raises(
        BrowserUnavailable,
        match=f"nothing listens at http://127.0.0.1:{number}; start Chrome with --remote-debugging-port={number}",
    ):
        await discover(http_client, f"http://127.0.0.1:{number}", timeout=5, clock=reactor)


@pytest_twisted.ensureDeferred
async def test_an_http_server_that_is_not_chrome(reactor, http_client, fixture_site):
    with pytest.raises(InvalidBrowserURL, match=r"is not a Chrome DevTools endpoint .*answered 404"):
        await discover(http_client, fixture_site.origin, timeout=5, clock=reactor)


class Canned:
    """A twisted.web resource answering every request with one canned response."""

    def __new__(cls, code, body):
        from twisted.web.resource import Resource

        class Answer(Resource):
            isLeaf = True

            def render_GET(self, request):
                request.setResponseCode(code)
                return body

        return Answer()


@pytest.fixture
def canned_server(reactor):
    from twisted.web.server import Site

    ports = []

    def serve(code, body):
        port = reactor.listenTCP(0, Site(Canned(code, body)), interface="127.0.0.1")
        ports.append(port)
        return f"http://127.0.0.1:{port.getHost().port}"

    yield serve
    for port in ports:
        pytest_twisted.blockon(port.stopListening())


@pytest.mark.parametrize(
    "code, body, message",
    [
        (200, b"<html>hello</html>", "did not answer JSON"),
        (200, b'{"Browser": "nginx"}', "has no webSocketDebuggerUrl"),
        (200, b'{"webSocketDebuggerUrl": "http://x"}', "has no webSocketDebuggerUrl"),
        (500, HOST_REJECTED.encode() + b".", "by IP address"),
        (503, b"{}", "answered 503"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_answers_that_are_not_devtools(reactor, http_client, canned_server, code, body, message):
    url = canned_server(code, body)
    with pytest.raises(InvalidBrowserURL, match=message):
        await discover(http_client, url, timeout=5, clock=reactor)


@pytest_twisted.ensureDeferred
async def test_a_server_that_never_answers_times_out(reactor, http_client):
    from twisted.internet.protocol import Factory, Protocol

    port = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
    try:
        url = f"http://127.0.0.1:{port.getHost().port}"
        with pytest.raises(BrowserUnavailable, match=r"did not answer within 0\.3 s"):
            await discover(http_client, url, timeout=0.3, clock=reactor)
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_discover_accepts_a_plain_agent(reactor, chromium):
    from twisted.web.client import Agent, HTTPConnectionPool

    agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
    assert (await discover(agent, chromium.browser_url, timeout=5, clock=reactor)).startswith("ws://")


class _ScriptedDNS:
    """A reactor whose name resolver answers from a script, one answer per lookup (DNS rebinding)."""

    def __init__(self, reactor, *answers: list[str]):
        self._reactor = reactor
        self._answers = list(answers)
        self.lookups = 0
        self.nameResolver = self

    def resolveHostName(self, receiver, host, port=0, addressTypes=None, transportSemantics="TCP"):
        from twisted.internet.address import IPv4Address, IPv6Address

        self.lookups += 1
        receiver.resolutionBegan(None)
        for address in self._answers.pop(0):
            kind = IPv6Address if ":" in address else IPv4Address
            receiver.addressResolved(kind("TCP", address, port))
        receiver.resolutionComplete()

    def __getattr__(self, name):
        return getattr(self._reactor, name)


@pytest_twisted.ensureDeferred
async def test_a_name_resolving_into_forbidden_space_is_refused(reactor):
    for answer in (["169.254.169.254"], ["127.0.0.1", "169.254.169.254"], ["10.0.0.5"]):
        dns = _ScriptedDNS(reactor, answer)
        with pytest.raises(InvalidBrowserURL):
            await validate_browser_url("http://chrome.dev.example:9222", ("127.0.0.0/8",), reactor=dns)


@pytest_twisted.ensureDeferred
async def test_a_changing_dns_answer_is_checked_again_and_the_checked_address_is_pinned(reactor):
    dns = _ScriptedDNS(reactor, ["127.0.0.1"], ["169.254.169.254"])
    first = await validate_browser_url("http://chrome.dev.example:9222", ("127.0.0.0/8",), reactor=dns)
    assert first.address == "127.0.0.1" and first.host_header == "127.0.0.1:9222"
    # The next connect resolves again; the rebound answer is refused instead of being used.
    with pytest.raises(InvalidBrowserURL, match=r"169\.254\.169\.254"):
        await validate_browser_url("http://chrome.dev.example:9222", ("127.0.0.0/8",), reactor=dns)
    assert dns.lookups == 2
