"""What a trace says about the traced page: its frames and processes, navigations and requests."""

import attrs

from mcproxy.tools.trace.events import TraceEvents


@attrs.define
class Request:
    """One network request assembled from its send, response and finish events."""

    request_id: str
    sends: list[dict] = attrs.field(factory=list)
    response: dict | None = None
    finish: dict | None = None

    @property
    def data(self) -> dict:
        return self.sends[-1]["args"]["data"]

    @property
    def url(self) -> str:
        return self.data.get("url", "")

    @property
    def frame(self) -> str | None:
        return self.data.get("frame")

    @property
    def first_ts(self) -> float:
        return self.sends[0]["ts"]

    def _timing(self) -> dict:
        return (self.response or {}).get("args", {}).get("data", {}).get("timing") or {}

    @property
    def start(self) -> float:
        """When the (final) request was sent on the network clock, else when it was issued."""
        timing = self._timing()
        if timing.get("requestTime"):
            return timing["requestTime"] * 1e6
        return self.sends[-1]["ts"]

    @property
    def response_start(self) -> float | None:
        """When the first byte of the response arrived (None without a response)."""
        timing = self._timing()
        if not timing.get("requestTime"):
            return self.response["ts"] if self.response else None
        return timing["requestTime"] * 1e6 + _headers_ms(timing) * 1000

    @property
    def end(self) -> float:
        """When the download finished (the last event seen when it never did)."""
        if self.finish:
            finish_time = self.finish["args"]["data"].get("finishTime")
            return finish_time * 1e6 if finish_time else self.finish["ts"]
        return self.response["ts"] if self.response else self.sends[-1]["ts"]

    @property
    def server_ms(self) -> float | None:
        """Time the server took to start answering, as DevTools measures it."""
        timing = self._timing()
        if not timing:
            return None
        return max(0.0, _headers_ms(timing) - max(timing.get("sendEnd", 0), 0))

    def response_field(self, key: str, default=None):
        return (self.response or {}).get("args", {}).get("data", {}).get(key, default)

    def finish_field(self, key: str, default=None):
        return (self.finish or {}).get("args", {}).get("data", {}).get(key, default)


def _headers_ms(timing: dict) -> float:
    """When the response headers started arriving, in ms after ``requestTime``."""
    headers = timing.get("receiveHeadersStart")
    if headers is None or headers < 0:
        headers = timing.get("receiveHeadersEnd", 0)
    return headers


@attrs.define
class Scope:
    """Which frames and processes belong to the traced page."""

    main_frame: str | None
    frames: set[str]
    pids: set[int]

    def has_frame(self, frame: str | None) -> bool:
        return not self.frames or frame in self.frames

    def has_pid(self, pid) -> bool:
        return not self.pids or pid in self.pids


def page_scope(trace: TraceEvents) -> Scope:
    """The traced page's frames and processes, from the frames the trace started with and
    those committed since."""
    main, frames, pids = None, set(), set()
    for event in trace.of("TracingStartedInBrowser"):
        for frame in event["args"]["data"].get("frames") or ():
            frames.add(frame.get("frame"))
            if frame.get("processId"):
                pids.add(frame["processId"])
            if main is None and (frame.get("isOutermostMainFrame") or not frame.get("parent")):
                main = frame.get("frame")
    for event in trace.of("FrameCommittedInBrowser"):
        data = event["args"]["data"]
        if frames and data.get("frame") not in frames and data.get("parent") not in frames:
            continue
        frames.add(data.get("frame"))
        if data.get("processId"):
            pids.add(data["processId"])
    return Scope(main, frames, pids)


def page_url(scope: Scope, trace: TraceEvents) -> str:
    """The main frame's latest URL, or ``unknown``."""
    commits = trace.of("FrameCommittedInBrowser") + trace.of("TracingStartedInBrowser")
    for event in sorted(commits, key=lambda e: e["ts"], reverse=True):
        data = event["args"]["data"]
        for frame in data.get("frames") or [data]:
            if frame.get("frame") == scope.main_frame and frame.get("url"):
                return frame["url"]
    return "unknown"


def navigations(trace: TraceEvents, scope: Scope) -> list[dict]:
    """The main frame's navigations, each once (learning the main frame if still unknown)."""
    found, seen = [], set()
    for event in trace.of("navigationStart"):
        data = event["args"].get("data") or {}
        main = data.get("isOutermostMainFrame", data.get("isLoadingMainFrame"))
        if not main or not data.get("documentLoaderURL"):
            continue
        if scope.main_frame is None:
            scope.main_frame = event["args"].get("frame")
        if event["args"].get("frame") != scope.main_frame or data.get("navigationId") in seen:
            continue
        seen.add(data.get("navigationId"))
        found.append(event)
    return found


def network_requests(trace: TraceEvents) -> dict[str, Request]:
    """Every request of the trace by id."""
    found: dict[str, Request] = {}
    for event in trace.of("ResourceSendRequest"):
        request_id = event["args"]["data"].get("requestId")
        found.setdefault(request_id, Request(request_id)).sends.append(event)
    for event in trace.of("ResourceReceiveResponse"):
        request = found.get(event["args"]["data"].get("requestId"))
        if request is not None:
            request.response = event
    for event in trace.of("ResourceFinish"):
        request = found.get(event["args"]["data"].get("requestId"))
        if request is not None:
            request.finish = event
    return found


def document_request(requests: dict[str, Request], navigation: dict, scope: Scope) -> Request | None:
    """The request that loaded the document of ``navigation``, if the trace has it."""
    data = navigation["args"]["data"]
    request = requests.get(data.get("navigationId"))
    if request is not None:
        return request
    candidates = [
        r
        for r in requests.values()
        if r.data.get("resourceType") == "Document"
        and r.frame == scope.main_frame
        and r.url == data.get("documentLoaderURL")
        and r.first_ts >= navigation["ts"] - 1_000_000
    ]
    return min(candidates, key=lambda r: r.first_ts, default=None)
