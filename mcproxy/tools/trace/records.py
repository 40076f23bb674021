"""What was measured in a trace: one record per insight, per insight set and per trace.

Times are trace timestamps in microseconds unless a field says otherwise. The records
hold no prose: `mcproxy.tools.trace.wording` words them.
"""

from typing import Any

import attrs

# The phases of an LCP, in order.
TIME_TO_FIRST_BYTE = "ttfb"
LOAD_DELAY = "load_delay"
LOAD_DURATION = "load_duration"
RENDER_DELAY = "render_delay"


@attrs.frozen
class LcpPhase:
    kind: str
    start: float
    end: float


@attrs.frozen
class LcpBreakdown:
    """The largest contentful paint of a navigation; ``phases`` is empty when the
    document request is not in the trace."""

    navigation_ts: float
    ts: float
    node_id: Any
    node_name: str | None
    image: bool
    image_url: str | None
    phases: tuple[LcpPhase, ...]


@attrs.frozen
class DocumentLatency:
    """How the main document request went: redirects, server time, compression."""

    url: str
    status: Any
    urls: tuple[str, ...]
    redirects: int
    redirect_us: float
    server_ms: float | None
    encoding: str
    mime: str
    size: int
    uncompressed: bool
    saved_us: float
    bounds: tuple[float, float]


@attrs.frozen
class BlockingRequest:
    url: str
    resource_type: str | None
    mime: str | None
    requested: float
    finished: float


@attrs.frozen
class RenderBlocking:
    """The requests the first paint waited for, longest first."""

    requests: tuple[BlockingRequest, ...]
    fcp_ts: float | None
    saved_us: float
    bounds: tuple[float, float]


@attrs.frozen
class Interaction:
    """The slowest interaction (it sets INP) and how its time splits up; times in ms."""

    count: int
    type: str | None
    node_id: Any
    node_name: str | None
    ts: float
    duration: float
    delay: float
    processing: float
    presentation: float


@attrs.frozen
class MovedNode:
    node_id: Any
    node_name: str | None
    old_rect: Any
    new_rect: Any


@attrs.frozen
class Shift:
    ts: float
    score: float
    moved: tuple[MovedNode, ...]


@attrs.frozen
class LayoutShifts:
    """Layout shifts without recent input, clustered; the worst cluster sets the score."""

    score: float
    shifts: int
    clusters: int
    worst: tuple[Shift, ...]


@attrs.frozen
class Work:
    """The longest named piece of work inside a task."""

    name: str
    function: str | None
    type: str | None
    source: str
    line: Any
    dur: float


@attrs.frozen
class Task:
    ts: float
    dur: float
    cause: Work | None


@attrs.frozen
class LongTasks:
    """Main-thread tasks over 50 ms; ``longest`` holds the top few, longest first."""

    count: int
    blocking_us: float
    longest: tuple[Task, ...]


@attrs.frozen
class InsightSet:
    """The measurements of one part of the trace.

    ``measured`` maps each insight that applies to this set, in listing order, to its
    record, or to None when the trace has nothing for it.
    """

    id: str
    url: str
    bounds: tuple[float, float]
    fcp_ts: float | None
    shifts: LayoutShifts
    measured: dict[str, Any]

    @property
    def insights(self) -> dict[str, Any]:
        """The insights this set has data for."""
        return {name: record for name, record in self.measured.items() if record is not None}


@attrs.frozen
class TraceAnalysis:
    """Everything measured in one trace recording."""

    url: str
    bounds: tuple[float, float]
    sets: tuple[InsightSet, ...]
    #: How many relevant events were kept, when the trace had more (None when it did not).
    kept: int | None = None
    conditions: tuple[str, ...] = ()
