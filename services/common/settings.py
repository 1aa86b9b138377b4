"""Settings every service shares; each service extends them. Environment variables only."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from contracts.matches import MATCHES_DUPLICATE_WINDOW_S, MATCHES_MAX_BYTES


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MAKELOCAL_", extra="ignore")

    nats_url: str = "nats://127.0.0.1:4222"
    # this service's NATS user (makelocal.nats_auth says what each may do); unset: none
    nats_user: str | None = None
    nats_password: SecretStr | None = None  # a secret: never logged or shown
    database_url: str = "postgresql://postgres@127.0.0.1:5544/makelocal"
    host: str = "127.0.0.1"
    log_level: str = "INFO"
    max_body_bytes: int = 2 * 1024 * 1024
    # Writes per API key, per process: a sustained rate and a burst (429 past them)
    write_rate_per_s: float = 100.0
    write_burst: int = 1000
    # Failed API key verifications per client address per minute, per process (past it:
    # 429 with Retry-After, before the database is asked)
    auth_failures_per_min: int = 20
    # Design events are spread over this many matcher partitions by the REGISTRY stream's
    # subject transform; the registry and every matcher must agree on it.
    partitions: int = 1
    # MATCHES keeps a month of match changes and at most this many bytes (oldest dropped
    # first); the matcher and the notifier must agree on it
    matches_max_bytes: int = Field(MATCHES_MAX_BYTES, ge=1024 * 1024)
    # how long JetStream drops a repeated MATCHES piece by its id (tests shorten it)
    matches_duplicate_window_s: float = Field(MATCHES_DUPLICATE_WINDOW_S, gt=0)
