"""Matcher settings (MAKELOCAL_ environment variables)."""

from __future__ import annotations

from pydantic import Field

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

    @property
    def durable(self) -> str:
        return f"{self.matcher_bucket}-p{self.matcher_partition}"

    @property
    def bucket(self) -> str:
        return f"{self.matcher_bucket}-p{self.matcher_partition}"
