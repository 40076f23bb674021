"""Which Host names and browser Origins the server answers (DNS rebinding, cross-site posts).

Host policy: see `check_host`. Origin policy: a request without ``Origin`` is allowed (IDE
clients send none); an origin in ``cors.allowed_origins`` (or ``*`` there) is allowed; a
loopback origin (``http(s)://localhost``, ``127.0.0.0/8``, ``[::1]``, any port) is allowed
only when every listener of the server is on a loopback interface. Anything else is 403.
A trusted origin gets CORS headers (and the MCP endpoints answer ``OPTIONS`` preflights) so
that browser-based MCP clients can use them.
"""

import functools
import ipaddress
import re
from urllib.parse import urlsplit

from twisted.web.iweb import IRequest

from mcproxy.errors import Forbidden

_EXPOSED_HEADERS = b"Mcp-Session-Id, MCP-Protocol-Version, X-Request-Id, WWW-Authenticate"
_ALLOWED_HEADERS = (
    b"Authorization, Content-Type, Accept, Mcp-Session-Id, MCP-Protocol-Version, Mcp-Method, Mcp-Name, "
    b"Last-Event-ID, X-Request-Id, X-User-Id"
)


def is_loopback_host(host: str | None) -> bool:
    """Whether ``host`` (a name or an address, without brackets) is this machine."""
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def listens_on_loopback_only(listen: tuple[str, ...]) -> bool:
    """Whether every endpoint string listens on a loopback interface (or a UNIX socket)."""
    for endpoint in listen:
        if endpoint.startswith("unix:"):
            continue
        match = re.search(r"(?:^|:)interface=((?:\\:|[^:])+)", endpoint)
        interface = match.group(1).replace("\\", "").strip("[]") if match else None
        if not is_loopback_host(interface):
            return False
    return bool(listen)


def check_origin(request: IRequest, allowed: tuple[str, ...], allow_loopback: bool) -> None:
    """Raise `Forbidden` for a browser origin we do not trust (see the module docstring)."""
    raw = request.getHeader(b"origin")
    if raw is None:
        return
    origin = raw.decode("latin-1").strip().rstrip("/")
    trusted = "*" in allowed or origin in (a.rstrip("/") for a in allowed)
    if not trusted and allow_loopback:
        parts = urlsplit(origin)
        trusted = parts.scheme in ("http", "https") and is_loopback_host(parts.hostname)
    if not trusted:
        raise Forbidden(f"origin {origin!r} is not allowed; add it to cors.allowed_origins", code="origin_not_allowed")
    # CORS, so that browser-based MCP clients of a trusted origin can read the answers.
    request.setHeader(b"Access-Control-Allow-Origin", origin.encode("latin-1"))
    request.setHeader(b"Access-Control-Expose-Headers", _EXPOSED_HEADERS)
    request.setHeader(b"Vary", b"Origin")


def check_host(request: IRequest, allowed: tuple[str, ...], allow_loopback: bool) -> None:
    """Raise `Forbidden` for a ``Host`` this server does not answer to (DNS rebinding).

    A page whose own name was re-pointed at the proxy's address talks to it under that
    name. Host names in ``allowed`` (``server.allowed_hosts`` and the host of
    ``server.public_url``) always pass; loopback names pass on a loopback-only server; with
    neither configured on a public listener, every host passes (nothing to compare with).
    """
    if not allowed and not allow_loopback:
        return
    raw = (request.getHeader(b"host") or b"").decode("latin-1").strip()
    if host_allowed(raw, allowed, allow_loopback):
        return
    raise Forbidden(
        f"host {raw!r} is not a name of this server; add it to server.allowed_hosts", code="host_not_allowed"
    )


@functools.lru_cache(maxsize=1024)
def host_allowed(raw: str, allowed: tuple[str, ...], allow_loopback: bool) -> bool:
    """Whether the ``Host`` value ``raw`` names this server (see `check_host`); remembered,
    since every request of a client sends the same one."""
    try:
        host = urlsplit("//" + raw).hostname if raw else None
    except ValueError:
        return False
    return host is not None and (host in allowed or (allow_loopback and is_loopback_host(host)))


class OriginPolicy:
    """The Host and Origin rules of one server, kept live by `reconfigure` (live reload).

    ``allow_loopback`` defaults to whether every ``server.listen`` endpoint is on loopback.
    """

    def __init__(self, config, allow_loopback: bool | None = None):
        if allow_loopback is None:
            allow_loopback = listens_on_loopback_only(tuple(config.server.listen))
        self.allow_loopback = allow_loopback
        self.reconfigure(config)

    def reconfigure(self, config) -> None:
        """New ``cors.allowed_origins``, ``server.allowed_hosts`` and ``server.public_url``."""
        self.allowed_origins = tuple(config.cors.allowed_origins)
        public_host = urlsplit(config.server.public_url).hostname if config.server.public_url else None
        hosts = [host.lower() for host in config.server.allowed_hosts]
        self.allowed_hosts = tuple([*hosts, public_host] if public_host else hosts)

    def check_host(self, request: IRequest) -> None:
        check_host(request, self.allowed_hosts, self.allow_loopback)

    def check_origin(self, request: IRequest) -> None:
        check_origin(request, self.allowed_origins, self.allow_loopback)

    def check_api_origin(self, request: IRequest) -> None:
        """The Origin rule of the HTTP API: the MCP endpoints' one, but the server's own
        pages (same origin) may call it too."""
        origin = request.getHeader(b"origin")
        host = request.getHeader(b"host")
        if origin is not None and host is not None and origin.partition(b"://")[2] == host:
            return
        self.check_origin(request)

    def preflight(self, request: IRequest, allowed: bytes) -> None:
        """Answer a CORS preflight for the methods ``allowed``: no credential is sent with
        it, so only the origin is checked."""
        self.check_origin(request)
        request.setHeader(b"Allow", allowed)
        request.setHeader(b"Access-Control-Allow-Methods", allowed)
        request.setHeader(b"Access-Control-Allow-Headers", _ALLOWED_HEADERS)
        request.setHeader(b"Access-Control-Max-Age", b"600")
        request.setResponseCode(204)
        request.finish()
