"""OAuth 2.1 resource-server metadata (RFC 9728), as the MCP authorization spec asks.

``GET /.well-known/oauth-protected-resource`` tells an MCP client which authorization
server(s) issue tokens for this proxy and which scopes (our permission names) exist. Every
401 points at it (``WWW-Authenticate: Bearer resource_metadata="..."``, see
`mcproxy.auth.chain`), and JWTs must name the same resource as their audience (RFC 8707).

The resource is ``server.public_url`` when set. Otherwise it is derived from the request
(scheme and ``Host``), which is right for direct connections but is only advertised:
the JWT audience check never trusts a client-supplied ``Host``.
"""

import re

from mcproxy.auth.principal import ADMIN, ALL_TOOLS, IMPERSONATE, METRICS, REGISTER
from mcproxy.web.routes import Area, Route

WELL_KNOWN = "/.well-known/oauth-protected-resource"
DEFAULT_SCOPES = (ALL_TOOLS, REGISTER, ADMIN, IMPERSONATE, METRICS)

# host, host:port, [v6], [v6]:port -- anything else in Host is not echoed back.
_HOST = re.compile(r"(?:[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?\Z")


class ProtectedResource:
    """What this proxy says about itself as an OAuth protected resource."""

    def __init__(self, public_url: str = "", authorization_servers=(), scopes=DEFAULT_SCOPES):
        self._public_url = public_url.rstrip("/")
        self._authorization_servers = list(authorization_servers)
        self._scopes = list(scopes)

    def resource(self, request) -> str:
        """The resource identifier: the public URL, else scheme://Host of the request."""
        if self._public_url:
            return self._public_url
        scheme = "https" if request.isSecure() else "http"
        host = (request.getHeader(b"host") or b"").decode("latin-1")
        if not _HOST.match(host):
            address = request.getHost()
            host = f"[{address.host}]" if ":" in address.host else address.host
            host = f"{host}:{address.port}"
        return f"{scheme}://{host.lower()}"

    def metadata_url(self, request) -> str:
        """Where the metadata document of this request's resource is (RFC 9728 §3.1)."""
        base = self.resource(request)
        scheme, _, rest = base.partition("://")
        authority, slash, path = rest.partition("/")
        return f"{scheme}://{authority}{WELL_KNOWN}{slash}{path}"

    def document(self, request) -> dict:
        """The RFC 9728 metadata JSON."""
        return {
            "resource": self.resource(request),
            "authorization_servers": self._authorization_servers,
            "bearer_methods_supported": ["header"],
            "scopes_supported": self._scopes,
            "resource_name": "mcproxy",
        }

    def path_suffix(self) -> str:
        """The path of the public URL, which RFC 9728 appends to the well-known path."""
        _, _, rest = self._public_url.partition("://")
        _, slash, path = rest.partition("/")
        return slash + path


class WellKnown:
    """``/.well-known/oauth-protected-resource[/<public path>]``: the metadata, to anyone."""

    def __init__(self, metadata: ProtectedResource):
        self._metadata = metadata

    def area(self) -> Area:
        suffix = self._metadata.path_suffix().rstrip("/")
        pattern = re.escape(WELL_KNOWN) + (f"(?:{re.escape(suffix)})?" if suffix else "") + "/*"
        return Area(tuple(Route(method, pattern, self.document) for method in (b"GET", b"HEAD")))

    async def document(self, request) -> tuple[int, dict]:
        # Public and the same for everyone: browser-based clients may read it.
        request.setHeader(b"Access-Control-Allow-Origin", b"*")
        return 200, self._metadata.document(request)
