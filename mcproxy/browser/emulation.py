"""A page's emulation (network, CPU, geolocation, user agent, media, viewport, headers):
what is in force, sending it to the page, and restoring it after a reconnect.

The settings live in ``page.state.emulation`` so that `emulation_listener` can restore
them on a new DevTools session (Chrome drops a session's overrides with the session), and
so that tools can stretch their waits with `timeout_factor` while the page is throttled.
The emulate and resize_page tools set them (`set_emulation`), which also keeps them in
the browser's page book: a process that takes the browser over restores them from there.
"""

import json

import attrs
from twisted.internet.defer import Deferred, FirstError, gatherResults
from twisted.logger import Logger

log = Logger()

_KBPS = 1000 / 8  # bytes per second in one kilobit per second

# name -> (latency ms, download B/s, upload B/s, timeout factor); the figures of
# Puppeteer's PredefinedNetworkConditions (as chrome-devtools-mcp uses) and its factors.
NETWORK_PRESETS: dict[str, tuple[float, float, float, float]] = {
    "Offline": (0, 0, 0, 1),
    "Slow 3G": (400 * 5, 500 * _KBPS * 0.8, 500 * _KBPS * 0.8, 10),
    "Fast 3G": (150 * 3.75, 1600 * _KBPS * 0.9, 750 * _KBPS * 0.9, 5),
    "Slow 4G": (150 * 3.75, 1600 * _KBPS * 0.9, 750 * _KBPS * 0.9, 2.5),
    "Fast 4G": (60 * 2.75, 9000 * _KBPS * 0.9, 1500 * _KBPS * 0.9, 1),
}
# emulate parameter -> CSS media feature; "auto" (or absent) resets it.
MEDIA_FEATURES = {
    "colorScheme": "prefers-color-scheme",
    "prefersReducedMotion": "prefers-reduced-motion",
    "prefersContrast": "prefers-contrast",
    "forcedColors": "forced-colors",
}


@attrs.frozen
class Viewport:
    """An emulated device viewport, parsed from the ``viewport`` string."""

    width: int
    height: int
    device_scale_factor: float = 1
    mobile: bool = False
    touch: bool = False
    landscape: bool = False

    def describe(self) -> str:
        """JSON in the key order chrome-devtools-mcp reports it."""
        return json.dumps(
            {
                "deviceScaleFactor": self.device_scale_factor,
                "isMobile": self.mobile,
                "hasTouch": self.touch,
                "isLandscape": self.landscape,
                "width": self.width,
                "height": self.height,
            },
            separators=(",", ":"),
        )


@attrs.define
class Emulation:
    """What is emulated on one page now (the defaults mean: nothing)."""

    network: str | None = None
    cpu_rate: float = 1
    geolocation: tuple[float, float] | None = None
    user_agent: str | None = None
    media: dict[str, str] = attrs.field(factory=dict)
    viewport: Viewport | None = None
    headers: dict[str, str] = attrs.field(factory=dict)

    @property
    def timeout_factor(self) -> float:
        """How much longer to wait while this is in force: the larger of the CPU slowdown
        and the network preset's factor (Slow 3G: 10)."""
        network = NETWORK_PRESETS[self.network][3] if self.network else 1
        return max(float(self.cpu_rate), float(network))


def emulation_of(page) -> Emulation:
    """The page's current emulation (nothing emulated when never set)."""
    return page.state.emulation or Emulation()


def set_emulation(page, emulation: Emulation) -> None:
    """Make ``emulation`` the page's, in its state and in its browser's page book."""
    page.state.emulation = emulation
    page.browser.remember(page)


def timeout_factor(page) -> float:
    """How much longer to wait on ``page`` while it is throttled (1 when it is not)."""
    return emulation_of(page).timeout_factor


def viewport_calls(viewport: Viewport | None) -> list[tuple[str, dict | None]]:
    if viewport is None:
        return [
            ("Emulation.clearDeviceMetricsOverride", None),
            ("Emulation.setTouchEmulationEnabled", {"enabled": False}),
        ]
    orientation = (
        {"type": "landscapePrimary", "angle": 90} if viewport.landscape else {"type": "portraitPrimary", "angle": 0}
    )
    return [
        (
            "Emulation.setDeviceMetricsOverride",
            {
                "width": viewport.width,
                "height": viewport.height,
                "deviceScaleFactor": viewport.device_scale_factor,
                "mobile": viewport.mobile,
                "screenOrientation": orientation,
            },
        ),
        ("Emulation.setTouchEmulationEnabled", {"enabled": viewport.touch, "maxTouchPoints": 5}),
    ]


def _network_params(network: str | None) -> dict:
    if network is None:
        return {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1}
    latency, download, upload, _ = NETWORK_PRESETS[network]
    return {
        "offline": network == "Offline",
        "latency": latency,
        "downloadThroughput": download,
        "uploadThroughput": upload,
    }


async def _origin(page) -> str | None:
    """The origin of the page's document, if it has a real one (not about:blank, data:...)."""
    reply = await page.send("Runtime.evaluate", {"expression": "location.origin", "returnByValue": True})
    origin = reply.get("result", {}).get("value")
    return origin if isinstance(origin, str) and origin.startswith(("http://", "https://")) else None


async def apply_emulation(page, emulation: Emulation) -> None:
    """Send every override (set or reset), so the page ends up exactly as ``emulation`` says."""
    calls: list[tuple[str, dict | None]] = [
        # Throttling and extra headers only act while the Network domain is enabled (the
        # console/network collector enables it too; enabling twice is harmless).
        ("Network.enable", None),
        ("Network.emulateNetworkConditions", _network_params(emulation.network)),
        ("Emulation.setCPUThrottlingRate", {"rate": emulation.cpu_rate}),
        ("Emulation.setUserAgentOverride", {"userAgent": emulation.user_agent or ""}),
        (
            "Emulation.setEmulatedMedia",
            {"features": [{"name": f, "value": emulation.media.get(f, "")} for f in MEDIA_FEATURES.values()]},
        ),
        ("Network.setExtraHTTPHeaders", {"headers": emulation.headers}),
        *viewport_calls(emulation.viewport),
    ]
    if emulation.geolocation is None:
        calls.append(("Emulation.clearGeolocationOverride", None))
    else:
        latitude, longitude = emulation.geolocation
        position = {"latitude": latitude, "longitude": longitude, "accuracy": 1}
        calls.append(("Emulation.setGeolocationOverride", position))
        origin = await _origin(page)
        if origin is not None:
            permission = {"permission": {"name": "geolocation"}, "setting": "granted", "origin": origin}
            if page.browser_context_id:
                permission["browserContextId"] = page.browser_context_id
            await page.browser.send("Browser.setPermission", permission)
    try:
        await gatherResults([page.send(method, params) for method, params in calls], consumeErrors=True)
    except FirstError as e:
        e.subFailure.raiseException()


def reapply_emulation(page) -> None:
    """Page listener: restore a page's emulation on its new session after a reconnect."""
    if page.closed or page.state.emulation is None:
        return
    Deferred.fromCoroutine(apply_emulation(page, page.state.emulation)).addErrback(
        lambda failure: log.info(
            "Could not restore the emulation of page {page_id}: {error}",
            page_id=page.page_id,
            error=failure.getErrorMessage(),
        )
    )


def emulation_listener(page, event: str) -> None:
    """For ``BrowserPool(page_listeners=[...])``: re-apply emulation on a new session, of a
    page seen before ("reattached") or of one whose emulation the page book restored."""
    if event in ("attached", "reattached"):
        reapply_emulation(page)
