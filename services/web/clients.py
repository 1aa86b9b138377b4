"""The public APIs the page is made from: the registry (designs, facilities), the matcher
(who can make what) and the notifier (email alerts). Over HTTP only; the page keeps no
state of its own but a short-lived copy of the facility list."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from pydantic import BaseModel

from services.web.answers import FacilityList, Matches, checked

log = logging.getLogger(__name__)


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


MAX_ANSWER_BYTES = 8 * 1024 * 1024  # past this, an answer is no page's to show


class Api:
    def __init__(self, name: str, base_url: str, timeout_s: float,
                 headers: dict[str, str] | None = None) -> None:
        self.name = name
        self.timeout_s = timeout_s
        self.http = httpx.AsyncClient(base_url=base_url, timeout=timeout_s,
                                      headers=headers or {}, follow_redirects=False)

    async def call(self, method: str, path: str, *, missing_ok: bool = False,
                   model: type[BaseModel] | None = None, **options: Any) -> Any:
        """The JSON answer (checked against `model`); None for a 404 when `missing_ok`;
        Refused for another 4xx; Unavailable for no answer within the timeout (the whole
        answer, not each read: a peer dripping bytes holds no page), a 5xx or 3xx, a body
        over MAX_ANSWER_BYTES, not JSON, or not of the model's shape."""
        status, body = await self.send(method, path, **options)
        if status == 404 and missing_ok:
            return None
        if 400 <= status < 500:
            error = _error(body)
            raise Refused(status, str(error.get("message") or "refused")[:500],
                          str(error["field"])[:100] if error.get("field") else None)
        if status >= 300:
            raise Unavailable(self.name, f"HTTP {status}")
        try:
            value = json.loads(body)
            return checked(model, value) if model is not None else value
        except ValueError:  # (pydantic's ValidationError is one)
            raise Unavailable(self.name, "answer not of the expected shape") from None

    async def send(self, method: str, path: str, **options: Any) -> tuple[int, bytes]:
        """(status, body), bounded in time and size; Unavailable if not."""
        try:
            async with asyncio.timeout(self.timeout_s):
                async with self.http.stream(method, path, **options) as response:
                    body = bytearray()
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > MAX_ANSWER_BYTES:
                            raise Unavailable(self.name, "answer too large")
                    return response.status_code, bytes(body)
        except TimeoutError:
            raise Unavailable(self.name, "no whole answer in time") from None
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise Unavailable(self.name, type(exc).__name__) from None

    async def close(self) -> None:
        await self.http.aclose()


def _error(body: bytes) -> dict[str, Any]:
    try:
        error = json.loads(body).get("error")
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
        limit = int(params.get("limit", 50))
        for answer in answers:  # no more rows than asked, whatever a matcher sends
            if answer is not None:
                answer["matches"] = answer["matches"][:limit]
                answer["near_misses"] = answer["near_misses"][:limit]
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
        answers = await asyncio.gather(*(m.call("GET", path, params=params, missing_ok=True,
                                                model=Matches)
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


MAX_PAGES = 5_000  # of 200 facilities: a million, far past any directory


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
            except Exception as exc:  # a task's failure would be lost: keep the old list
                log.warning("facility list not reloaded", extra={"error": str(exc)[:200]})
                self.loaded_at = time.monotonic()  # and try again a ttl later, not now

    async def _reload(self) -> None:
        self.facilities = await self._load()
        self.loaded_at = time.monotonic()

    async def _load(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        cursor: str | None = None
        seen: set[str] = set()
        for _ in range(MAX_PAGES):
            params: dict[str, Any] = {"limit": 200}
            if cursor:
                params["cursor"] = cursor
            page = await self.registry.call("GET", "/v1/facilities", params=params,
                                            model=FacilityList)
            for item in page["items"]:
                out[item["id"]] = summary(item["facility"])
            cursor = page.get("next_cursor")
            if not cursor:
                return out
            if cursor in seen:  # a registry repeating itself would hold us forever
                raise Unavailable(self.registry.name, "the facility list does not end")
            seen.add(cursor)
        raise Unavailable(self.registry.name, f"more than {MAX_PAGES * 200} facilities")


def summary(facility: dict[str, Any]) -> dict[str, Any]:
    """What a list or a map needs of a facility."""
    location = facility.get("location") or {}
    address = location.get("address") or {}
    return {"id": facility["id"], "name": facility["name"], "lat": location.get("lat"),
            "lon": location.get("lon"), "status": facility.get("status"),
            "city": address.get("city"), "country": address.get("country"),
            "processes": [t["label"] for t in facility.get("processes", [])
                          if not t.get("inferred")][:12]}
