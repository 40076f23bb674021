"""Target: ``list_network_requests`` over 1,000 collected requests costs the daemon <= 10 ms.

1,000 requests is the collector's per-page cap (`mcproxy.browser.collect.Collector`), so the
figure is the worst case. The requests are fed to the real collector as Chrome's events
(``Network.requestWillBeSent``, then ``responseReceived`` and ``loadingFinished`` or
``loadingFailed``) on the stand-in page of `bench.console`, and the call is timed the same
way, up to the bytes on the wire. Such an answer (about 0.2 MiB) is not heavy enough for
the MCP layer to encode in a thread, so its encoding is reactor time too. 10 ms is two GIL
switch intervals (5 ms, the longest a thread's work holds the reactor at once): the worst
listing a page allows then stalls other users no more than a heavy answer encoded in a
thread does.
The baseline is the same run's time to build the 1,000 listing lines with one ``str.join``.
"""

import time

from bench.console import ROUNDS, Timings, collecting, median_ms, verdicts
from bench.report import Verdict, say

REQUESTS = 1_000
TARGET_MS = 10.0
_TYPES = ("Document", "Script", "Stylesheet", "Image", "XHR", "Fetch", "Font")


def _fire(page, index: int) -> None:
    request_id = f"1000.{index}"
    page.fire(
        "Network.requestWillBeSent",
        {
            "requestId": request_id,
            "loaderId": "L1",
            "frameId": "F1",
            "type": _TYPES[index % len(_TYPES)],
            "request": {
                "method": "POST" if index % 5 == 0 else "GET",
                "url": f"http://127.0.0.1:8080/api/items/{index}?fields=id,name,price&page={index // 50}",
                "headers": {"Accept": "application/json", "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/126"},
            },
        },
    )
    if index % 20 == 19:
        page.fire("Network.loadingFailed", {"requestId": request_id, "errorText": "net::ERR_CONNECTION_REFUSED"})
        return
    page.fire(
        "Network.responseReceived",
        {
            "requestId": request_id,
            "response": {
                "status": 200 if index % 10 else 404,
                "statusText": "OK",
                "mimeType": "application/json",
                "headers": {"Content-Type": "application/json", "Cache-Control": "no-store"},
            },
        },
    )
    page.fire("Network.loadingFinished", {"requestId": request_id})


async def run(options) -> list[Verdict]:
    """Collect 1,000 requests, time list_network_requests over them (median of 20)."""
    from mcproxy.tools import network

    say(f"== network: list_network_requests over {REQUESTS} collected requests (median of {ROUNDS}) ==")
    page, call = collecting(network.tools)
    started = time.perf_counter()
    for index in range(REQUESTS):
        _fire(page, index)
    collect_ms = (time.perf_counter() - started) * 1000
    journal = page.state.records.network
    say(f"  collected {len(journal)} requests in {collect_ms:.1f} ms; accounted size {journal.cost / 2**20:.2f} MiB")
    timings = Timings.of(lambda: call("list_network_requests", {}, f"Showing 1-{REQUESTS} of {REQUESTS}"))
    rows = [(r.id, r.method, r.url, r.status_label) for r in journal.entries()]
    baseline = median_ms(lambda: "\n".join([f"reqid={i} {method} {url} [{status}]" for i, method, url, status in rows]))
    timings.show()
    return verdicts("network list_network_requests over 1,000 requests", timings, baseline, REQUESTS, TARGET_MS)
