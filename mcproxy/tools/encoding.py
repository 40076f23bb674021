"""Saving a screencast's frames as one file: a video encoded by ffmpeg, or an animated PNG
assembled here when there is no ffmpeg.

``recording`` is the screencast's record of its frames: ``frames`` (file name, time, PNG
header) in ``directory``, and the ``ffmpeg`` binary it recorded for.
"""

import os
import shutil
import struct
import zlib
from typing import TYPE_CHECKING

from twisted.internet.task import deferLater

from mcproxy.errors import ToolError
from mcproxy.tools.child import run_child, save_file

if TYPE_CHECKING:
    from mcproxy.tools.call import ToolCall

#: How long ffmpeg may take, per frame and at least.
ENCODE_SECONDS_PER_FRAME = 0.2
MIN_ENCODE_SECONDS = 60.0
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def find_ffmpeg(configured: str) -> str | None:
    """The ffmpeg to encode with: the configured binary, or Debian's on PATH; None if absent."""
    if configured == "none":
        return None
    return shutil.which(configured or "ffmpeg")


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """``(type, body)`` of each chunk of a PNG; ValueError when it is not one."""
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError("not a PNG file")
    chunks, offset = [], len(PNG_SIGNATURE)
    while offset + 12 <= len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        body = data[offset + 8 : offset + 8 + length]
        if len(body) != length:
            raise ValueError("truncated PNG chunk")
        chunks.append((kind, body))
        offset += 12 + length
    return chunks


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


class _ApngWriter:
    """Writes an APNG frame by frame from PNG frames that share the first one's IHDR."""

    def __init__(self, write, first: bytes, frame_count: int):
        self._write = write
        self._sequence = 0
        chunks = png_chunks(first)
        self.header = chunks[0][1]
        self.width, self.height = struct.unpack(">II", self.header[:8])
        write(PNG_SIGNATURE + _chunk(b"IHDR", self.header) + _chunk(b"acTL", struct.pack(">II", frame_count, 0)))
        for kind, body in chunks[1:]:
            if kind not in (b"IDAT", b"IEND", b"acTL", b"fcTL", b"fdAT"):
                write(_chunk(kind, body))  # colour information (sRGB, gAMA...) of the first frame

    def add(self, chunks: list[tuple[bytes, bytes]], seconds: float) -> None:
        """One frame, shown ``seconds`` (whole milliseconds; the first frame goes in IDAT)."""
        delay = max(1, min(65535, round(seconds * 1000)))
        control = struct.pack(">IIIIIHHBB", self._sequence, self.width, self.height, 0, 0, delay, 1000, 0, 0)
        out = [_chunk(b"fcTL", control)]
        first = self._sequence == 0
        self._sequence += 1
        for kind, body in chunks:
            if kind != b"IDAT":
                continue
            if first:
                out.append(_chunk(b"IDAT", body))
            else:
                out.append(_chunk(b"fdAT", struct.pack(">I", self._sequence) + body))
                self._sequence += 1
        self._write(b"".join(out))

    def end(self) -> None:
        self._write(_chunk(b"IEND", b""))


async def save_apng(call: "ToolCall", recording, durations: list[float], file_path: str):
    """Assemble the APNG into the caller's artifact, one frame per reactor turn; (artifact, skipped)."""
    frames = []
    header = recording.frames[0][2]
    for (name, _, ihdr), seconds in zip(recording.frames, durations, strict=True):
        if ihdr == header:
            frames.append((name, seconds))
        elif frames:
            # A frame of another size (the page was resized): the previous one shows longer.
            frames[-1] = (frames[-1][0], frames[-1][1] + seconds)
    writer = call.artifacts.writer(call.context.principal.user_id, file_path, "image/apng")
    try:
        apng = None
        for name, seconds in frames:
            with open(os.path.join(recording.directory, name), "rb") as f:
                data = f.read()
            if apng is None:
                apng = _ApngWriter(writer.write, data, len(frames))
            apng.add(png_chunks(data), seconds)
            await deferLater(call.clock, 0, lambda: None)
        if apng is not None:
            apng.end()
        return await writer.finish(), len(recording.frames) - len(frames)
    except BaseException:
        writer.abort()
        raise


def jpeg_size(data: bytes) -> tuple[int, int]:
    """``(width, height)`` from a JPEG's start-of-frame marker; ValueError if there is none."""
    offset = 2
    while offset + 9 <= len(data):
        if data[offset] != 0xFF:
            raise ValueError("not a JPEG marker")
        marker = data[offset + 1]
        (length,) = struct.unpack(">H", data[offset + 2 : offset + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", data[offset + 5 : offset + 9])
            return width, height
        offset += 2 + length
    raise ValueError("no JPEG frame header")


async def save_video(call: "ToolCall", recording, durations: list[float], file_path: str):
    """Encode the JPEG frames with ffmpeg and stream the video into the caller's artifact."""
    directory = recording.directory
    with open(os.path.join(directory, recording.frames[0][0]), "rb") as f:
        width, height = jpeg_size(f.read())
    width, height = width + width % 2, height + height % 2  # H.264 and VP9 want even sizes
    lines = ["ffconcat version 1.0"]
    for (name, _, _), seconds in zip(recording.frames, durations, strict=True):
        lines += [f"file {name}", f"duration {seconds:.3f}"]
    lines.append(f"file {recording.frames[-1][0]}")  # the demuxer ignores the last duration otherwise
    with open(os.path.join(directory, "frames.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    webm = file_path.lower().endswith(".webm")
    output = "video.webm" if webm else "video.mp4"
    codec = (
        ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-b:v", "0", "-crf", "40"]
        if webm
        else ["-c:v", "libx264", "-preset", "veryfast", "-crf", "28", "-movflags", "+faststart"]
    )
    fit = (
        f"scale={width}:{height}:force_original_aspect_ratio=decrease,"
        f"pad={width}:{height}:(ow-iw)/2:(oh-ih)/2,format=yuv420p"
    )
    argv = [
        recording.ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
        "-f", "concat", "-i", "frames.txt", "-vf", fit, "-fps_mode", "vfr", *codec, output,
    ]  # fmt: skip
    seconds = max(MIN_ENCODE_SECONDS, ENCODE_SECONDS_PER_FRAME * len(recording.frames))
    code, output_text = await run_child(call.clock, argv, timeout=seconds, what="ffmpeg", path=directory)
    if code != 0:
        raise ToolError(f"ffmpeg could not encode the recording (exit code {code}): {output_text[-500:]}")
    return await save_file(call, os.path.join(directory, output), file_path, "video/webm" if webm else "video/mp4"), 0
