"""Notifier settings (MAKELOCAL_ environment variables)."""

from __future__ import annotations

from functools import cached_property

from pydantic import Field, SecretStr

from services.common.settings import CommonSettings
from services.notifier.addresses import Network, parse_networks
from services.notifier.schedule import DEFAULT_SCHEDULE, parse_schedule
from services.notifier.sealing import Keyring, parse_key, parse_keys
from services.notifier.store import Retention


class NotifierSettings(CommonSettings):
    notifier_port: int = 8003
    notifier_db_schema: str = "notifier"
    # API keys are the registry's: the notifier reads its key table, nothing else of it.
    notifier_keys_schema: str = "registry"
    notifier_public_url: str = "http://127.0.0.1:8003"  # where links in emails point
    # the web page for makers, if one runs: each match in an alert email links to the
    # design's page there (unset: no such link)
    notifier_pages_url: str | None = None
    notifier_durable: str = "notifier"
    notifier_stream_replicas: int = 1
    # seconds after each failed attempt, comma-separated (Svix's schedule by default)
    notifier_retry_schedule: str = ",".join(f"{s:g}" for s in DEFAULT_SCHEDULE)
    notifier_timeout_s: float = 15.0
    notifier_batch_max: int = 100
    # a partial webhook batch leaves when the subscription has fewer than `in_flight`
    # batches under way, or once its oldest match waited `max_wait`; full batches leave at
    # once. 1 is Nagle's rule (fewest calls); 2 lets a batch go while the one before is
    # answered: on 2 cores at 200 changes/s that took the p99 from 75-117 to 60-70 ms, for
    # about a fifth more calls when matches arrive spread out.
    notifier_batch_in_flight: int = Field(2, ge=1)
    notifier_batch_max_wait_s: float = 1.0
    notifier_email_linger_s: float = 5.0
    notifier_email_max_wait_s: float = 60.0
    # how long the "hourly" and "daily" digests gather (seconds; tests shorten them)
    notifier_digest_hourly_s: float = 3600.0
    notifier_digest_daily_s: float = 86400.0
    notifier_concurrency: int = 64
    # attempts one organization may have in flight in a process: a tenant whose receivers
    # answer slowly cannot hold every slot (see shares.py)
    notifier_slots_per_org: int = Field(32, ge=1)
    notifier_disable_after_s: float = 5 * 24 * 3600
    notifier_rotation_overlap_s: float = 24 * 3600
    # CIDRs webhooks may reach although they are not public (the local stack: loopback)
    notifier_allow_cidrs: str = ""
    # a PEM file of CAs trusted for https webhooks besides the system's (a private CA)
    notifier_ca_file: str | None = None
    notifier_sweep_s: float = 0.5
    # finished deliveries (with their attempt log) and parked messages are kept this long
    notifier_delivery_retention_s: float = Field(14 * 24 * 3600, gt=0)
    # gathered items' keys deduplicate MATCHES pairs: keep them while MATCHES may bring the
    # same pair again (it keeps messages 30 days)
    notifier_item_retention_s: float = Field(31 * 24 * 3600, gt=0)
    notifier_prune_every_s: float = Field(300.0, gt=0)
    # base64 of 32 random bytes: seals webhook secrets at rest (see sealing.py)
    notifier_secret_key: SecretStr | None = None
    # keys that sealed before a rotation, comma-separated: they still open (never seal)
    # until `makelocal notifier reseal` moved every secret to the current key
    notifier_old_secret_keys: SecretStr | None = None
    # how long past an attempt's timeout a claimed delivery stays with its process
    notifier_lease_margin_s: float = 10.0
    # subscriptions one organization may hold (disabled ones too): each costs routing
    # work on every match and a place in every notifier's memory
    notifier_max_subscriptions_per_org: int = Field(1000, ge=1)
    # the routing index is reloaded on every change to subscriptions, and in full this
    # often besides, for changes no trigger saw (a restore with triggers off)
    notifier_reload_s: float = Field(30.0, gt=0)
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 8025
    smtp_starttls: bool = False
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_from: str = "makelocal <alerts@makelocal.localhost>"
    smtp_timeout_s: float = 15.0
    # how long an address the mail server said does not exist gets no mail (its
    # subscription's owner can lift it sooner); then one more try tells again
    notifier_suppression_days: float = Field(30.0, gt=0)

    @cached_property
    def retention(self) -> Retention:
        return Retention(self.notifier_delivery_retention_s, self.notifier_item_retention_s)

    @cached_property
    def schedule(self) -> tuple[float, ...]:
        return parse_schedule(self.notifier_retry_schedule)

    @cached_property
    def sealing_key(self) -> bytes | None:
        key = self.notifier_secret_key
        return parse_key(key.get_secret_value()) if key else None

    @cached_property
    def keyring(self) -> Keyring:
        """Seals with the current key; opens with it or an old one, by the value's key id."""
        old = self.notifier_old_secret_keys
        return Keyring(self.sealing_key, parse_keys(old.get_secret_value()) if old else ())

    @cached_property
    def allowed_networks(self) -> tuple[Network, ...]:
        return parse_networks(self.notifier_allow_cidrs)
