"""Who is calling, and what they may do."""

import fnmatch
import functools
import ipaddress
from collections.abc import Iterable

import attrs

ADMIN = "admin"
REGISTER = "register"
#: Connecting the user's browser through a tunnel (`mcproxy.tunnel`); ``register`` grants it too.
TUNNEL = "tunnel"
#: Having the proxy start a browser for the user on its own host (`mcproxy.browser.launch`).
LAUNCH = "launch"
IMPERSONATE = "impersonate"
METRICS = "metrics"
ALL_TOOLS = "tools:*"
DENY = "!"
NETWORK = "net:"


def _matches(rule: str, name: str, category: str) -> bool:
    """Whether a ``tools:...`` permission covers tool ``name`` of ``category``."""
    if not rule.startswith("tools:"):
        return False
    target = rule[len("tools:") :]
    if target.startswith("category:"):
        return fnmatch.fnmatchcase(category, target[len("category:") :])
    return fnmatch.fnmatchcase(name, target)


def _permission_set(permissions: Iterable[str]) -> frozenset[str]:
    """Permissions as a frozenset, whatever iterable was given (they key a cache)."""
    return frozenset(permissions)


@functools.lru_cache(maxsize=8192)
def _may_call_tool(permissions: frozenset[str], name: str, category: str, explicit_only: bool) -> bool:
    """`Principal.may_call_tool`, remembered: every call asks it, and few credentials differ."""
    if any(_matches(rule[1:], name, category) for rule in permissions if rule.startswith(DENY)):
        return False
    if ADMIN in permissions or f"tools:{name}" in permissions:
        return True
    if explicit_only:
        return False
    return any(_matches(rule, name, category) for rule in permissions if not rule.startswith(DENY))


@attrs.frozen
class Principal:
    """An authenticated caller: a user id and the permissions of its credential."""

    user_id: str
    permissions: frozenset[str] = attrs.field(default=frozenset(), converter=_permission_set)
    token_id: str | None = None
    #: The authenticated user when this principal acts for ``user_id`` through
    #: ``impersonate`` (``X-User-Id``); None when it is its own user.
    impersonator: str | None = None

    @property
    def is_admin(self) -> bool:
        return ADMIN in self.permissions

    @property
    def may_tunnel(self) -> bool:
        """Whether the credential may connect its user's browser through a tunnel (it calls no
        tools by itself)."""
        return self.has(TUNNEL) or self.has(REGISTER)

    def has(self, permission: str) -> bool:
        """True when the credential carries ``permission`` (admin carries everything)."""
        return self.is_admin or permission in self.permissions

    def may_call_tool(self, name: str, category: str, *, explicit_only: bool = False) -> bool:
        """Tool permission: granted by ``tools:*``, ``tools:<name>``, ``tools:category:<category>``
        or a name pattern (``tools:take_*``); a deny rule (``!tools:...``, same forms) always wins.

        With ``explicit_only`` only ``tools:<name>`` itself (or admin) grants the tool.
        """
        return _may_call_tool(self.permissions, name, category, explicit_only)

    def may_connect_from(self, address: str | None) -> bool:
        """Whether the credential may be used from ``address``: ``net:<CIDR>`` permissions
        restrict it to those networks (any of them); without one, from anywhere."""
        networks = [p[len(NETWORK) :] for p in self.permissions if p.startswith(NETWORK)]
        if not networks:
            return True
        try:
            client = ipaddress.ip_address(address or "")
        except ValueError:
            return False
        if isinstance(client, ipaddress.IPv6Address) and client.ipv4_mapped is not None:
            client = client.ipv4_mapped
        return any(client in ipaddress.ip_network(cidr, strict=False) for cidr in networks)

    def may_act_for(self, user_id: str) -> bool:
        """Whether this principal may act as (or manage) ``user_id``."""
        return user_id == self.user_id or self.is_admin or IMPERSONATE in self.permissions
