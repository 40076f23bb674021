"""Putting files into a page: through the file chooser an element opens, and checking that
the browser can read what was chosen (paths are on the browser's machine, never read here)."""

from mcproxy.browser.page import EventTimeout
from mcproxy.errors import CDPError, ToolError
from mcproxy.tools.dispatch import click_events, element_centers, send_all
from mcproxy.tools.input_scripts import UNREADABLE_FILES
from mcproxy.tools.snapshot import resolve_element, stale_error

#: Seconds a click has to open a file chooser.
CHOOSER_WAIT = 3.0


async def through_chooser(page, uid: str, paths: list[str]) -> int:
    """Click the element, catch the file chooser it opens, answer it; the file input's backend id."""
    [(x, y)] = await element_centers(page, uid)
    chooser = page.wait_for_event("Page.fileChooserOpened", timeout=CHOOSER_WAIT)
    try:
        await page.send("Page.setInterceptFileChooserDialog", {"enabled": True})
        await send_all(page, click_events(x, y))
        try:
            opened = await chooser
        except EventTimeout:
            raise ToolError(
                f'Failed to upload: element uid "{uid}" is not a file input, and clicking it did not open a '
                f"file chooser within {CHOOSER_WAIT:g} s. Use the uid of the file input or of the button that opens it."
            ) from None
        if opened.get("mode") == "selectSingle" and len(paths) > 1:
            raise ToolError(f'The file chooser opened by uid "{uid}" takes a single file; pass one path in filePaths.')
        try:
            await page.send("DOM.setFileInputFiles", {"files": paths, "backendNodeId": opened["backendNodeId"]})
        except CDPError as e:
            raise await upload_error(page, uid, paths, e) from None
        return opened["backendNodeId"]
    finally:
        chooser.cancel()
        chooser.addErrback(lambda _: None)
        page.send("Page.setInterceptFileChooserDialog", {"enabled": False}).addErrback(lambda _: None)


async def require_readable(page, uid: str, backend: int, paths: list[str]) -> None:
    """ToolError when the input left the page, or (the input emptied again) when the browser
    cannot read a chosen file."""
    node = await page.send("DOM.resolveNode", {"backendNodeId": backend, "objectGroup": "mcproxy-upload"})
    try:
        result = await page.send(
            "Runtime.callFunctionOn",
            {
                "objectId": node["object"]["objectId"],
                "functionDeclaration": UNREADABLE_FILES,
                "awaitPromise": True,
                "returnByValue": True,
            },
        )
    finally:
        page.send("Runtime.releaseObjectGroup", {"objectGroup": "mcproxy-upload"}).addErrback(lambda _: None)
    unreadable = result["result"].get("value")
    if unreadable is None:
        raise stale_error(page, uid)
    bad = [paths[index] for index in unreadable if index < len(paths)]
    if bad:
        raise ToolError(
            f"The browser cannot read {', '.join(bad)}: no such readable file on the machine the browser runs on "
            "(paths are on the browser's machine, not on this server). Nothing was uploaded."
        )


async def upload_error(page, uid: str, paths: list[str], error: CDPError) -> ToolError:
    """Why Chrome refused the files: the element is gone (stale uid), or the paths."""
    await resolve_element(page, uid)
    return ToolError(
        f"Chrome refused the files {', '.join(paths)} ({error}). The paths must name readable files on the "
        "machine the browser runs on (not on this server)."
    )
