"""Registry settings (MAKELOCAL_ environment variables)."""

from __future__ import annotations

from services.common.settings import CommonSettings


class RegistrySettings(CommonSettings):
    registry_port: int = 8001
    registry_workers: int = 1
    registry_db_schema: str = "registry"
    registry_relay: bool = True
    registry_relay_batch: int = 256
    registry_relay_sweep_s: float = 1.0
    registry_stream_replicas: int = 1
    registry_db_pool_size: int = 20
    # Documents are read in child processes (per worker process), each read bounded in CPU
    # seconds, wall seconds and memory above the child's own (past them: 422 or 413)
    registry_readers: int = 2
    registry_reader_cpu_s: int = 5
    registry_reader_timeout_s: float = 10.0
    registry_reader_memory_mb: int = 512
    # a body must arrive within this (a client trickling it holds a connection no longer)
    registry_body_timeout_s: float = 30.0
    # writes under way at once per API key (reading bodies, parsing, storing)
    registry_writes_in_flight_per_key: int = 16
    # A verified API key is trusted this long without asking the database again (a write
    # still checks it in its own transaction)
    registry_auth_cache_s: float = 15.0
    # REGISTRY events at most this large (a larger document is refused with 413); unset:
    # the NATS server's max_payload less 1 KiB for headers
    registry_max_event_bytes: int | None = None
    # The relay leader's lease: a leader silent (frozen, cut off) this long loses the lock
    registry_relay_lease_s: float = 15.0
    # Published outbox rows are deleted after this long
    registry_outbox_retention_s: float = 86400.0
    # The relay leader is not ready when an unpublished event waited this long
    registry_outbox_stale_s: float = 60.0
