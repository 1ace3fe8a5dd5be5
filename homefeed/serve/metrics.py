"""Prometheus metrics of one server: requests, per-stage latency histograms, channel errors, events, bad stored state.

Each `ServeMetrics` has its own registry, so several apps in one process (tests) do not collide. The
pipeline's metrics carry an `arm` label: the experiment arm that served (`serve.experiment`), "" on a
server without experiments (PromQL treats an empty label as absent, so queries without `arm` still match).
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ServeMetrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("homefeed_requests", "Homepage requests served", ["scene", "arm"], registry=self.registry)
        self.http = Counter("homefeed_http_responses", "HTTP responses by route template (never the raw path) and status",
                            ["path", "status"], registry=self.registry)
        self.stage_latency = Histogram("homefeed_stage_seconds", "Latency per pipeline stage", ["stage", "arm"],
                                       buckets=BUCKETS, registry=self.registry)
        self.channel_errors = Counter("homefeed_channel_errors", "Recall channels or stages dropped from a page",
                                      ["channel", "kind", "arm"], registry=self.registry)
        self.events = Counter("homefeed_events_stored", "New behaviour events stored", ["arm"], registry=self.registry)
        self.items_shown = Counter("homefeed_items_shown", "Items on the homepages served (the denominator of CTR)",
                                   ["arm"], registry=self.registry)
        self.behaviors = Counter("homefeed_behaviors", "New behaviour events stored, by behaviour (clicks: CTR's numerator)",
                                 ["behavior", "arm"], registry=self.registry)
        self.reloads = Counter("homefeed_reloads", "Bundle reloads", ["outcome", "arm"], registry=self.registry)
        self.evicted = Counter("homefeed_state_evicted", "Idle users' stored blobs evicted (outcome 'failed': a sweep that failed)",
                               ["outcome"], registry=self.registry)
        self.bad_state = Counter("homefeed_bad_state", "Stored user state that could not be read and was ignored",
                                 ["what"], registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
