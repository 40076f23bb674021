"""Which JavaScript dialog (alert, confirm, prompt, beforeunload) blocks a page, tracked per page.

`track_dialogs` is a pool page listener: it sees each page from the moment the proxy
attaches, and keeps what it learns in ``page.state.dialog`` (a `DialogState`). Chrome sends
``Page.javascriptDialogOpening`` only to sessions that were attached when the dialog opened;
a session attached later (a dialog already open when the proxy connected, or after a
reconnect) gets no event, cannot answer the dialog ("No dialog is showing") and finds the
page silent. So each fresh session also sends a probe: when the page does not answer it
within `PROBE_WINDOW`, the page counts as blocked by a dialog the proxy cannot see, until
the probe is answered or Chrome reports the dialog closed (navigating or reloading the page
closes it). The tools word it (`mcproxy.tools.dialogs`).
"""

import attrs
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from mcproxy.errors import CDPError

#: How long a freshly attached page may take to answer before it counts as blocked.
PROBE_WINDOW = 1.0
#: The probe stays pending this long at most (a dialog can stay open for hours).
PROBE_LIMIT = 24 * 3600.0


@attrs.define
class DialogState:
    """A page's dialog: the ``Page.javascriptDialogOpening`` parameters of the open one,
    or ``blind`` when the page went silent before the proxy could see a dialog open."""

    open: dict | None = None
    blind: bool = False
    probe: Deferred | None = None


def track_dialogs(page, event: str) -> None:
    """Page listener (``BrowserPool(page_listeners=[track_dialogs])``): follow the page's dialogs."""
    state = page.state.dialog
    if event == "closed":
        _stop_probe(state)
        return
    if event == "attached":
        page.subscribe("Page.javascriptDialogOpening", lambda _, params: _opened(state, params))
        page.subscribe("Page.javascriptDialogClosed", lambda _, params: _closed(state))
    # A new session cannot answer a dialog it did not see open: find out whether one is.
    state.open = None
    state.blind = False
    _probe(page, state)


def _opened(state: DialogState, params: dict) -> None:
    state.open = params
    state.blind = False


def _closed(state: DialogState) -> None:
    state.open = None
    state.blind = False


def _stop_probe(state: DialogState) -> None:
    if state.probe is not None and not state.probe.called:
        state.probe.cancel()
    state.probe = None


def _probe(page, state: DialogState) -> None:
    """Ask the page for a trivial evaluation; no answer within `PROBE_WINDOW` means blocked."""
    _stop_probe(state)
    probe = state.probe = page.send("Runtime.evaluate", {"expression": "0"}, timeout=PROBE_LIMIT)

    def suspect() -> None:
        if state.probe is probe and state.open is None:
            state.blind = True

    timer = page.browser.clock.callLater(PROBE_WINDOW, suspect)

    def answered(result):
        if timer.active():
            timer.cancel()
        if state.probe is probe:
            state.probe = None
            # Any answer, even an error about a replaced document, means the page is responsive.
            if not isinstance(result, Failure) or result.check(CDPError):
                state.blind = False
        return

    probe.addBoth(answered)
