"""Validation of user-supplied browser URLs.

A ``browserURL`` is untrusted input that makes the proxy open connections, so it is
checked for shape and, after resolving the host without blocking the reactor, for
where it points: only into ``browser.allowed_networks`` and never into link-local space or
onto a cloud metadata service, even one inside an allowed range. The check runs again at
every connect, so a name that later resolves elsewhere (DNS rebinding) is refused then.
"""

import ipaddress
import re
from collections.abc import Iterable
from urllib.parse import urlsplit

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IResolutionReceiver
from zope.interface import implementer

from mcproxy.config import parse_user_network
from mcproxy.errors import Forbidden, InvalidBrowserURL

SCHEMES = {"http": 80, "https": 443, "ws": 80, "wss": 443}
LINK_LOCAL = (ipaddress.ip_network("169.254.0.0/16"), ipaddress.ip_network("fe80::/10"))
#: Instance-metadata and host services of cloud providers outside link-local space; some sit
#: inside ranges an operator allows (fd00:ec2::254 is in fc00::/7).
CLOUD_METADATA = tuple(
    ipaddress.ip_network(n)
    for n in (
        "fd00:ec2::254/128",  # AWS instance metadata over IPv6
        "100.100.100.200/32",  # Alibaba Cloud metadata
        "168.63.129.16/32",  # Azure WireServer
        "192.0.0.192/32",  # Oracle Cloud metadata
    )
)
#: NAT64 (RFC 6052) embeds an IPv4 address in IPv6: checked as that IPv4 address too.
NAT64 = ipaddress.ip_network("64:ff9b::/96")
#: Chrome's browser-level DevTools WebSocket path.
BROWSER_WS_PATH = re.compile(r"/devtools/browser/([A-Za-z0-9-]{1,64})\Z")
_EXAMPLE = "http://127.0.0.1:9222"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@attrs.frozen
class BrowserURL:
    """A checked browser URL; ``address`` is the IP the connection must use (pinned)."""

    url: str
    scheme: str
    host: str
    port: int
    path: str
    address: str | None = None

    @property
    def is_websocket(self) -> bool:
        """True for ws(s) URLs, which are used without discovery."""
        return self.scheme in ("ws", "wss")

    @property
    def secure(self) -> bool:
        """True for https/wss."""
        return self.scheme in ("https", "wss")

    @property
    def host_header(self) -> str:
        """A ``Host`` value Chrome accepts: an IP literal or localhost, never a name."""
        host = self.host
        if not _is_ip(host) and host != "localhost" and self.address:
            host = self.address
        if ":" in host:
            host = f"[{host}]"
        return f"{host}:{self.port}"

    @property
    def connect_host(self) -> str:
        """Where to open the TCP connection: the pinned address when known."""
        return self.address or self.host


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


#: The registered browser URL of a user whose browser dials in (``mcproxy-connect``,
#: `mcproxy.tunnel`) rather than listening where the proxy can reach it.
TUNNEL_URL = "tunnel:"


def is_tunnel(url: str) -> bool:
    """Whether ``url`` names the user's tunnel rather than an address to dial."""
    return url == TUNNEL_URL


#: The registered browser URL of a user whose browser the proxy starts on its own host
#: (`mcproxy.browser.launch`), driven over a pipe rather than dialled.
LAUNCH_URL = "launch:"


def is_launched(url: str) -> bool:
    """Whether ``url`` names a browser the proxy launches rather than an address to dial."""
    return url == LAUNCH_URL


def is_dialled(url: str) -> bool:
    """Whether ``url`` is an address the proxy dials (not a tunnel, not a launched browser)."""
    return not (is_tunnel(url) or is_launched(url))


def parse_browser_url(url: str) -> BrowserURL:
    """Check the shape of ``url`` (no network access); raise InvalidBrowserURL."""
    if not isinstance(url, str) or not url.strip():
        raise InvalidBrowserURL(f"browserURL must be a URL such as {_EXAMPLE}")
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as e:
        raise InvalidBrowserURL(f"browserURL {url!r} is malformed ({e}); use a URL such as {_EXAMPLE}") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise InvalidBrowserURL(
            f"browserURL scheme {parts.scheme or '(none)'!r} is not allowed; use http(s)://host:port "
            f"(the DevTools HTTP endpoint, e.g. {_EXAMPLE}) or ws(s)://host:port/devtools/browser/<id>"
        )
    if parts.username is not None or parts.password is not None:
        raise InvalidBrowserURL("browserURL must not contain credentials")
    host = parts.hostname
    if not host:
        raise InvalidBrowserURL(f"browserURL {url!r} has no host; use a URL such as {_EXAMPLE}")
    if port is None:
        raise InvalidBrowserURL(
            f"browserURL {url!r} has no port; give the --remote-debugging-port of Chrome, e.g. {_EXAMPLE}"
        )
    path = parts.path
    if scheme in ("http", "https"):
        if path not in ("", "/") or parts.query or parts.fragment:
            raise InvalidBrowserURL(f"browserURL {url!r} must be just scheme://host:port (no path), e.g. {_EXAMPLE}")
        path = ""
    elif parts.query or parts.fragment or not BROWSER_WS_PATH.match(path):
        raise InvalidBrowserURL(
            f"browserURL {url!r} is not a browser DevTools WebSocket: a ws(s) URL must be"
            " ws://host:port/devtools/browser/<id>, the webSocketDebuggerUrl of /json/version"
            f" (or give the HTTP endpoint instead, e.g. {_EXAMPLE})"
        )
    return BrowserURL(url=url.strip(), scheme=scheme, host=host.lower(), port=port, path=path)


def browser_id(path: str) -> str | None:
    """Chrome's browser id in a ``/devtools/browser/<id>`` path; it changes at every Chrome start."""
    match = BROWSER_WS_PATH.match(path)
    return match.group(1) if match else None


def ip_forms(address: str) -> list[IPAddress]:
    """The address and the IPv4 address it embeds, if any (mapped, 6to4, NAT64)."""
    ip: IPAddress = ipaddress.ip_address(address.split("%", 1)[0])
    forms = [ip]
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            forms.append(embedded)
    return forms


def endpoint_key(address: str, port: int) -> tuple[str, int]:
    """What names one listening socket, whatever URL form reached it: every loopback address
    is the same machine, and an embedded IPv4 address is that address."""
    ip = ip_forms(address)[-1]
    return ("loopback" if ip.is_loopback else ip.compressed, port)


def check_address(address: str, allowed_networks: Iterable[str], *, what: str) -> None:
    """Refuse ``address`` unless it is in ``allowed_networks``, not link-local and not a
    cloud metadata service."""
    candidates = ip_forms(address)
    if any(c in net for c in candidates for net in LINK_LOCAL if c.version == net.version):
        raise InvalidBrowserURL(
            f"{what} points to the link-local address {address}, which is never allowed; "
            "give the address of the machine that runs Chrome"
        )
    if any(c in net for c in candidates for net in CLOUD_METADATA if c.version == net.version):
        raise InvalidBrowserURL(
            f"{what} points to {address}, a cloud metadata service, which is never allowed; "
            "give the address of the machine that runs Chrome"
        )
    networks = [ipaddress.ip_network(n, strict=False) for n in allowed_networks]
    if not any(c in net for c in candidates for net in networks if c.version == net.version):
        raise InvalidBrowserURL(
            f"{what} points to {address}, which is outside browser.allowed_networks; "
            "use an address inside them or ask the operator to allow that network"
        )


def check_user_networks(user_id: str, url: BrowserURL, addresses: Iterable[str], entries: Iterable[str]) -> None:
    """``browser.user_networks``: a user with entries (or, without, the ``*`` entries) may only
    register a browser at one of their URLs or with every address inside one of their networks."""
    rules = [parse_user_network(entry) for entry in entries]
    targets = [target for user, target in rules if user == user_id] or [t for user, t in rules if user == "*"]
    if not targets:
        return
    place = (url.scheme, url.host, url.port, url.path)
    addresses = list(addresses)
    for target in targets:
        if "://" in target:
            allowed = parse_browser_url(target)
            if (allowed.scheme, allowed.host, allowed.port, allowed.path) == place:
                return
        else:
            network = ipaddress.ip_network(target, strict=False)
            if addresses and all(
                any(f in network for f in ip_forms(a) if f.version == network.version) for a in addresses
            ):
                return
    raise Forbidden(
        f"browserURL {url.url} is not one of the browsers {user_id} may register (browser.user_networks);"
        " ask the operator to add it",
        code="browser_not_allowed",
    )


@implementer(IResolutionReceiver)
class _Receiver:
    def __init__(self) -> None:
        self.addresses: list[str] = []
        self.done: Deferred[list[str]] = Deferred()

    def resolutionBegan(self, resolution) -> None:
        pass

    def addressResolved(self, address) -> None:
        self.addresses.append(address.host)

    def resolutionComplete(self) -> None:
        self.done.callback(self.addresses)


async def resolve(reactor, host: str, *, timeout: float) -> list[str]:
    """Resolve ``host`` through the reactor's (threaded) resolver, bounded by ``timeout``."""
    if _is_ip(host):
        return [host]
    receiver = _Receiver()
    reactor.nameResolver.resolveHostName(receiver, host, 0, transportSemantics="TCP")
    receiver.done.addTimeout(timeout, reactor)
    try:
        addresses = await receiver.done
    except defer.TimeoutError:
        raise InvalidBrowserURL(f"resolving {host!r} took more than {timeout:g} s") from None
    if not addresses:
        raise InvalidBrowserURL(f"the host name {host!r} does not resolve; check the browserURL")
    return list(dict.fromkeys(addresses))


async def validate_browser_url(
    url: str | BrowserURL, allowed_networks: Iterable[str], *, reactor, timeout: float = 5.0
) -> BrowserURL:
    """Parse ``url``, resolve its host and check every address; the result pins one address.

    Raises InvalidBrowserURL with a message that says what to change.
    """
    parsed = url if isinstance(url, BrowserURL) else parse_browser_url(url)
    allowed = tuple(allowed_networks)
    addresses = await resolve(reactor, parsed.host, timeout=timeout)
    for address in addresses:
        check_address(address, allowed, what=f"browserURL {parsed.url}")
    # Prefer IPv4: Chrome's --remote-debugging-port listens on 127.0.0.1 by default.
    addresses.sort(key=lambda a: ipaddress.ip_address(a.split("%", 1)[0]).version)
    return attrs.evolve(parsed, address=addresses[0])


__all__ = [
    "BrowserURL",
    "browser_id",
    "check_address",
    "check_user_networks",
    "endpoint_key",
    "ip_forms",
    "parse_browser_url",
    "resolve",
    "validate_browser_url",
]
