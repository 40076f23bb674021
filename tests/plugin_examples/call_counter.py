"""``call-counter``: counts tool calls and requests in memory, and exports one counter of
its own through the daemon's Prometheus registry (what an OpenTelemetry exporter would
read from the same hooks)."""

from collections import Counter as Tally

from prometheus_client import Counter
from twisted.plugin import IPlugin
from zope.interface import implementer

from mcproxy.plugins import IObservabilityPlugin, IObserver


@implementer(IObserver)
class CallCounter:
    def __init__(self, metrics):
        self.started = Tally()
        self.finished = Tally()
        self.requests = Tally()
        self.running = False
        self._exported = Counter(
            "mcproxy_plugin_tool_calls",
            "Tool calls seen by the call-counter plugin.",
            ("tool", "outcome"),
            registry=metrics.registry,
        )

    def tool_call_started(self, tool: str) -> None:
        self.started[tool] += 1

    def tool_call_finished(self, record) -> None:
        self.finished[record.tool, record.outcome] += 1
        self._exported.labels(record.tool, record.outcome).inc()

    def http_request(self, route: str, code: int) -> None:
        self.requests[route, code] += 1

    def start(self) -> None:
        self.running = True

    def stop(self) -> None:
        self.running = False


@implementer(IPlugin, IObservabilityPlugin)
class CallCounterPlugin:
    name = "call-counter"
    description = "counts tool calls and HTTP requests in memory"
    options = ()

    def make(self, config, reactor, metrics):
        return CallCounter(metrics)


call_counter = CallCounterPlugin()
