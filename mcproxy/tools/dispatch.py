"""Input events to Chrome: CDP calls sent back to back or in answered batches, and the mouse
events that reach an element's centre."""

from collections.abc import Iterable, Iterator
from itertools import islice

from twisted.internet.defer import FirstError, gatherResults

from mcproxy.errors import CDPError, ToolError
from mcproxy.tools.snapshot import element_error, resolve_uid

#: CDP input events sent before waiting for Chrome's answers.
KEY_BATCH = 200


async def send_all(page, calls: list[tuple[str, dict]]) -> list[dict]:
    """Send CDP calls back to back (Chrome runs a session's calls in order), await them all."""
    try:
        return await gatherResults([page.send(method, params) for method, params in calls], consumeErrors=True)
    except FirstError as e:
        e.subFailure.raiseException()


async def send_batched(page, calls: Iterable[tuple[str, dict]], size: int = KEY_BATCH) -> None:
    """Send any number of CDP calls in order, ``size`` at a time: each batch is built and
    answered before the next, so one call never holds the reactor or the connection for long."""
    pending: Iterator[tuple[str, dict]] = iter(calls)
    while batch := list(islice(pending, size)):
        await send_all(page, batch)


async def element_centers(page, *uids: str) -> list[tuple[float, float]]:
    """Scroll each element into view (in order); the centre of each one's first visible box,
    in viewport pixels, measured after all the scrolling."""
    backends = [resolve_uid(page, uid) for uid in uids]
    calls = [("DOM.scrollIntoViewIfNeeded", {"backendNodeId": backend}) for backend in backends]
    calls += [("DOM.getContentQuads", {"backendNodeId": backend}) for backend in backends]
    try:
        replies = await gatherResults([page.send(method, params) for method, params in calls], consumeErrors=True)
    except FirstError as e:
        error = e.subFailure.value
        if not isinstance(error, CDPError):
            e.subFailure.raiseException()
        raise element_error(page, uids[e.index % len(uids)], error) from None
    return [_center(page, uid, reply) for uid, reply in zip(uids, replies[len(uids) :], strict=True)]


def _center(page, uid: str, quads: dict) -> tuple[float, float]:
    for quad in quads.get("quads", []):
        xs, ys = quad[0::2], quad[1::2]
        if max(xs) - min(xs) >= 1 and max(ys) - min(ys) >= 1:
            return sum(xs) / 4, sum(ys) / 4
    raise ToolError(f'Element uid "{uid}" has no visible box on page {page.page_id}, so the mouse cannot reach it.')


def mouse_event(kind: str, x: float, y: float, **extra) -> tuple[str, dict]:
    """One ``Input.dispatchMouseEvent`` call at viewport pixel ``(x, y)``."""
    return "Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, **extra}


def click_events(x: float, y: float, clicks: int = 1) -> list[tuple[str, dict]]:
    """Move there, then press and release the left button ``clicks`` times."""
    events = [mouse_event("mouseMoved", x, y)]
    for count in range(1, clicks + 1):
        for kind in ("mousePressed", "mouseReleased"):
            events.append(mouse_event(kind, x, y, button="left", clickCount=count))
    return events
