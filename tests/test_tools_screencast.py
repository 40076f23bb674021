"""screencast_start / screencast_stop against real Chromium: APNG without ffmpeg, MP4/WebM with it."""

import json
import shutil
import struct
import subprocess
import zlib

import pytest
import pytest_twisted

from mcproxy.artifacts.store import ArtifactStore
from mcproxy.config import ArtifactsConfig
from mcproxy.testing.tool_calls import failed, make_context, make_registry, ok, sleep, text_of
from mcproxy.tools import encoding, screencast

FFMPEG = shutil.which("ffmpeg")


def registry(reactor, browser, artifacts, ffmpeg):
    return make_registry(reactor, browser, artifacts=artifacts, ffmpeg=ffmpeg)


@pytest.fixture
def artifacts(tmp_path, reactor):
    return ArtifactStore(str(tmp_path), ArtifactsConfig(), reactor)


async def record(reactor, tools, fixture_site, seconds=1.0, **start):
    context = make_context()
    await ok(tools, context, "new_page", url=fixture_site.page("sc_anim.html"))
    page_id = context.session.selected_page_id
    started = text_of(await ok(tools, context, "screencast_start", pageId=page_id, **start))
    assert started.startswith("Screencast recording started."), started
    await sleep(reactor, seconds)
    result = await ok(tools, context, "screencast_stop", pageId=page_id)
    return started, result


def saved(artifacts, result):
    link = result["content"][-1]
    assert link["type"] == "resource_link", result["content"]
    artifact, data = artifacts.read("alice", link["uri"])
    return link, artifact, data


def apng_frames(data: bytes) -> list[tuple[int, int]]:
    """Check an APNG's structure and CRCs; the (delay_num, delay_den) of each frame."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    offset, kinds, delays, sequence, frames_declared = 8, [], [], [], None
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind, body = data[offset + 4 : offset + 8], data[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length : offset + 12 + length])
        assert crc == zlib.crc32(kind + body), kind
        kinds.append(kind)
        if kind == b"acTL":
            frames_declared, plays = struct.unpack(">II", body)
            assert plays == 0
        elif kind == b"fcTL":
            sequence.append(struct.unpack(">I", body[:4])[0])
            delays.append(struct.unpack(">HH", body[20:24]))
        elif kind == b"fdAT":
            sequence.append(struct.unpack(">I", body[:4])[0])
        offset += 12 + length
    assert offset == len(data)
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND"
    assert kinds.index(b"acTL") < kinds.index(b"IDAT")
    assert kinds.index(b"fcTL") < kinds.index(b"IDAT")  # the first frame is the default image
    assert sequence == list(range(len(sequence)))
    assert frames_declared == len(delays)
    return delays


@pytest_twisted.ensureDeferred
async def test_animated_png_without_ffmpeg(reactor, user_browser, fixture_site, artifacts, tmp_path):
    tools = registry(reactor, user_browser, artifacts, "none")
    started, result = await record(reactor, tools, fixture_site, filePath="casts/demo.mp4")
    assert started.endswith("animated PNG (casts/demo.png), which browsers play."), started
    text = text_of(result)
    assert text.startswith("The screencast recording has been stopped."), text
    link, artifact, data = saved(artifacts, result)
    assert artifact.name == "casts/demo.png" and artifact.mime_type == "image/apng"
    delays = apng_frames(data)
    assert len(delays) >= 5, delays  # the page changes every 60 ms for a second
    total = sum(num / den for num, den in delays)
    assert 0.5 < total < 3, delays
    assert f"{len(delays)} frames" in text and link["uri"] in text
    if shutil.which("ffprobe"):  # an independent decoder agrees
        (tmp_path / "demo.png").write_bytes(data)
        probe = subprocess.run(
            ["ffprobe", "-v", "error", "-count_frames", "-show_streams", "-of", "json", str(tmp_path / "demo.png")],
            capture_output=True,
            check=True,
            text=True,
        )
        stream = json.loads(probe.stdout)["streams"][0]
        assert stream["codec_name"] == "apng" and int(stream["nb_read_frames"]) == len(delays)


@pytest.mark.parametrize(("name", "codec"), [("demo.mp4", "h264"), ("demo.webm", "vp9")])
@pytest_twisted.ensureDeferred
async def test_video_with_ffmpeg(reactor, user_browser, fixture_site, artifacts, tmp_path, name, codec):
    assert FFMPEG, "ffmpeg is missing: `make test` installs Debian's ffmpeg package"
    tools = registry(reactor, user_browser, artifacts, "")
    _, result = await record(reactor, tools, fixture_site, filePath=name)
    link, artifact, data = saved(artifacts, result)
    assert artifact.name == name and link["mimeType"] == ("video/mp4" if codec == "h264" else "video/webm")
    video = tmp_path / name
    video.write_bytes(data)
    probe = subprocess.run(
        [shutil.which("ffprobe"), "-v", "error", "-show_streams", "-show_format", "-of", "json", str(video)],
        capture_output=True,
        check=True,
        text=True,
    )
    info = json.loads(probe.stdout)
    stream = info["streams"][0]
    assert stream["codec_name"] == codec
    assert stream["width"] % 2 == 0 and stream["width"] >= 200
    assert 0.5 < float(info["format"]["duration"]) < 3, info["format"]


@pytest_twisted.ensureDeferred
async def test_start_twice_and_stop_without_start(reactor, user_browser, fixture_site, artifacts):
    tools = registry(reactor, user_browser, artifacts, "none")
    context = make_context()
    await ok(tools, context, "new_page", url=fixture_site.page("sc_anim.html"))
    page_id = context.session.selected_page_id
    text = await failed(tools, context, "screencast_stop", pageId=page_id)
    assert text == f"No screencast is recording page {page_id}. Start one with screencast_start."
    await ok(tools, context, "screencast_start", pageId=page_id)
    text = await failed(tools, context, "screencast_start", pageId=page_id)
    assert text == f"A screencast is already recording page {page_id}. Stop it with screencast_stop first."
    await sleep(reactor, 0.3)
    await ok(tools, context, "screencast_stop", pageId=page_id)
    assert "No screencast" in await failed(tools, context, "screencast_stop", pageId=page_id)
    assert "goes up" in await failed(tools, context, "screencast_start", pageId=page_id, filePath="../x.png")
    assert "No page with id 999" in await failed(tools, context, "screencast_stop", pageId=999)


@pytest_twisted.ensureDeferred
async def test_page_closed_while_recording(reactor, user_browser, fixture_site, artifacts):
    tools = registry(reactor, user_browser, artifacts, "none")
    context = make_context()
    await ok(tools, context, "new_page", url=fixture_site.page("sc_anim.html"))
    page_id = context.session.selected_page_id
    await ok(tools, context, "screencast_start", pageId=page_id)
    await sleep(reactor, 0.5)
    await ok(tools, context, "close_page", pageId=page_id)
    result = await ok(tools, context, "screencast_stop", pageId=page_id)
    text = text_of(result)
    assert f"Page {page_id} was closed during the recording" in text, text
    _, _, data = saved(artifacts, result)
    assert len(apng_frames(data)) >= 2


@pytest_twisted.ensureDeferred
async def test_frame_limit(reactor, user_browser, fixture_site, artifacts, monkeypatch):
    monkeypatch.setattr(screencast, "MAX_FRAMES", 3)
    tools = registry(reactor, user_browser, artifacts, "none")
    _, result = await record(reactor, tools, fixture_site, seconds=1.0)
    assert "stopped taking frames at the limit of 3 frames" in text_of(result)
    _, _, data = saved(artifacts, result)
    assert len(apng_frames(data)) == 3


def test_jpeg_size():
    header = b"\xff\xd8\xff\xe0\x00\x04ab\xff\xc0\x00\x11\x08" + struct.pack(">HH", 600, 800) + b"\x03" + b"\0" * 9
    assert encoding.jpeg_size(header) == (800, 600)
    with pytest.raises(ValueError):
        encoding.jpeg_size(b"\xff\xd8\x00")


@pytest_twisted.ensureDeferred
async def test_resized_page_keeps_the_first_size(reactor, user_browser, fixture_site, artifacts):
    tools = registry(reactor, user_browser, artifacts, "none")
    context = make_context()
    await ok(tools, context, "new_page", url=fixture_site.page("sc_anim.html"))
    page_id = context.session.selected_page_id
    await ok(tools, context, "screencast_start", pageId=page_id)
    await sleep(reactor, 0.5)
    await ok(tools, context, "resize_page", pageId=page_id, width=500, height=400)
    await sleep(reactor, 0.5)
    result = await ok(tools, context, "screencast_stop", pageId=page_id)
    assert "frames of another size (the page was resized) were left out" in text_of(result)
    _, _, data = saved(artifacts, result)
    assert len(apng_frames(data)) >= 2


@pytest_twisted.ensureDeferred
async def test_background_tab_records_and_screenshots_around_it(reactor, user_browser, fixture_site, artifacts):
    """A tab behind another paints no frames by itself: the recording has Chrome paint it
    (focus emulation) without bringing it in front, and leaves it hidden again after."""
    from mcproxy.testing.tool_calls import until

    tools = registry(reactor, user_browser, artifacts, "none")
    context = make_context()
    await ok(tools, context, "new_page", url=fixture_site.page("sc_anim.html"), background=True)
    page_id = context.session.selected_page_id
    await ok(tools, context, "new_page", url=fixture_site.page("index.html"))  # in front of it
    page = user_browser.page(page_id)

    async def visibility():
        reply = await page.send("Runtime.evaluate", {"expression": "document.visibilityState", "returnByValue": True})
        return reply["result"]["value"]

    assert await visibility() == "hidden"
    await ok(tools, context, "screencast_start", pageId=page_id)
    recording = screencast._recordings(user_browser)[page_id]
    await until(reactor, lambda: len(recording.frames) >= 3)
    await ok(tools, context, "take_screenshot", pageId=page_id)
    result = await ok(tools, context, "screencast_stop", pageId=page_id)
    _, _, data = saved(artifacts, result)
    assert len(apng_frames(data)) >= 3
    shot = await ok(tools, context, "take_screenshot", pageId=page_id)
    assert shot["content"][1]["type"] == "image"
    assert await visibility() == "hidden"
