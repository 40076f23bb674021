"""A running daemon with an identity provider: JWTs, Basic, and the OAuth resource metadata."""

import base64
import time

import jwt
import pytest_twisted
import treq

from mcproxy.auth.basic import hash_password
from mcproxy.testing.daemon import start_proxy

SECRET = "s" * 32
PUBLIC = "https://mcp.example.test"


@pytest_twisted.async_yield_fixture
async def proxy(reactor, tmp_path):
    running = await start_proxy(
        reactor,
        tmp_path,
        server={"public_url": PUBLIC},
        auth={
            "jwt_secret": SECRET,
            "jwt_issuer": "https://idp.example.test",
            "authorization_servers": ["https://idp.example.test"],
            "basic": True,
        },
    )
    yield running
    await running.stop()


def _jwt(**claims) -> str:
    now = int(time.time())
    body = {
        "sub": "dana",
        "aud": PUBLIC,
        "iss": "https://idp.example.test",
        "iat": now,
        "exp": now + 300,
        "scope": "tools:* register openid",
    }
    body.update(claims)
    return jwt.encode(body, SECRET, algorithm="HS256")


@pytest_twisted.ensureDeferred
async def test_jwts_from_the_identity_provider_work_everywhere(proxy):
    token = _jwt()
    code, body, _ = await proxy.api("GET", "/api/users/dana/status", token=token)
    assert code == 404 and body["error"]["code"] == "not_found"  # authenticated; dana has no browser yet
    answer = await proxy.call_tool(token, "list_pages")
    assert "No browser is registered for user dana" in answer["result"]["content"][0]["text"]
    code, body, headers = await proxy.api("GET", "/api/users", token=token)
    assert code == 403
    assert 'error="insufficient_scope"' in headers.getRawHeaders("www-authenticate")[0]
    assert 'scope="admin"' in headers.getRawHeaders("www-authenticate")[0]
    for bad, reason in (
        (_jwt(aud="https://other.example.test"), "audience"),
        (_jwt(exp=int(time.time()) - 3600), "expired"),
        (jwt.encode({"sub": "dana", "aud": PUBLIC}, "wrong" * 8, algorithm="HS256"), "signature"),
        (_jwt(iss="https://evil.example.test"), "issuer"),
    ):
        code, body, headers = await proxy.api("GET", "/api/users/dana/status", token=bad)
        assert code == 401, reason
        challenge = headers.getRawHeaders("www-authenticate")[0]
        assert f'resource_metadata="{PUBLIC}/.well-known/oauth-protected-resource"' in challenge
        assert 'error="invalid_token"' in challenge


@pytest_twisted.ensureDeferred
async def test_basic_and_the_resource_metadata(proxy):
    await proxy.service.store.set_password("erin", hash_password("correct horse"))
    good = base64.b64encode(b"erin:correct horse").decode()
    wrong = base64.b64encode(b"erin:wrong horse").decode()
    for credential, expected in ((good, 404), (wrong, 401)):
        response = await treq.get(
            proxy.base_url + "/api/users/erin/status",
            headers={"Authorization": f"Basic {credential}"},
            persistent=False,
        )
        await response.content()
        assert response.code == expected
    response = await treq.get(proxy.base_url + "/.well-known/oauth-protected-resource", persistent=False)
    metadata = await response.json()
    assert response.code == 200
    assert metadata["resource"] == PUBLIC and metadata["authorization_servers"] == ["https://idp.example.test"]
    assert "header" in metadata["bearer_methods_supported"]
    response = await treq.get(proxy.base_url + "/sse", persistent=False)
    await response.content()
    challenges = " ".join(response.headers.getRawHeaders("www-authenticate"))
    assert response.code == 401 and "resource_metadata=" in challenges and "Basic" in challenges
