"""OAuth resource-server metadata (RFC 9728) and the WWW-Authenticate challenges of every 401/403,
on the MCP endpoints and the admin API of a real site."""

import json
import time

import attrs
import jwt
import pytest
import pytest_twisted
import treq
from mcp.shared.auth import ProtectedResourceMetadata
from mcp.shared.auth_utils import check_resource_allowed

from mcproxy.auth.chain import AuthenticationChain
from mcproxy.auth.jwt import JWTAuthenticator, audiences_for
from mcproxy.auth.tokens import TokenAuthenticator, create_token
from mcproxy.config import Config
from mcproxy.storage.memory import MemoryStore
from mcproxy.testing.deferreds import success_result_of
from mcproxy.testing.fake_tools import FakeToolProvider
from mcproxy.testing.requests import FakeRequest
from mcproxy.web.oauth import ProtectedResource, WellKnown

SECRET = "oauth-test-secret-" * 4
AUTH_SERVER = "https://login.example.com/realms/dev"


def request_to(host: bytes | None, secure=False) -> FakeRequest:
    request = FakeRequest([b""])
    if host is not None:
        request.requestHeaders.setRawHeaders(b"host", [host])
    request.isSecure = lambda: secure
    return request


def test_resource_from_public_url_or_request():
    public = ProtectedResource("https://proxy.example.com/mcproxy/", [AUTH_SERVER])
    assert public.resource(request_to(b"evil.example")) == "https://proxy.example.com/mcproxy"
    assert public.metadata_url(request_to(None)) == (
        "https://proxy.example.com/.well-known/oauth-protected-resource/mcproxy"
    )
    derived = ProtectedResource()
    assert derived.resource(request_to(b"Proxy.Example.com:8443", secure=True)) == "https://proxy.example.com:8443"
    assert derived.metadata_url(request_to(b"[::1]:3000")) == ("http://[::1]:3000/.well-known/oauth-protected-resource")
    # A Host that is not a host is never echoed into the challenge; the socket address is used.
    odd = request_to(b'x" error="forged')
    assert derived.resource(odd) == f"http://{odd.getHost().host}:{odd.getHost().port}"


def test_document_matches_the_sdk_model():
    metadata = ProtectedResource("https://proxy.example.com", [AUTH_SERVER])
    document = metadata.document(request_to(None))
    assert document == {
        "resource": "https://proxy.example.com",
        "authorization_servers": [AUTH_SERVER],
        "bearer_methods_supported": ["header"],
        "scopes_supported": ["tools:*", "register", "admin", "impersonate", "metrics"],
        "resource_name": "mcproxy",
    }
    parsed = ProtectedResourceMetadata.model_validate(document)
    assert str(parsed.authorization_servers[0]) == AUTH_SERVER
    # The MCP client accepts it for the /mcp endpoint and uses it as the token audience.
    assert check_resource_allowed("https://proxy.example.com/mcp", str(parsed.resource).rstrip("/"))
    assert document["resource"] in audiences_for("", "https://proxy.example.com")


@attrs.define
class Site:
    url: str
    store: MemoryStore
    sessions: object
    port: object

    def token(self, user, *permissions):
        from twisted.internet import reactor

        return success_result_of(create_token(self.store, user, list(permissions), None, reactor))[0]

    async def send(self, method, path, token=None, headers=None, body=None):
        sent = {"Content-Type": ["application/json"], "Accept": ["application/json, text/event-stream"]}
        if token:
            sent["Authorization"] = [f"Bearer {token}"]
        sent.update(headers or {})
        data = None if body is None else json.dumps(body).encode()
        response = await treq.request(method, self.url + path, data=data, headers=sent, persistent=False)
        content = await response.content()
        return response.code, response.headers.getRawHeaders("www-authenticate"), content


@pytest.fixture
def site(reactor):
    from mcproxy.auth.admission import Admission
    from mcproxy.session.registry import SessionRegistry
    from mcproxy.web.admin import AdminDependencies
    from mcproxy.web.front import build_router
    from mcproxy.web.origins import OriginPolicy
    from mcproxy.web.site import ProxySite
    from mcproxy.web.transports import McpTransports

    config = Config()
    store = MemoryStore()
    metadata = ProtectedResource("", [AUTH_SERVER])
    chain = AuthenticationChain(
        [TokenAuthenticator(store, reactor), JWTAuthenticator(reactor, secret=SECRET)],
        "tokens",
        reactor,
        resource_metadata=metadata.metadata_url,
    )
    sessions = SessionRegistry(reactor, config.session.idle_timeout)
    transports = McpTransports(reactor, config, FakeToolProvider(reactor), sessions)
    admin = AdminDependencies(
        clock=reactor,
        store=store,
        pool=None,
        sessions=sessions,
        probe_browser=None,
        max_body_bytes=65536,
        session_token_ttl=60.0,
        started_at=reactor.seconds(),
    )
    root = build_router(
        origins=OriginPolicy(config),
        admission=Admission(chain.authenticate),
        transports=transports,
        admin=admin,
        well_known=WellKnown(metadata),
    )
    port = reactor.listenTCP(0, ProxySite(root, max_body_bytes=65536), interface="127.0.0.1")
    served = Site(f"http://127.0.0.1:{port.getHost().port}", store, sessions, port)
    yield served
    sessions.close_all()
    pytest_twisted.blockon(port.stopListening())


@pytest_twisted.ensureDeferred
async def test_metadata_is_served_to_anyone(site):
    response = await treq.get(site.url + "/.well-known/oauth-protected-resource", persistent=False)
    assert response.code == 200
    assert response.headers.getRawHeaders("access-control-allow-origin") == ["*"]
    document = json.loads(await response.content())
    assert document["resource"] == site.url
    assert document["authorization_servers"] == [AUTH_SERVER]
    for path, method, code in (
        ("/.well-known/oauth-protected-resource/elsewhere", "GET", 404),
        ("/.well-known/openid-configuration", "GET", 404),
        ("/.well-known/oauth-protected-resource", "POST", 405),
    ):
        response = await treq.request(method, site.url + path, persistent=False)
        assert response.code == code
        assert "error" in json.loads(await response.content())


def _challenge(site, error=None, scope=None) -> list[str]:
    value = f'Bearer realm="mcproxy", resource_metadata="{site.url}/.well-known/oauth-protected-resource"'
    if error:
        value += f', error="{error}"'
    if scope:
        value += f', scope="{scope}"'
    return [value]


INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}


@pytest.mark.parametrize(
    "method, path, body",
    [
        ("POST", "/mcp", INITIALIZE),
        ("GET", "/sse", None),
        ("POST", "/message?sessionId=x", INITIALIZE),
        ("GET", "/api/users", None),
        ("POST", "/api/tokens", {"userId": "bob"}),
        ("GET", "/api/users/bob/status", None),
    ],
)
@pytest_twisted.ensureDeferred
async def test_every_401_points_at_the_metadata(site, method, path, body):
    code, challenge, content = await site.send(method, path, body=body)
    assert (code, challenge) == (401, _challenge(site))
    assert json.loads(content)["error"]["code"] == "unauthorized"
    expired = jwt.encode({"sub": "alice", "exp": int(time.time()) - 3600}, SECRET, algorithm="HS256")
    code, challenge, content = await site.send(method, path, token=expired, body=body)
    assert (code, challenge) == (401, _challenge(site, "invalid_token"))
    assert "expired" in json.loads(content)["error"]["message"]


@pytest_twisted.ensureDeferred
async def test_403s_carry_insufficient_scope(site):
    alice = site.token("alice", "tools:*")
    # MCP endpoint: acting for another user needs impersonate.
    code, challenge, _ = await site.send("POST", "/mcp", token=alice, headers={"X-User-Id": ["bob"]}, body=INITIALIZE)
    assert (code, challenge) == (403, _challenge(site, "insufficient_scope", "impersonate"))
    # Admin API: creating tokens needs admin.
    code, challenge, content = await site.send("POST", "/api/tokens", token=alice, body={"userId": "bob"})
    assert code == 403 and json.loads(content)["error"]["code"] == "forbidden"
    assert challenge[0].startswith(_challenge(site, "insufficient_scope")[0])
    # A good credential that may do it gets no challenge at all.
    code, challenge, _ = await site.send("POST", "/mcp", token=alice, body=INITIALIZE)
    assert code == 200 and challenge is None


@pytest_twisted.ensureDeferred
async def test_a_refused_origin_is_403_without_a_challenge(site):
    alice = site.token("alice", "tools:*")
    code, challenge, content = await site.send(
        "POST", "/mcp", token=alice, headers={"Origin": ["https://evil.example"]}, body=INITIALIZE
    )
    assert code == 403 and challenge is None
    assert json.loads(content)["error"]["code"] == "origin_not_allowed"


@pytest_twisted.ensureDeferred
async def test_duplicate_authorization_headers_are_400_everywhere(site):
    alice = site.token("alice", "tools:*")
    twice = {"Authorization": [f"Bearer {alice}", f"Bearer {alice}"]}
    for method, path in (("POST", "/mcp"), ("GET", "/api/users/alice/status")):
        code, _challenge, content = await site.send(
            method, path, headers=twice, body=INITIALIZE if method == "POST" else None
        )
        assert code == 400
        assert json.loads(content)["error"]["code"] == "duplicate_authorization"
