"""Matcher settings (MAKELOCAL_ environment variables)."""

from __future__ import annotations

from pydantic import Field, model_validator

from services.common.settings import CommonSettings


class MatcherSettings(CommonSettings):
    matcher_port: int = 8002
    matcher_partition: int = 0
    matcher_batch: int = 1000
    matcher_bucket: str = "matcher"
    matcher_stream_replicas: int = 1
    # deltas written before the checkpoint is rewritten as one snapshot: fewer make
    # restarts faster and cost a snapshot write (about 1 s per 100,000 entities) more often
    matcher_snapshot_every: int = 50_000
    # MATCHES pieces at most this large; unset: the NATS server's max_payload
    matcher_piece_bytes: int | None = Field(None, ge=4096)
    # one live process per partition: it holds a lease for this long and renews it every
    # heartbeat; a standby takes over once the lease has gone unrenewed for a whole lease
    matcher_lease_s: float = Field(10.0, gt=0)
    matcher_heartbeat_s: float = Field(3.0, gt=0)

    @model_validator(mode="after")
    def _heartbeat_within_lease(self) -> MatcherSettings:
        # the holder gives its lease up a heartbeat before it lapses: at least one more
        # renewal must fit, or a single slow round would cost the partition its worker
        if self.matcher_heartbeat_s * 2 >= self.matcher_lease_s:
            raise ValueError("MAKELOCAL_MATCHER_HEARTBEAT_S must be under half the lease")
        return self

    @property
    def durable(self) -> str:
        return f"{self.matcher_bucket}-p{self.matcher_partition}"

    @property
    def bucket(self) -> str:
        return f"{self.matcher_bucket}-p{self.matcher_partition}"
