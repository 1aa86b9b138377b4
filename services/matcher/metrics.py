"""The matcher's Prometheus metrics (makelocal_matcher_*)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.matcher.index import CapabilityIndex


class MatcherMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        p = "makelocal_matcher"
        self.consumed = Counter(f"{p}_events_consumed_total", "REGISTRY events consumed",
                                registry=registry)
        self.found = Counter(f"{p}_matches_found_total", "Pairs published as found",
                             registry=registry)
        self.withdrawn = Counter(f"{p}_matches_withdrawn_total",
                                 "Pairs published as withdrawn", registry=registry)
        self.messages = Counter(f"{p}_match_messages_total", "MATCHES messages (pieces of "
                                "changes) published", registry=registry)
        self.errors = Counter(f"{p}_batch_failures_total", "Batches that failed and were "
                              "redelivered", registry=registry)
        self.parked = Counter(f"{p}_parked_total", "REGISTRY messages that were not "
                              "registry events: parked (checkpoint bucket, parked.<seq>) "
                              "and skipped", registry=registry)
        self.lease_held = Gauge(f"{p}_lease_held", "1 while this process holds its "
                                "partition's lease (live), 0 while standby", registry=registry)
        self.change_seconds = Histogram(
            f"{p}_change_duration_seconds", "Time to apply one change to the index and compute "
            "its match difference", registry=registry,
            buckets=(.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1))
        self.index_entities = Gauge(f"{p}_index_entities", "Entities in the index", ["kind"],
                                    registry=registry)
        self.pending = Gauge(f"{p}_consumer_pending", "REGISTRY messages not yet processed",
                             registry=registry)
        self.startup_seconds = Gauge(f"{p}_startup_duration_seconds", "Time to load the "
                                     "checkpoint or build the index", registry=registry)

    def observe_index(self, index: CapabilityIndex) -> None:
        self.index_entities.labels("design").set(len(index.designs))
        self.index_entities.labels("facility").set(len(index.facilities))
