"""Reading a Chrome trace as it streams in, keeping only the events the insights use.

A trace of a busy page is tens of megabytes of JSON that Chrome hands over in ``IO.read``
chunks. `TraceParser` decodes the events of each chunk as it arrives, and `TraceEvents`
keeps the few kinds the insights read (navigations, paints, layout shifts, interactions,
network requests, long tasks and the work inside them) with the trace bounds, so memory
follows what is kept, not the size of the trace.
"""

import json
from collections import defaultdict

_DECODER = json.JSONDecoder()
_WHITESPACE = " \t\r\n"

# No single trace event comes near this; more undecodable text means the stream is not a trace.
MAX_PENDING_CHARS = 32 * 1024 * 1024
# Past this many kept events the rest of the trace is counted but not kept.
MAX_KEPT_EVENTS = 200_000
LONG_TASK_US = 50_000
# Work inside a long task shorter than this is not worth naming as its cause.
ATTRIBUTION_MIN_US = 5_000

_KEPT = frozenset(
    {
        "TracingStartedInBrowser",
        "FrameCommittedInBrowser",
        "navigationStart",
        "firstContentfulPaint",
        "largestContentfulPaint::Candidate",
        "largestContentfulPaint::Invalidate",
        "LargestImagePaint::Candidate",
        "LayoutShift",
        "ResourceSendRequest",
        "ResourceReceiveResponse",
        "ResourceFinish",
    }
)
# Main-thread work that explains what a long task was busy with.
ATTRIBUTION = frozenset(
    {
        "EvaluateScript",
        "FunctionCall",
        "TimerFire",
        "EventDispatch",
        "FireAnimationFrame",
        "RunMicrotasks",
        "ParseHTML",
        "ParseAuthorStyleSheet",
        "Layout",
        "UpdateLayoutTree",
        "Paint",
        "v8.compile",
        "MajorGC",
        "MinorGC",
    }
)


class TraceFormatError(ValueError):
    """The stream is not a Chrome trace (or was cut short)."""


class TraceParser:
    """Incremental decoder for Chrome's JSON trace formats.

    Accepts ``{"traceEvents": [...], ...}`` and the bare ``[...]`` array form. `feed` takes
    text as it arrives and returns the events completed by it; `close` checks the array
    ended. What follows the array (trace metadata) is ignored.
    """

    def __init__(self):
        self._buffer = ""
        self._state = "start"

    def feed(self, text: str) -> list[dict]:
        """The events completed by ``text``."""
        if self._state == "done":
            return []
        buffer = self._buffer + text
        position = 0
        if self._state == "start":
            position = self._array_start(buffer)
            if position < 0:
                self._buffer = self._checked(buffer)
                return []
            self._state = "events"
        events = []
        end = len(buffer)
        while True:
            while position < end and (buffer[position] in _WHITESPACE or buffer[position] == ","):
                position += 1
            if position >= end:
                break
            if buffer[position] == "]":
                self._state = "done"
                position = end
                break
            try:
                event, position = _DECODER.raw_decode(buffer, position)
            except json.JSONDecodeError:
                break  # the event continues in the next chunk
            if isinstance(event, dict):
                events.append(event)
        self._buffer = self._checked(buffer[position:])
        return events

    def close(self) -> None:
        """TraceFormatError unless the whole event array was read."""
        if self._state != "done":
            raise TraceFormatError("the trace data ended before its list of events was complete")

    @staticmethod
    def _array_start(buffer: str) -> int:
        """Index just past the ``[`` opening the event array; -1 if not yet seen."""
        stripped = buffer.lstrip(_WHITESPACE)
        if not stripped:
            return -1
        if stripped[0] == "[":
            return buffer.index("[") + 1
        if stripped[0] != "{":
            raise TraceFormatError("the trace data is not JSON trace events")
        key = buffer.find('"traceEvents"')
        if key < 0:
            return -1
        colon = buffer.find(":", key)
        opening = buffer.find("[", colon) if colon >= 0 else -1
        if opening < 0:
            return -1
        return opening + 1

    @staticmethod
    def _checked(rest: str) -> str:
        if len(rest) > MAX_PENDING_CHARS:
            raise TraceFormatError("the trace data holds an undecodable event")
        return rest


class TraceEvents:
    """The events of one trace that the insights read, by name, and the trace bounds.

    Network responses keep only the header the insights read (``Content-Encoding``);
    interactions only their ``EventTiming`` begin events; main-thread tasks only the long
    ones; the work inside tasks only the parts long enough to name as a cause.
    """

    def __init__(self):
        self.by_name: dict[str, list[dict]] = defaultdict(list)
        #: Thread names by (pid, tid), as the trace gives them (either may be missing).
        self.threads: dict[tuple[int | None, int | None], str] = {}
        self.min_ts: float | None = None
        self.max_ts: float | None = None
        self.kept = 0
        self.seen = 0
        self.truncated = False

    def add(self, event: dict) -> None:
        """Take one event from the stream."""
        self.seen += 1
        phase = event.get("ph")
        if phase == "M":
            if event.get("name") == "thread_name":
                self.threads[(event.get("pid"), event.get("tid"))] = event.get("args", {}).get("name", "")
            return
        ts = event.get("ts")
        if not isinstance(ts, (int, float)) or ts <= 0:
            return
        end = ts + (event.get("dur") or 0)
        self.min_ts = ts if self.min_ts is None else min(self.min_ts, ts)
        self.max_ts = end if self.max_ts is None else max(self.max_ts, end)
        kept = self._keep(event, phase)
        if kept is None:
            return
        if self.kept >= MAX_KEPT_EVENTS:
            self.truncated = True
            return
        self.kept += 1
        self.by_name[kept["name"]].append(kept)

    def feed(self, events: list[dict]) -> None:
        """Take a batch of events (one `TraceParser.feed` result)."""
        for event in events:
            self.add(event)

    def of(self, name: str) -> list[dict]:
        """The kept events called ``name``, in time order."""
        return sorted(self.by_name.get(name, ()), key=lambda e: e["ts"])

    def thread_name(self, event: dict) -> str:
        """The name of the thread that recorded ``event`` ('' when unknown)."""
        return self.threads.get((event.get("pid"), event.get("tid")), "")

    @staticmethod
    def _keep(event: dict, phase) -> dict | None:
        name = event.get("name")
        if name in _KEPT:
            if name == "ResourceReceiveResponse":
                return _without_headers(event)
            return event
        if name == "EventTiming":
            data = event.get("args", {}).get("data") or {}
            return event if phase == "b" and data.get("interactionId") else None
        duration = event.get("dur") or 0
        if name == "RunTask":
            return event if duration > LONG_TASK_US else None
        if name in ATTRIBUTION and duration >= ATTRIBUTION_MIN_US:
            return event
        return None


def _without_headers(event: dict) -> dict:
    """A response event with its header list reduced to ``Content-Encoding``."""
    data = dict(event.get("args", {}).get("data") or {})
    headers = data.pop("headers", None) or ()
    for header in headers:
        if str(header.get("name", "")).lower() == "content-encoding":
            data["contentEncoding"] = header.get("value", "")
    return {**event, "args": {**event.get("args", {}), "data": data}}
