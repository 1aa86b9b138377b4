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
class Matchers:
    """The matcher of every partition. A design is held by one of them (which, the
    registry stream's hash says; asking all costs one round trip); what a facility can
    make is the union of all of theirs."""

    partitions: list[Api]

    async def facilities_for(self, design_id: str, params: dict[str, Any]) -> Any:
        """The answer of the partition holding the design; one partition away does not
        matter when another holds it."""
        answers = await self._ask(f"/v1/designs/{design_id}/facilities", params)
        return next((a for a in answers if a is not None), None)

    async def designs_for(self, facility_id: str, limit: int) -> dict[str, Any] | None:
        """Every partition's designs for the facility, best first: all must answer (a
        partition away would silently drop its share)."""
        answers = await self._ask(f"/v1/facilities/{facility_id}/designs", {"limit": limit},
                                  every=True)
        found = [a for a in answers if a is not None]
        if not found:
            return None
        rows = sorted((r for a in found for r in a["matches"]), key=lambda r: -r["score"])
        return {"facility": facility_id, "matches": rows[:limit]}

    async def _ask(self, path: str, params: dict[str, Any], *, every: bool = False,
                   ) -> list[Any]:
        answers = await asyncio.gather(*(m.call("GET", path, params=params, missing_ok=True)
                                         for m in self.partitions), return_exceptions=True)
        failed = [a for a in answers if isinstance(a, BaseException)]
        for failure in failed:
            if not isinstance(failure, Unavailable | Refused):
                raise failure
        if failed and (every or all(a is None or isinstance(a, BaseException)
                                    for a in answers)):
            raise failed[0]
        return [a for a in answers if not isinstance(a, BaseException)]

    async def close(self) -> None:
        for matcher in self.partitions:
            await matcher.close()


@dataclass
class Directory:
    """Every facility's id, name, place and processes, read page by page from the registry
    and kept `ttl_s` seconds: the map shows them all and match lists name them."""

    registry: Api
    ttl_s: float
    facilities: dict[str, dict[str, Any]] = field(default_factory=dict)
    loaded_at: float = float("-inf")
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _refresh: asyncio.Task[None] | None = None  # held so the task is not collected

    async def all(self) -> dict[str, dict[str, Any]]:
        """The list; once stale, the old one is served while one reload runs behind (a
        reload reads every page of the registry: no person should wait for it)."""
        if self.loaded_at == float("-inf"):
            async with self._lock:  # the very first load: nothing to serve meanwhile
                if self.loaded_at == float("-inf"):
                    await self._reload()
        elif time.monotonic() - self.loaded_at >= self.ttl_s and not self._lock.locked():
            self._refresh = asyncio.create_task(self._reload_locked())
        return self.facilities

    async def _reload_locked(self) -> None:
        async with self._lock:
            try:
                await self._reload()
            except Unavailable:
                self.loaded_at = time.monotonic()  # keep serving the old list; try later

    async def _reload(self) -> None:
        self.facilities = await self._load()
        self.loaded_at = time.monotonic()

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
