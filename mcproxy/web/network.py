"""Who is on the other end of a request, and whether they may knock at all.

The client address is the peer's, unless the peer is a trusted proxy: then the
``X-Forwarded-For`` chain is read from the right, skipping trusted proxies, and the first
address that is not one of them is the client. Anything a client could forge (the left
part of the chain, a header from an untrusted peer) is never believed.
"""

import functools
import ipaddress
from collections.abc import Iterable

from mcproxy.errors import Forbidden

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def networks(cidrs: Iterable[str]) -> tuple[Network, ...]:
    """Parse CIDR strings (validated by the configuration already)."""
    return tuple(ipaddress.ip_network(cidr, strict=False) for cidr in cidrs)


@functools.lru_cache(maxsize=4096)
def parse_address(text: str):
    """An ip_address from text (IPv4-mapped IPv6 as IPv4), or None when it is not one;
    remembered, as the same clients come back request after request."""
    try:
        address = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def within(address, nets: tuple[Network, ...]) -> bool:
    """Whether ``address`` (an ip_address or None) lies in one of ``nets``."""
    return address is not None and any(address in net for net in nets)


def peer_address(request) -> str:
    """The address of the TCP peer ("unix" for a Unix socket)."""
    peer = request.getClientAddress()
    return getattr(peer, "host", None) or "unix"


class ClientPolicy:
    """Client address resolution and the ``network.ip_allow`` / ``network.ip_deny`` lists."""

    def __init__(self, ip_allow: Iterable[str] = (), ip_deny: Iterable[str] = (), trusted_proxies: Iterable[str] = ()):
        self._allow = networks(ip_allow)
        self._deny = networks(ip_deny)
        self._trusted = networks(trusted_proxies)

    def client_address(self, request) -> str:
        """The client's address as text, believing ``X-Forwarded-For`` only from trusted proxies."""
        peer = peer_address(request)
        if not self._trusted or not within(parse_address(peer), self._trusted):
            return peer
        chain: list[str] = []
        for header in request.requestHeaders.getRawHeaders(b"x-forwarded-for") or ():
            chain.extend(part.strip() for part in header.decode("latin-1").split(","))
        client = peer
        for hop in reversed(chain):
            address = parse_address(hop)
            if address is None:
                break  # garbage in the chain: stop at the last hop we could read
            client = str(address)
            if not within(address, self._trusted):
                break
        return client

    def admit(self, address: str) -> None:
        """Refuse (403) an address outside the allow-list or inside the deny-list."""
        parsed = parse_address(address)
        if address == "unix":
            return
        if within(parsed, self._deny) or (self._allow and not within(parsed, self._allow)):
            raise Forbidden(f"requests from {address} are not allowed here", code="address_denied")
