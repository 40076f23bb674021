"""Validation of user-supplied browser URLs.

A ``browserURL`` is untrusted input that makes the proxy open connections, so it is
checked for shape and, after resolving the host without blocking the reactor, for
where it points: only into ``browser.allowed_networks`` and never into link-local space
(cloud metadata services live there). The check runs again at every connect, so a name
that later resolves elsewhere (DNS rebinding) is refused then.
"""

import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IResolutionReceiver
from zope.interface import implementer

from mcproxy.errors import InvalidBrowserURL

SCHEMES = {"http": 80, "https": 443, "ws": 80, "wss": 443}
NEVER = (ipaddress.ip_network("169.254.0.0/16"), ipaddress.ip_network("fe80::/10"))
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
            raise InvalidBrowserURL(
                f"browserURL {url!r} must be just scheme://host:port (no path), e.g. {_EXAMPLE}"
            )
        path = ""
    else:
        if parts.fragment:
            raise InvalidBrowserURL(f"browserURL {url!r} must not have a fragment")
        path = (path or "/") + (f"?{parts.query}" if parts.query else "")
    return BrowserURL(url=url.strip(), scheme=scheme, host=host.lower(), port=port, path=path)


def check_address(address: str, allowed_networks: Iterable[str], *, what: str) -> None:
    """Refuse ``address`` unless it is in ``allowed_networks`` and not link-local."""
    ip: IPAddress = ipaddress.ip_address(address.split("%", 1)[0])
    mapped = getattr(ip, "ipv4_mapped", None)
    candidates = [ip] if mapped is None else [ip, mapped]
    if any(c in net for c in candidates for net in NEVER if c.version == net.version):
        raise InvalidBrowserURL(
            f"{what} points to the link-local address {address}, which is never allowed; "
            "give the address of the machine that runs Chrome"
        )
    networks = [ipaddress.ip_network(n, strict=False) for n in allowed_networks]
    if not any(c in net for c in candidates for net in networks if c.version == net.version):
        raise InvalidBrowserURL(
            f"{what} points to {address}, which is outside browser.allowed_networks; "
            "use an address inside them or ask the operator to allow that network"
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
    "check_address",
    "parse_browser_url",
    "resolve",
    "validate_browser_url",
]
