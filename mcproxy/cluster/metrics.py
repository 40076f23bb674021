"""The metrics of a cluster node, read at scrape time from the parts that count.

Registered on the daemon's registry in cluster mode only, so a single process's
``/metrics`` is unchanged. Metrics stay per process (scrape each node directly, not
through the balancer); no label names a user. The node id is the label of one info metric,
``mcproxy_cluster_node_info{node}``, rather than a label on every metric: Prometheus
already tells scrape targets apart (``instance``), and the info metric joins the two.
"""

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

from mcproxy.cluster.events import IGNORED, TYPES

#: `mcproxy.cluster.routing.EdgePlacement` outcomes -> the ``outcome`` label (design §3.12).
FORWARD_OUTCOMES = {
    "ok": "ok",
    "NotOwner": "misdirected",
    "OwnerDraining": "draining",
    "OwnerUnreachable": "connect_failed",
    "OwnerLost": "owner_lost",
}


class ClusterMetrics:
    """A Prometheus collector of a `mcproxy.cluster.service.ClusterNode` and its public
    listeners' `mcproxy.cluster.routing.EdgePlacement` (``placement``)."""

    def __init__(self, node, placement):
        self.node = node
        self.placement = placement

    def _families(self):
        return (
            InfoMetricFamily("mcproxy_cluster_node", "This process's node id in the cluster.", labels=("node",)),
            GaugeMetricFamily("mcproxy_owned_users", "Users this node owns now."),
            GaugeMetricFamily("mcproxy_fenced", "1 while this node may not act as an owner (no valid lease)."),
            CounterMetricFamily("mcproxy_lease_renew_failures", "Lease renewals Redis did not answer."),
            CounterMetricFamily(
                "mcproxy_forwarded_requests", "Requests forwarded to their owner, by outcome.", labels=("outcome",)
            ),
            CounterMetricFamily(
                "mcproxy_ratelimit_fallback", "Requests rate-limited by this process alone: Redis did not answer."
            ),
            CounterMetricFamily(
                "mcproxy_cluster_events", "Events received from other processes, by type.", labels=("type",)
            ),
        )

    def describe(self):
        """Names only: registering must not read the node."""
        return self._families()

    def collect(self):
        node_info, owned, fenced, renew_failures, forwarded, fallback, events = families = self._families()
        node = self.node
        membership, ownership = node.membership, node.ownership
        node_info.add_metric((), {"node": node.node_id})
        owned.add_metric((), len(ownership.held()) if ownership is not None else 0)
        fenced.add_metric((), int(membership is not None and not membership.valid()))
        renew_failures.add_metric((), membership.renew_failures if membership is not None else 0)
        counts: dict[str, int] = {}
        for outcome, count in self.placement.outcomes.items():
            label = FORWARD_OUTCOMES.get(outcome, "other")
            counts[label] = counts.get(label, 0) + count
        for label, count in sorted(counts.items()):
            forwarded.add_metric((label,), count)
        fallback.add_metric((), node.limits.fallbacks)
        for kind in sorted(TYPES | {IGNORED}):
            events.add_metric((kind,), node.events.counts.get(kind, 0))
        return families
