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
