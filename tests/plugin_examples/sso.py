"""``sso-header``: believe the user name a trusted SSO reverse proxy puts in a header.

Settings: ``trusted_proxies`` (required, CIDRs of the proxies' own addresses: the TCP
peer, never ``X-Forwarded-For``), ``header`` (default ``X-Forwarded-User``) and
``permissions`` (space-separated, default ``tools:* register``).
"""

from twisted.plugin import IPlugin
from zope.interface import implementer

from mcproxy.auth.principal import Principal
from mcproxy.auth.tokens import is_valid_user_id
from mcproxy.errors import Unauthorized
from mcproxy.interfaces import IAuthenticator
from mcproxy.plugins import IAuthenticatorPlugin
from mcproxy.web.network import parse_address, peer_address, within


@implementer(IAuthenticator)
class SsoHeaderAuthenticator:
    """The header's user, when the request comes straight from a trusted proxy."""

    def __init__(self, header: str, trusted, permissions: frozenset[str]):
        self._header = header.encode("latin-1")
        self._name = header
        self._trusted = trusted
        self._permissions = permissions

    def authenticate(self, request):
        values = request.requestHeaders.getRawHeaders(self._header)
        if not values:
            return None
        peer = peer_address(request)
        if not within(parse_address(peer), self._trusted):
            # A client setting the header itself: a forged credential, not a missing one.
            raise Unauthorized(f"{self._name} is only accepted from the SSO proxy, not from {peer}")
        user_id = values[0].decode("latin-1").strip()
        if len(values) > 1 or not is_valid_user_id(user_id):
            raise Unauthorized(f"{self._name} must hold exactly one user id of 1-128 characters of A-Z a-z 0-9 . _ @ -")
        return Principal(user_id=user_id, permissions=self._permissions)


@implementer(IPlugin, IAuthenticatorPlugin)
class SsoHeaderPlugin:
    name = "sso-header"
    description = "trusts a user header set by an SSO reverse proxy"
    options = ("trusted_proxies", "header", "permissions")

    def make(self, config, store, reactor):
        return SsoHeaderAuthenticator(
            config.get("header", "X-Forwarded-User"),
            config.networks("trusted_proxies"),
            frozenset(config.words("permissions", ("tools:*", "register"))),
        )


sso_header = SsoHeaderPlugin()
