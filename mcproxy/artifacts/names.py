"""The names clients give saved files: checked so that none escapes the caller's directory.

A name has at most `MAX_PATH_DEPTH` segments and `MAX_PATH_LENGTH` characters, so saving
creates a bounded number of directories. Its extension also says the file's MIME type,
and with it whether ``resources/read`` answers with text or base64.
"""

import mimetypes
import os
import re

from mcproxy.errors import ToolError

#: Characters of a ``filePath``, and the most segments (directories and file name) it may have.
MAX_PATH_LENGTH = 1024
MAX_PATH_DEPTH = 16
#: Bytes of one segment in UTF-8 (the usual file system limit).
MAX_NAME_BYTES = 255
_TEXT_TYPES = ("application/json", "application/xml", "application/javascript", "image/svg+xml")
_EXTRA_TYPES = {".md": "text/markdown", ".heapsnapshot": "application/json", ".webp": "image/webp"}


def split_path(file_path: str) -> list[str]:
    """The segments of a client's relative file name; ToolError for anything that could escape."""
    advice = "give a relative name like 'shots/home.png'; files are kept in your own artifact directory."
    if not isinstance(file_path, str) or not file_path.strip():
        raise ToolError(f'"filePath" is empty: {advice}')
    if len(file_path) > MAX_PATH_LENGTH:
        raise ToolError(
            f'"filePath" has {len(file_path)} characters, more than the {MAX_PATH_LENGTH} allowed: use a shorter name.'
        )
    if "\0" in file_path:
        raise ToolError(f'"filePath" contains a NUL character: {advice}')
    if file_path.startswith(("/", "\\", "~")) or re.match(r"[A-Za-z]:", file_path):
        raise ToolError(f'"filePath" {file_path!r} is an absolute path, which this server does not write to: {advice}')
    parts = [part for part in re.split(r"[/\\]", file_path) if part not in ("", ".")]
    if ".." in parts:
        raise ToolError(f'"filePath" {file_path!r} goes up with "..": {advice}')
    if not parts:
        raise ToolError(f'"filePath" {file_path!r} names no file: {advice}')
    if len(parts) > MAX_PATH_DEPTH:
        raise ToolError(
            f'"filePath" has {len(parts)} segments, more than the {MAX_PATH_DEPTH} allowed (at most '
            f"{MAX_PATH_DEPTH - 1} directories): use fewer directories."
        )
    for part in parts:
        if len(part.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
            raise ToolError(
                f'"filePath" has a segment longer than {MAX_NAME_BYTES} bytes, which file systems refuse: shorten it.'
            )
    return parts


def guess_mime_type(name: str) -> str:
    """The MIME type a file name suggests; ``application/octet-stream`` when it suggests none."""
    extension = os.path.splitext(name)[1].lower()
    return _EXTRA_TYPES.get(extension) or mimetypes.guess_type(name)[0] or "application/octet-stream"


def is_text(mime_type: str) -> bool:
    """Whether ``resources/read`` returns this type as text rather than base64."""
    base = mime_type.split(";")[0].strip().lower()
    return base.startswith("text/") or base in _TEXT_TYPES or base.endswith(("+json", "+xml"))
