"""Browsers that dial out: ``mcproxy-connect`` next to Chrome opens a WebSocket to the proxy's
``/tunnel`` and relays CDP over it, so the user's Chrome needs no port the proxy can reach.

`mcproxy.tunnel.wire` is the protocol both sides speak; the proxy's side is the endpoint
(`mcproxy.tunnel.endpoint`) and the registry of live tunnels with the `LinkOpener` of
``tunnel:`` browsers (`mcproxy.tunnel.registry`); the client is `mcproxy.tunnel.client`.
"""
