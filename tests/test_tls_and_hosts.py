"""TLS listeners with HSTS, and the Host check that stops DNS rebinding."""

import pytest
import pytest_twisted
from twisted.internet.defer import CancelledError
from twisted.web.client import ResponseFailed
from twisted.web.test.requesthelper import DummyRequest

from mcproxy.errors import Forbidden
from mcproxy.testing.daemon import start_proxy
from mcproxy.testing.tls import self_signed
from mcproxy.web.origins import check_host


@pytest_twisted.ensureDeferred
async def test_an_ssl_listener_serves_https_with_hsts(reactor, tmp_path):
    import treq
    from twisted.internet.ssl import Certificate
    from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool

    key_path, cert_path, cert_pem = self_signed(tmp_path)
    listen = f"ssl:0:interface=127.0.0.1:privateKey={key_path}:certKey={cert_path}"
    proxy = await start_proxy(reactor, tmp_path / "var", server={"listen": [listen]})
    try:
        port = proxy.service.ports[0].getHost().port
        policy = BrowserLikePolicyForHTTPS(trustRoot=Certificate.loadPEM(cert_pem))
        client = treq.client.HTTPClient(
            Agent(reactor, contextFactory=policy, pool=HTTPConnectionPool(reactor, persistent=False))
        )
        response = await client.get(f"https://127.0.0.1:{port}/health")
        body = await response.json()
        assert response.code == 200 and body["status"] == "ok"
        assert response.headers.getRawHeaders("strict-transport-security") == ["max-age=31536000"]
        # Plain HTTP on the TLS port gets nowhere.
        with pytest.raises((ResponseFailed, CancelledError)):  # refused, or no answer within the timeout
            await treq.get(f"http://127.0.0.1:{port}/health", persistent=False, timeout=5)
    finally:
        await proxy.stop()


@pytest_twisted.ensureDeferred
async def test_plain_http_has_no_hsts(reactor, tmp_path):
    import treq

    proxy = await start_proxy(reactor, tmp_path)
    try:
        response = await treq.get(proxy.base_url + "/health", persistent=False)
        await response.content()
        assert response.code == 200 and not response.headers.hasHeader("strict-transport-security")
    finally:
        await proxy.stop()


def _with_host(host: bytes | None) -> DummyRequest:
    request = DummyRequest([b""])
    if host is not None:
        request.requestHeaders.setRawHeaders(b"host", [host])
    return request


@pytest.mark.parametrize(
    "host, allowed, loopback, ok",
    [
        (b"127.0.0.1:3000", (), True, True),
        (b"localhost:3000", (), True, True),
        (b"[::1]:3000", (), True, True),
        (b"evil.example:3000", (), True, False),  # a rebound name on a loopback server
        (b"proxy.corp.example", ("proxy.corp.example",), False, True),
        (b"evil.example", ("proxy.corp.example",), False, False),
        (b"anything.example", (), False, True),  # public listener, nothing configured
        (None, (), True, False),
        (b"[not an address", (), True, False),
    ],
)
def test_host_check(host, allowed, loopback, ok):
    request = _with_host(host)
    if ok:
        check_host(request, allowed, loopback)
    else:
        with pytest.raises(Forbidden) as caught:
            check_host(request, allowed, loopback)
        assert caught.value.code == "host_not_allowed"


@pytest_twisted.ensureDeferred
async def test_mcp_endpoints_refuse_a_foreign_host(reactor, tmp_path):
    import treq

    proxy = await start_proxy(reactor, tmp_path)
    try:
        token = await proxy.token_for("alice")
        response = await treq.get(
            proxy.base_url + "/sse",
            headers={"Host": "rebound.example", "Authorization": f"Bearer {token}"},
            persistent=False,
        )
        body = await response.json()
        assert response.code == 403 and body["error"]["code"] == "host_not_allowed"
    finally:
        await proxy.stop()
