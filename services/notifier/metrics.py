"""The notifier's Prometheus metrics. No label names a subscription, endpoint or address:
those are unbounded."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

CHANNELS = ("webhook", "email")
OUTCOMES = ("delivered", "retry", "failed", "cancelled")
LATENCY_BUCKETS = (.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300, 3600)


class NotifierMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        p = "makelocal_notifier"
        self.events = Counter(f"{p}_events_consumed_total",
                              "MATCHES messages consumed (pieces of match changes)",
                              registry=registry)
        self.pairs = Counter(f"{p}_pairs_consumed_total", "Match pairs read from MATCHES",
                             registry=registry)
        self.render_failures = Counter(
            f"{p}_render_failures_total", "Batches left waiting because their match "
            "messages could not be read", registry=registry)
        self.items = Counter(f"{p}_items_routed_total",
                             "(subscription, match event) pairs recorded", registry=registry)
        self.deliveries = Counter(f"{p}_deliveries_total", "Delivery attempts by outcome",
                                  ["channel", "result"], registry=registry)
        self.attempt_seconds = Histogram(f"{p}_attempt_duration_seconds",
                                         "Duration of one delivery attempt", ["channel"],
                                         registry=registry, buckets=LATENCY_BUCKETS)
        self.end_to_end = Histogram(f"{p}_end_to_end_seconds",
                                    "From the registry change to a successful delivery",
                                    ["channel"], registry=registry, buckets=LATENCY_BUCKETS)
        self.assemble_seconds = Histogram(
            f"{p}_assemble_duration_seconds",
            "One pass gathering waiting matches into deliveries (a match waits for up to two)",
            registry=registry, buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1))
        self.ssrf_blocked = Counter(f"{p}_ssrf_blocked_total",
                                    "Webhook destinations refused as non-public",
                                    registry=registry)
        self.attempt_errors = Counter(
            f"{p}_attempt_errors_total", "Attempts that ended in an error of the notifier's "
            "own (recorded as failed attempts and retried on the schedule)", registry=registry)
        self.parked = Counter(f"{p}_parked_messages_total",
                              "MATCHES messages that could not be read, parked and acked",
                              registry=registry)
        self.pruned = Counter(f"{p}_pruned_rows_total", "History rows past their retention",
                              ["table"], registry=registry)
        for table in ("deliveries", "items", "parked_messages"):  # 0 until the first prune
            self.pruned.labels(table)
        self.smtp_config_errors = Counter(
            f"{p}_smtp_config_errors_total", "Email attempts the mail server refused for our "
            "own configuration (credentials, TLS, sender, relaying, connection)",
            registry=registry)
        self.pending = Gauge(f"{p}_deliveries_pending", "Deliveries not yet delivered or failed",
                             registry=registry)
        self.oldest_pending = Gauge(f"{p}_oldest_pending_age_seconds",
                                    "Age of the oldest pending delivery", registry=registry)
        self.dead = Gauge(f"{p}_deliveries_dead", "Deliveries failed after every attempt",
                          registry=registry)
        self.disabled = Gauge(f"{p}_subscriptions_disabled", "Disabled subscriptions",
                              registry=registry)
        self.consumer_pending = Gauge(f"{p}_consumer_pending",
                                      "MATCHES messages not yet consumed", registry=registry)
        # Every series exists from the start, at zero: a rate over a series that appears
        # only with its first failure would miss that failure, and dashboards would show
        # "no data" where the truth is "none".
        for channel in CHANNELS:
            self.attempt_seconds.labels(channel)
            self.end_to_end.labels(channel)
            for outcome in OUTCOMES:
                self.deliveries.labels(channel, outcome)
