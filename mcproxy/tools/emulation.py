"""Emulation tools: emulate (network, CPU, geolocation, user agent, media, viewport, headers)
and resize_page.

``emulate`` replaces the page's whole emulation at every call, as chrome-devtools-mcp does:
whatever a call leaves out is reset, except ``extraHttpHeaders``, which stay until a call
clears them with an empty string. The settings live in ``page.state.emulation``
(`mcproxy.browser.emulation`, which restores them after a reconnect).
"""

import json
import re

import attrs
from twisted.internet.defer import CancelledError, gatherResults

from mcproxy.browser.emulation import (
    MEDIA_FEATURES,
    NETWORK_PRESETS,
    Emulation,
    Viewport,
    apply_emulation,
    emulation_of,
    set_emulation,
    viewport_calls,
)
from mcproxy.errors import CDPError, ToolError
from mcproxy.tools import schema as s
from mcproxy.tools.call import Response, ToolCall
from mcproxy.tools.declare import ToolSet

_VIEWPORT = re.compile(r"^\s*(\d+)\s*x\s*(\d+)(?:\s*x\s*(\d+(?:\.\d+)?|\.\d+))?((?:\s*,\s*[a-z]+)*)\s*$", re.I)
_VIEWPORT_FLAGS = ("mobile", "touch", "landscape")
_VIEWPORT_HELP = (
    "Use '<width>x<height>x<devicePixelRatio>[,mobile][,touch][,landscape]', "
    "for example '390x844x3,mobile,touch' or '1280x720x1'."
)


def parse_viewport(text: str) -> Viewport:
    """The `Viewport` a ``viewport`` argument describes; ToolError explaining the format."""
    match = _VIEWPORT.match(text)
    if not match:
        raise ToolError(f"Invalid viewport {text!r}. {_VIEWPORT_HELP}")
    width, height, scale, rest = match.groups()
    flags = [flag.strip().lower() for flag in rest.split(",")[1:]]
    unknown = [flag for flag in flags if flag not in _VIEWPORT_FLAGS]
    if unknown:
        raise ToolError(f"Invalid viewport {text!r}: unknown option {unknown[0]!r}. {_VIEWPORT_HELP}")
    ratio = float(scale) if scale else 1.0
    if int(width) == 0 or int(height) == 0 or ratio <= 0:
        raise ToolError(f"Invalid viewport {text!r}: width, height and pixel ratio must be above 0. {_VIEWPORT_HELP}")
    return Viewport(
        int(width),
        int(height),
        int(ratio) if ratio.is_integer() else ratio,
        mobile="mobile" in flags,
        touch="touch" in flags,
        landscape="landscape" in flags,
    )


def parse_geolocation(text: str) -> tuple[float, float]:
    """``(latitude, longitude)`` from ``"<latitude>,<longitude>"``; ToolError when out of range."""
    parts = text.split(",")
    try:
        latitude, longitude = (float(part) for part in parts)
    except ValueError:
        raise ToolError(
            f"Invalid geolocation {text!r}: use '<latitude>,<longitude>' in degrees, e.g. '48.8584,2.2945'."
        ) from None
    if not -90 <= latitude <= 90 or not -180 <= longitude <= 180:
        raise ToolError(
            f"Invalid geolocation {text!r}: latitude must be between -90 and 90, longitude between -180 and 180."
        )
    return latitude, longitude


def parse_headers(text: str) -> dict[str, str]:
    """The header map of ``extraHttpHeaders`` (a JSON object of strings; "" clears)."""
    if not text.strip():
        return {}
    try:
        headers = json.loads(text)
    except ValueError:
        headers = None
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        raise ToolError(
            "Invalid extraHttpHeaders: pass a JSON object of header names to string values, "
            'e.g. {"X-Custom": "value"}, or "" to clear them.'
        )
    if len(headers) > s.MAX_ITEMS:
        raise ToolError(f"Invalid extraHttpHeaders: {len(headers)} headers, more than the {s.MAX_ITEMS} allowed.")
    return headers


def _from_args(args: dict, previous: Emulation) -> Emulation:
    """The emulation a call asks for: absent settings reset, headers kept unless given."""
    viewport = args.get("viewport")
    geolocation = args.get("geolocation")
    headers = args.get("extraHttpHeaders")
    return Emulation(
        network=args.get("networkConditions"),
        cpu_rate=args.get("cpuThrottlingRate", 1),
        geolocation=parse_geolocation(geolocation) if geolocation else None,
        user_agent=args.get("userAgent") or None,
        media={feature: args[name] for name, feature in MEDIA_FEATURES.items() if args.get(name) not in (None, "auto")},
        viewport=parse_viewport(viewport) if viewport else None,
        headers=previous.headers if headers is None else parse_headers(headers),
    )


def _describe(emulation: Emulation, navigation_timeout: float) -> list[str]:
    lines = ["Emulation configured successfully"]
    if emulation.network:
        lines.append(f"Emulating network conditions: {emulation.network}")
    if emulation.cpu_rate > 1:
        lines.append(f"Emulating CPU throttling: {emulation.cpu_rate:g}x slowdown")
    if emulation.network or emulation.cpu_rate > 1:
        lines.append(f"Default navigation timeout set to {navigation_timeout * emulation.timeout_factor * 1000:.0f} ms")
    if emulation.viewport:
        lines.append(f"Emulating viewport: {emulation.viewport.describe()}")
    if emulation.user_agent:
        lines.append(f"Emulating user agent: {emulation.user_agent}")
    if emulation.geolocation:
        lines.append("Emulating geolocation: latitude {:g}, longitude {:g}".format(*emulation.geolocation))
    for name, feature in MEDIA_FEATURES.items():
        if feature in emulation.media:
            label = "color scheme" if name == "colorScheme" else feature
            lines.append(f"Emulating {label}: {emulation.media[feature]}")
    if emulation.headers:
        lines.append("Extra HTTP headers sent with every request: " + ", ".join(sorted(emulation.headers)))
    return lines


def _pixels(description: str) -> dict:
    """A width or height parameter: a positive integer."""
    return {"type": "integer", "exclusiveMinimum": 0, "maximum": s.MAX_SAFE_INTEGER, "description": description}


def _choice(description: str, choices: tuple[str, ...]) -> dict:
    """A parameter that takes one of ``choices``."""
    return s.string(description, enum=choices)


tools = ToolSet("emulation")


@tools.page_tool(
    "emulate",
    title="Emulate",
    description=(
        "Emulate conditions on a page: network throttling, CPU slowdown, geolocation, user agent, "
        "color scheme and other media features, a device viewport, extra HTTP headers. Every call "
        "replaces the page's previous emulation (anything not given is reset; extraHttpHeaders stay "
        "until cleared), so pass everything you want in one call."
    ),
    params={
        "networkConditions": _choice(
            "Network throttling preset. Leave out to stop throttling.", tuple(NETWORK_PRESETS)
        ),
        "cpuThrottlingRate": s.number(
            "CPU slowdown factor (1 to 20). Leave out or use 1 for no slowdown.", minimum=1, maximum=20
        ),
        "geolocation": s.string(
            "Position to report, as '<latitude>,<longitude>' (latitude -90..90, longitude "
            "-180..180). Leave out to stop overriding the position."
        ),
        "userAgent": s.string("User agent string to send. Leave out or pass an empty string to reset it."),
        "colorScheme": _choice(
            'Dark or light mode (prefers-color-scheme). Leave out or use "auto" for the default.',
            ("dark", "light", "auto"),
        ),
        "forcedColors": _choice(
            'The forced-colors media feature. Leave out or use "auto" for the default.',
            ("active", "none", "auto"),
        ),
        "prefersContrast": _choice(
            'The prefers-contrast media feature. Leave out or use "auto" for the default.',
            ("more", "less", "custom", "no-preference", "auto"),
        ),
        "prefersReducedMotion": _choice(
            'The prefers-reduced-motion media feature. Leave out or use "auto" for the default.',
            ("reduce", "no-preference", "auto"),
        ),
        "viewport": s.string(
            "Device viewport as '<width>x<height>x<devicePixelRatio>[,mobile][,touch][,landscape]': "
            "'mobile' and 'touch' emulate a phone, 'landscape' turns it sideways. Leave out to "
            "remove the viewport override."
        ),
        "extraHttpHeaders": s.string(
            "Headers added to every request of the page, as a JSON object string such as "
            '{"X-Custom": "value"}. They stay across navigations and later emulate calls until '
            "an empty string clears them."
        ),
    },
    # Header values are often credentials (Cookie, API keys).
    secret=("extraHttpHeaders",),
)
async def emulate(call: ToolCall) -> Response:
    """Replace the page's emulation with the one the call describes."""
    page = call.page
    emulation = _from_args(call.args, emulation_of(page))
    try:
        await apply_emulation(page, emulation)
    except CancelledError:
        raise
    except CDPError as e:
        raise ToolError(f"Chrome refused the emulation: {e.message}") from None
    finally:
        # What Chrome got is what the page has now: keep it in step even after a failure.
        set_emulation(page, emulation)
    return Response().add("\n".join(_describe(emulation, call.config.navigation_timeout)))


_INNER_SIZE = "[window.innerWidth, window.innerHeight]"


async def _inner_size(page) -> tuple[int, int]:
    reply = await page.send("Runtime.evaluate", {"expression": _INNER_SIZE, "returnByValue": True})
    width, height = reply["result"]["value"]
    return width, height


async def _resize_window(call: ToolCall, width: int, height: int) -> bool:
    """Resize the tab's window so its contents are ``width`` x ``height``; False if Chrome can't."""
    page = call.page
    try:
        window = await call.browser.send("Browser.getWindowForTarget", {"targetId": page.target_id})
        window_id = window["windowId"]
        if window.get("bounds", {}).get("windowState", "normal") != "normal":
            normal = {"windowId": window_id, "bounds": {"windowState": "normal"}}
            await call.browser.send("Browser.setWindowBounds", normal)
        try:
            size = {"windowId": window_id, "width": width, "height": height}
            await call.browser.send("Browser.setContentsSize", size)
        except CDPError:
            # Older Chrome: size the window by its frame, measured from the page.
            inner = await _inner_size(page)
            bounds = (await call.browser.send("Browser.getWindowBounds", {"windowId": window_id}))["bounds"]
            outer = {"width": width + bounds["width"] - inner[0], "height": height + bounds["height"] - inner[1]}
            await call.browser.send("Browser.setWindowBounds", {"windowId": window_id, "bounds": outer})
    except CDPError:
        return False
    return await _inner_size(page) == (width, height)


@tools.page_tool(
    "resize_page",
    title="Resize page",
    description="Resize a page's window so that the page itself (its viewport) has the given size.",
    params={
        "width": _pixels("Viewport width in CSS pixels."),
        "height": _pixels("Viewport height in CSS pixels."),
    },
    required=("width", "height"),
)
async def resize_page(call: ToolCall) -> Response:
    """Make the page's viewport the given size: by its window, else by a metrics override.

    While emulate's viewport is in force the window size does not reach the page, so that
    emulated viewport is resized instead.
    """
    page = call.page
    width, height = int(call.args["width"]), int(call.args["height"])
    if width <= 0 or height <= 0:
        raise ToolError("width and height must be positive numbers of CSS pixels.")
    response = Response()
    emulation = emulation_of(page)
    if emulation.viewport is None and await _resize_window(call, width, height):
        response.add(f"The page is now {width}x{height} pixels.")
    else:
        viewport = attrs.evolve(emulation.viewport or Viewport(width, height), width=width, height=height)
        await gatherResults([page.send(method, params) for method, params in viewport_calls(viewport)])
        set_emulation(page, attrs.evolve(emulation, viewport=viewport))
        if emulation.viewport is not None:
            response.add(f"The emulated viewport is now {width}x{height} pixels ({viewport.describe()}).")
        else:
            response.add(
                f"Chrome could not resize this page's window, so its viewport is emulated at {width}x{height} "
                "pixels instead; emulate without a viewport removes that."
            )
    return await response.add_pages(call)
