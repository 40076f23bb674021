"""``mcproxy-connect`` to an ``https://`` proxy: the tunnel is ``wss://``, and the proxy's
certificate is checked (against the system's CAs, or the one given with ``--ca-file``). A real
proxy with a TLS listener and a self-signed certificate, real Chromium, real ``mcproxy-connect``."""

import pytest_twisted

from mcproxy.testing.daemon import start_proxy
from mcproxy.testing.tls import self_signed
from mcproxy.testing.tunnel import wait_status


@pytest_twisted.ensureDeferred
async def test_a_tunnel_to_an_https_proxy_is_wss_and_checks_its_certificate(reactor, tmp_path, connects, chromium):
    key_path, cert_path, _ = self_signed(tmp_path)
    tls = f"ssl:0:interface=127.0.0.1:privateKey={key_path}:certKey={cert_path}"
    # Plain HTTP first, for the test's own admin calls; the tunnels dial the TLS listener.
    proxy = await start_proxy(reactor, tmp_path / "var", server={"listen": ["tcp:0:interface=127.0.0.1", tls]})
    try:
        https = f"https://127.0.0.1:{proxy.service.ports[1].getHost().port}"
        token = await proxy.token_for("alice", "tools:*", "register")
        # A certificate no CA of this system vouches for: no tunnel, and the client says why.
        untrusted = connects(https, token, "--browser-url", chromium.browser_url)
        line = await untrusted.line_with("reconnecting in").addTimeout(30, reactor)
        assert "certificate" in line.lower(), untrusted.tail()
        assert untrusted.running
        await untrusted.close()
        # With the proxy's CA given, it connects.
        trusted = connects(https, token, "--browser-url", chromium.browser_url, "--ca-file", str(cert_path))
        await trusted.tunnel_up()
        await wait_status(reactor, proxy, "alice", "connected")
        # A --ca-file that holds no certificate is a usage error.
        (tmp_path / "not-a-cert.pem").write_text("hello\n")
        broken = connects(https, token, "--ca-file", str(tmp_path / "not-a-cert.pem"))
        assert await broken.exit_code() == 2
        assert "--ca-file holds no PEM certificate" in broken.tail()
    finally:
        await proxy.stop()
