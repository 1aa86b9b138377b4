"""Web page settings (MAKELOCAL_ environment variables)."""

from __future__ import annotations

from pydantic import Field, SecretStr

from services.common.settings import CommonSettings


class WebSettings(CommonSettings):
    web_port: int = 8000
    # the public APIs the page reads and writes through (it holds no state of its own)
    registry_url: str = "http://127.0.0.1:8001"
    # one matcher per partition, comma-separated: each holds its partition's designs only
    matcher_url: str = "http://127.0.0.1:8002"
    notifier_url: str = "http://127.0.0.1:8003"
    # the organization key the page creates makers' email alerts with (a secret: never
    # logged or shown); unset: the alert form says alerts are not available here
    web_api_key: SecretStr | None = None
    # how long the page keeps the list of all facilities (the map, names of matches)
    web_directory_s: float = Field(30.0, gt=0)
    # alert sign-ups per client address per hour: each sends a verification email, so the
    # form must not become a way to mail someone a thousand times
    web_signups_per_hour: int = Field(5, ge=1)
    # and per address mailed, a day, whoever asks
    web_signups_per_address_per_day: int = Field(3, ge=1)
    # every request to an API, bounded
    web_upstream_timeout_s: float = Field(5.0, gt=0)
    # addresses of the proxies whose X-Forwarded-For is believed (the sign-up limit is per
    # client address: behind an ingress, every person would otherwise share one)
    web_forwarded_allow_ips: str = "127.0.0.1"

    @property
    def matcher_urls(self) -> list[str]:
        return [u.strip() for u in self.matcher_url.split(",") if u.strip()]
