"""screencast_start / screencast_stop: a recording of a page's screen, saved as an artifact.

Chrome pushes a frame (``Page.screencastFrame``) whenever the page's pixels change; each
is acknowledged at once (Chrome sends no more until it is) and written, with its time, to
a private temporary directory. On stop the frames become one file (`mcproxy.tools.encoding`):

- with Debian's ffmpeg (on PATH, or the binary the operator names): an H.264 MP4, or a
  VP9 WebM when the name ends in ``.webm``, encoded by ffmpeg as a child process that
  keeps the frames' real timing (concat demuxer, variable frame rate);
- without it: an animated PNG (APNG), which browsers play natively, assembled from
  PNG frames (Chrome is asked for PNG instead of JPEG then, so nothing is decoded).

A background tab paints no frames (Chrome draws only what is visible), so while recording
the tab runs with focus emulation (``Emulation.setFocusEmulationEnabled``): Chrome paints
it as if it were the visible, focused tab, without bringing it in front of the user. The
stop acknowledges frames until Chrome confirms it, then turns the emulation off again.

Bounds per recording: `MAX_FRAMES` frames, `MAX_SECONDS` seconds and `MAX_FRAME_BYTES`
bytes of frames on disk; past any of them the recording takes no more frames and the stop
says so. The saved file is bounded by ``artifacts.max_bytes``. A recording nobody stops is
dropped `ABANDON_AFTER` seconds after its time limit.
"""

import base64
import itertools
import os
import shutil
import tempfile
import weakref
from collections.abc import Callable

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.threads import deferToThread
from twisted.logger import Logger

from mcproxy.artifacts.names import split_path
from mcproxy.browser.page import Page
from mcproxy.errors import ToolError
from mcproxy.tools import schema as s
from mcproxy.tools.call import Response, ToolCall
from mcproxy.tools.declare import ToolSet, ToolSpec
from mcproxy.tools.encoding import find_ffmpeg, save_apng, save_video
from mcproxy.tools.scope import resolve_page

log = Logger()

MAX_FRAMES = 3000
MAX_SECONDS = 600.0
MAX_FRAME_BYTES = 512 * 1024 * 1024
ABANDON_AFTER = 3600.0
#: Frames are scaled by Chrome to fit this box (CSS pixels of a common laptop screen).
MAX_WIDTH, MAX_HEIGHT = 1280, 800
JPEG_QUALITY = 80
#: How long the last frame shows when the recording ended right after it.
LAST_FRAME_SECONDS = 0.1

#: Where the IHDR chunk's 13 bytes of body lie in a PNG file.
_IHDR_START, _IHDR_END = 16, 29

#: Recordings by browser, then page id: a page that closed keeps its recording for the stop.
_RECORDINGS: "weakref.WeakKeyDictionary[object, dict[int | str, _Recording]]" = weakref.WeakKeyDictionary()


@attrs.define(eq=False)
class _Recording:
    """One page's running recording: its frames on disk, with their times."""

    page: Page
    #: The MCP session that started it (None without sessions): the one that may stop it
    #: after its page closed, when tabs are scoped per session.
    owner: str | None
    file_path: str
    ffmpeg: str | None
    directory: str
    #: (file name, Chrome's timestamp, PNG IHDR body or b""): the browser's clock times the
    #: frames...
    frames: list[tuple[str, float, bytes]] = attrs.field(factory=list)
    #: ...and ours the last one, against our stop (the two clocks may disagree).
    last_received: float = 0.0
    frame_bytes: int = 0
    #: Why no more frames are taken (a bound was reached), or None.
    limit: str | None = None
    #: screencast_stop is under way: frames are still acknowledged, no longer kept.
    stopping: bool = False
    unsubscribe: Callable[[], None] | None = None
    timer: IDelayedCall | None = None


def _recordings(browser) -> dict[int | str, _Recording]:
    return _RECORDINGS.setdefault(browser, {})


# -- frames -------------------------------------------------------------------------------


def _on_frame(recording: _Recording, clock, params: dict) -> None:
    """Acknowledge a frame at once, then keep it unless a bound was reached."""
    page = recording.page
    page.send("Page.screencastFrameAck", {"sessionId": params.get("sessionId")}).addErrback(lambda _: None)
    if recording.limit is not None or recording.stopping:
        return
    data = base64.b64decode(params.get("data", ""))
    if len(recording.frames) >= MAX_FRAMES:
        _limit(recording, f"the limit of {MAX_FRAMES} frames")
        return
    if recording.frame_bytes + len(data) > MAX_FRAME_BYTES:
        _limit(recording, f"the limit of {MAX_FRAME_BYTES} bytes of frames")
        return
    name = f"frame-{len(recording.frames):05d}.{'jpg' if recording.ffmpeg else 'png'}"
    with open(os.path.join(recording.directory, name), "wb") as f:
        f.write(data)
    recording.last_received = clock.seconds()
    timestamp = params.get("metadata", {}).get("timestamp") or recording.last_received
    # A PNG starts with its IHDR chunk (the frame's size): kept, so the APNG is assembled
    # without opening every frame twice.
    header = b"" if recording.ffmpeg else data[_IHDR_START:_IHDR_END]
    recording.frames.append((name, float(timestamp), header))
    recording.frame_bytes += len(data)


def _limit(recording: _Recording, reason: str) -> None:
    """Take no more frames (Chrome is told to stop sending them)."""
    recording.limit = reason
    if not recording.page.closed:
        recording.page.send("Page.stopScreencast").addErrback(lambda _: None)
        _focus_emulation(recording.page, False).addErrback(lambda _: None)


def _focus_emulation(page, enabled: bool) -> Deferred:
    """Have Chrome paint the tab as the visible, focused one (or stop pretending)."""
    return page.send("Emulation.setFocusEmulationEnabled", {"enabled": enabled})


def _time_limit(recording: _Recording, clock) -> None:
    """The recording ran `MAX_SECONDS`: stop taking frames; drop it if still unclaimed later."""
    _limit(recording, f"the limit of {MAX_SECONDS:g} s")
    recording.timer = clock.callLater(ABANDON_AFTER, _abandon, recording)


def _abandon(recording: _Recording) -> None:
    page = recording.page
    _recordings(page.browser).pop(page.page_id, None)
    _discard(recording)


def _discard(recording: _Recording) -> None:
    if recording.timer is not None and recording.timer.active():
        recording.timer.cancel()
    if recording.unsubscribe is not None:
        recording.unsubscribe()
    # Up to thousands of frame files: removed in a thread, not in a reactor turn.
    deferToThread(shutil.rmtree, recording.directory, True).addErrback(
        lambda failure: log.failure("Could not remove screencast frames in {path}", failure, path=recording.directory)
    )


def _durations(recording: _Recording, ended: float) -> list[float]:
    """How long each frame shows: until the next one; the last one until the stop (unless
    frames stopped coming earlier: a limit, a closed page)."""
    times = [timestamp for _, timestamp, _ in recording.frames]
    durations = [max(0.001, later - earlier) for earlier, later in itertools.pairwise(times)]
    recording_until_stop = recording.limit is None and not recording.page.closed
    last = ended - recording.last_received if recording_until_stop else LAST_FRAME_SECONDS
    durations.append(min(max(LAST_FRAME_SECONDS, last), MAX_SECONDS))
    return durations


# -- the tools ------------------------------------------------------------------------------


def _output_name(file_path: str | None, ffmpeg: str | None, page_id: int, clock) -> tuple[str, str | None]:
    """The artifact name to save as, and a note when it differs from what was asked."""
    extension = ".mp4" if ffmpeg else ".png"
    if not file_path:
        return f"screencasts/page{page_id}-{int(clock.seconds())}{extension}", None
    split_path(file_path)
    stem, ext = os.path.splitext(file_path)
    wanted = (".mp4", ".webm") if ffmpeg else (".png", ".apng")
    if ext.lower() in wanted:
        return file_path, None
    if ffmpeg:
        return stem + extension, f"Saving as MP4 ({stem + extension}): ffmpeg here writes .mp4 or .webm."
    return stem + extension, (
        f"ffmpeg is not installed on the proxy, so the recording is an animated PNG ({stem + extension}), "
        "which browsers play."
    )


def screencast_tools(ffmpeg: str = "") -> tuple[ToolSpec, ...]:
    """The two screencast tools; ``ffmpeg`` is the operator's ``tools.ffmpeg`` ("" finds it on
    PATH when recording starts, "none" always makes animated PNGs)."""
    tools = ToolSet("debugging")

    @tools.page_tool(
        "screencast_start",
        title="Start screencast",
        description="Start recording a video of the page's screen; screencast_stop saves it as a file you can read.",
        params={
            "filePath": s.string(
                "Name for the recording among your artifacts (.mp4 or .webm; .png for an animated PNG "
                "where the server has no ffmpeg). A generated name when absent."
            ),
        },
    )
    async def start(call: ToolCall) -> Response:
        """Start receiving and storing frames of the page."""
        page = call.page
        if call.artifacts is None:
            raise ToolError("This server does not keep files, so it cannot record screencasts.")
        recordings = _recordings(call.browser)
        if page.page_id in recordings:
            raise ToolError(
                f"A screencast is already recording page {page.page_id}. Stop it with screencast_stop first."
            )
        binary = find_ffmpeg(ffmpeg)
        file_path, note = _output_name(call.args.get("filePath"), binary, page.page_id, call.clock)
        recording = _Recording(
            page=page,
            owner=call.context.session.session_id,
            file_path=file_path,
            ffmpeg=binary,
            directory=tempfile.mkdtemp(prefix="mcproxy-screencast-"),
        )
        recording.unsubscribe = page.subscribe(
            "Page.screencastFrame", lambda _, params: _on_frame(recording, call.clock, params)
        )
        params = {
            "format": "jpeg" if binary else "png",
            "maxWidth": MAX_WIDTH,
            "maxHeight": MAX_HEIGHT,
            "everyNthFrame": 1,
        }
        if binary:
            params["quality"] = JPEG_QUALITY
        try:
            await _focus_emulation(page, True)
            await page.send("Page.startScreencast", params)
        except BaseException:
            _discard(recording)
            if not page.closed:
                _focus_emulation(page, False).addErrback(lambda _: None)
            raise
        recording.timer = call.clock.callLater(MAX_SECONDS, _time_limit, recording, call.clock)
        recordings[page.page_id] = recording
        response = Response().add(
            f"Screencast recording started. It will be saved as {file_path} among your artifacts; "
            f"call screencast_stop to stop it (at most {MAX_SECONDS:g} s or {MAX_FRAMES} frames)."
        )
        return response.add(note) if note else response

    @tools.page_tool(
        "screencast_stop",
        title="Stop screencast",
        description="Stop the page's screencast recording and save it; the answer links the file.",
        # A page closed during the recording is looked up here, not by the registry.
        resolve_page=False,
    )
    async def stop(call: ToolCall) -> Response:
        """Stop the page's recording and save it, even when the page closed meanwhile."""
        page_id = call.args["pageId"]
        recording = _recordings(call.browser).get(page_id)
        if recording is None or not recording.page.closed:
            resolve_page(call, page_id)  # the caller's scope, and "no such page"
        elif call.config.tab_scope == "session" and recording.owner != call.context.session.session_id:
            resolve_page(call, page_id)  # another session's page: as if there were none
        if recording is None:
            raise ToolError(f"No screencast is recording page {page_id:g}. Start one with screencast_start.")
        del _recordings(call.browser)[page_id]
        page = recording.page
        ended = call.clock.seconds()
        try:
            # Frames Chrome sent before it got the stop are acknowledged (not kept): one left
            # unacknowledged holds the tab's frame pipeline.
            recording.stopping = True
            if not page.closed and recording.limit is None:
                try:
                    await page.send("Page.stopScreencast")
                    await _focus_emulation(page, False)
                except ToolError:
                    pass  # a crashed or vanished renderer sends no more frames anyway
            notes = []
            if page.closed:
                notes.append(
                    f"Page {page.page_id} was closed during the recording; saving what was recorded until then."
                )
            if recording.limit is not None:
                notes.append(f"The recording stopped taking frames at {recording.limit}.")
            if not recording.frames:
                raise ToolError(" ".join([*notes, "The screencast recorded no frames, so nothing was saved."]))
            durations = _durations(recording, ended)
            save = save_video if recording.ffmpeg else save_apng
            artifact, skipped = await save(call, recording, durations, recording.file_path)
        finally:
            _discard(recording)
        if skipped:
            notes.append(f"{skipped} frames of another size (the page was resized) were left out.")
        kind = (
            "MP4 video"
            if artifact.mime_type == "video/mp4"
            else ("WebM video" if artifact.mime_type == "video/webm" else "animated PNG")
        )
        response = Response().add("The screencast recording has been stopped.")
        for note in notes:
            response.add(note)
        return response.add_artifact(
            artifact, f"Recording ({kind}, {len(recording.frames)} frames, {sum(durations):.1f} s)"
        )

    return tuple(tools)
