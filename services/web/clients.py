"""The public APIs the page is made from: the registry (designs, facilities), the matcher
(who can make what) and the notifier (email alerts). Over HTTP only; the page keeps no
state of its own but a short-lived copy of the facility list."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import httpx


class Unavailable(Exception):
    """An API did not answer usably: the page says so (503), never a traceback."""

    def __init__(self, service: str, detail: str) -> None:
        super().__init__(f"{service}: {detail}")
        self.service = service


class Refused(Exception):
    """An API refused what the page sent on a person's behalf: its error, to show them."""

    def __init__(self, status: int, message: str, field: str | None) -> None:
        super().__init__(message)
        self.status, self.message, self.field = status, message, field


class Api:
    def __init__(self, name: str, base_url: str, timeout_s: float,
                 headers: dict[str, str] | None = None) -> None:
        self.name = name
        self.http = httpx.AsyncClient(base_url=base_url, timeout=timeout_s,
                                      headers=headers or {}, follow_redirects=False)

    async def call(self, method: str, path: str, *, missing_ok: bool = False,
                   **options: Any) -> Any:
        """The JSON answer; None for a 404 when `missing_ok`; Refused for another 4xx;
        Unavailable for no answer, a 5xx or a body that is not JSON."""
        try:
            response = await self.http.request(method, path, **options)
        except httpx.HTTPError as exc:
            raise Unavailable(self.name, type(exc).__name__) from None
        if response.status_code == 404 and missing_ok:
            return None
        if 400 <= response.status_code < 500:
            error = _error(response)
            raise Refused(response.status_code, error.get("message") or "refused",
                          error.get("field"))
        if response.status_code >= 300:
            raise Unavailable(self.name, f"HTTP {response.status_code}")
        try:
            return response.json()
        except ValueError:
            raise Unavailable(self.name, "answer is not JSON") from None

    async def close(self) -> None:
        await self.http.aclose()


def _error(response: httpx.Response) -> dict[str, Any]:
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        return {}
    return error if isinstance(error, dict) else {}


@dataclass
class Directory:
    """Every facility's id, name, place and processes, read page by page from the registry
    and kept `ttl_s` seconds: the map shows them all and match lists name them."""

    registry: Api
    ttl_s: float
    facilities: dict[str, dict[str, Any]] = field(default_factory=dict)
    loaded_at: float = float("-inf")
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def all(self) -> dict[str, dict[str, Any]]:
        if time.monotonic() - self.loaded_at < self.ttl_s:
            return self.facilities
        async with self._lock:  # one reload at a time; the others take its result
            if time.monotonic() - self.loaded_at >= self.ttl_s:
                self.facilities = await self._load()
                self.loaded_at = time.monotonic()
        return self.facilities

    async def _load(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": 200}
            if cursor:
                params["cursor"] = cursor
            page = await self.registry.call("GET", "/v1/facilities", params=params)
            for item in page["items"]:
                out[item["id"]] = summary(item["facility"])
            cursor = page.get("next_cursor")
            if not cursor:
                return out


def summary(facility: dict[str, Any]) -> dict[str, Any]:
    """What a list or a map needs of a facility."""
    location = facility.get("location") or {}
    address = location.get("address") or {}
    return {"id": facility["id"], "name": facility["name"], "lat": location.get("lat"),
            "lon": location.get("lon"), "status": facility.get("status"),
            "city": address.get("city"), "country": address.get("country"),
            "processes": [t["label"] for t in facility.get("processes", [])
                          if not t.get("inferred")][:12]}
