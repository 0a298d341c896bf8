"""Prometheus metrics of `desanet fleet serve` (prometheus_client), listed in docs/fleet.md.

Two kinds:

- ``desanet_gateway_*{site=...}``: the state of every gateway, read from the
  database at each scrape (:class:`FleetCollector`). Instances of one group
  each get only a part of the messages, so no instance's memory knows the
  fleet; the database does, and every instance exports the same values.
- ``desanet_serve_*``: this instance's own counters (messages stored,
  duplicates, rejected, lag), kept in memory by :class:`ServeMetrics`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from gateway.fleet.state import SiteState
from gateway.fleet.store import Outcome
from gateway.fleet.table import LEAVES

# (name, help, SiteState attribute, scale); absent from the scrape while the gateway has not said
GAUGES: tuple[tuple[str, str, str, float], ...] = (
    ("online", "1 when the gateway's retained status says online, 0 offline", "online", 1),
    ("session", "the gateway's session counter (one more per start)", "session", 1),
    ("boot_time_seconds", "when the gateway's daemon started (Unix time, its clock)", "boot_time", 1),
    ("clients", "clients connected (DHCP leases)", "clients", 1),
    ("clients_authorized", "clients with an active portal session", "authorized", 1),
    ("uplink_up", "1 when the uplink is up, 0 down", "uplink", 1),
    ("uplink_latency_seconds", "uplink probe latency", "latency_ms", 0.001),
    ("queued_forms", "forms waiting to be delivered to a government service", "queued_forms", 1),
    ("backlog_messages", "messages waiting in the gateway's outbox", "backlog", 1),
    ("last_seen_timestamp_seconds", "when a consumer last received a live message of the "
     "gateway (consumer clock)", "last_seen", 1),
    ("last_report_timestamp_seconds", "the 'time' of the newest event or telemetry stored "
     "(gateway clock)", "last_report", 1),
    ("last_seq", "the highest sequence number stored (of the newest session)", "last_seq", 1),
)
COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("events", "events stored", "events"),
    ("messages", "numbered messages (events and telemetry) stored", "messages"),
    ("duplicates", "copies of stored messages received and dropped", "duplicates"),
    ("rejected", "unreadable payloads received on the gateway's topics", "rejected"),
)


class FleetCollector(Collector):
    """Reads the ``gateways`` table at every scrape (``load`` opens its own connection:
    the scrape runs on prometheus_client's thread)."""

    def __init__(self, load: Callable[[], list[SiteState]]) -> None:
        self.load = load
        self.lock = threading.Lock()

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        with self.lock:
            sites = self.load()
        per_state = {"online": 0, "offline": 0, "unknown": 0}
        info = GaugeMetricFamily("desanet_gateway_info", "software and config version (value 1)",
                                 labels=["site", "version", "config_version"])
        for s in sites:
            per_state["unknown" if s.online is None else "online" if s.online else "offline"] += 1
            if s.version is not None:
                info.add_metric([s.site, s.version, s.config_version or ""], 1)
        total = GaugeMetricFamily("desanet_gateways", "gateways in the database by status",
                                  labels=["state"])
        for name, n in per_state.items():
            total.add_metric([name], n)
        yield total
        yield info
        for name, doc, attr, scale in GAUGES:
            g = GaugeMetricFamily(f"desanet_gateway_{name}", doc, labels=["site"])
            for s in sites:
                value = getattr(s, attr)
                if value is not None:
                    g.add_metric([s.site], float(value) * scale)
            yield g
        for name, doc, attr in COUNTERS:
            c = CounterMetricFamily(f"desanet_gateway_{name}", doc, labels=["site"])
            for s in sites:
                c.add_metric([s.site], float(getattr(s, attr)))
            yield c
        d = CounterMetricFamily("desanet_gateway_dropped", "messages the gateway dropped from its "
                                "full outbox (its status says)", labels=["site", "kind"])
        for s in sites:
            for kind, value in (("event", s.dropped_events), ("telemetry", s.dropped_telemetry)):
                if value is not None:
                    d.add_metric([s.site, kind], float(value))
        yield d

    def describe(self) -> list[Sample]:
        return []  # unchecked: the families depend on the data


class ServeMetrics:
    """This instance's counters, in their own registry (the tests run several)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.messages = Counter("desanet_serve_messages", "messages stored, by topic leaf",
                                ["leaf"], registry=registry)
        self.duplicates = Counter("desanet_serve_duplicates", "copies of stored messages dropped",
                                  registry=registry)
        self.rejected = Counter("desanet_serve_rejected", "unreadable payloads", registry=registry)
        self.stale = Counter("desanet_serve_stale_statuses", "statuses older than the stored one",
                             registry=registry)
        self.ignored = Counter("desanet_serve_ignored", "messages on topics outside the tree",
                               registry=registry)
        self.db_errors = Counter("desanet_serve_db_errors", "failed batches (retried)",
                                 registry=registry)
        self.lag = Gauge("desanet_serve_lag_seconds", "commit time minus the making time of the "
                         "oldest live message of the last batch (includes clock skew)",
                         registry=registry)
        self.pending = Gauge("desanet_serve_pending_messages", "received, not yet committed "
                             "and acknowledged", registry=registry)
        self.connected = Gauge("desanet_serve_connected", "1 while connected to the broker",
                               registry=registry)
        self.commit = Histogram("desanet_serve_commit_seconds", "time to store one batch",
                                registry=registry)
        for leaf in LEAVES:
            self.messages.labels(leaf)

    def count(self, out: Outcome) -> None:
        for leaf, n in out.stored.items():
            if n:
                self.messages.labels(leaf).inc(n)
        self.duplicates.inc(out.duplicates)
        self.rejected.inc(out.rejected)
        self.stale.inc(out.stale)
        self.ignored.inc(out.ignored)
        if out.lag is not None:
            self.lag.set(out.lag)
