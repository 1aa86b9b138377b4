"""What a subscription asks for, and which subscriptions an event concerns. Pure.

The routing index answers "who wants this event?" from a few dictionary lookups (by
facility id, design id, process, region cell), then checks only those candidates'
whole filters: the number of subscriptions does not enter the cost of an event."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, EmailStr, Field, field_validator

from contracts import matches, vocabulary
from contracts.geo import cell, haversine_km, reach
from contracts.matches import MATCH_EVENT_TYPES, MatchEventType, PairView
from contracts.models import EntityId
from services.notifier.addresses import Refused, normalised_url

Digest = Literal["immediate", "hourly", "daily"]
MAX_REGION_CELLS = 400  # wider regions are checked on every event instead of by cell


class Region(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    radius_km: float = Field(gt=0, le=20_100)


class Filter(BaseModel):
    """Every stated field must hold (and); within a list, any member (or). Processes
    include their more specific kinds: "3d-printing" takes designs needing FDM."""

    model_config = ConfigDict(extra="forbid")

    facility_ids: list[EntityId] = Field(default_factory=list, max_length=1000)
    design_ids: list[EntityId] = Field(default_factory=list, max_length=1000)
    processes: list[str] = Field(default_factory=list, max_length=100)
    region: Region | None = None
    event_types: list[MatchEventType] = Field(
        default_factory=lambda: list(MATCH_EVENT_TYPES), min_length=1, max_length=2)

    @field_validator("processes")
    @classmethod
    def _known_processes(cls, value: list[str]) -> list[str]:
        vocab = vocabulary.processes()
        out = []
        for name in value:
            entry = vocab.resolve(name)
            if entry is None:
                raise ValueError(f"unknown process {name!r}")
            out.append(entry.id)
        return sorted(set(out))


def _storable_url(url: str) -> str:
    # Control characters have no place in a URL; NUL and unpaired surrogates would not
    # even reach the database (PostgreSQL text, UTF-8).
    if any(ord(c) < 0x20 or ord(c) == 0x7F or 0xD800 <= ord(c) <= 0xDFFF for c in url):
        raise ValueError("a URL may not hold control characters or unpaired surrogates")
    try:
        # stored as it goes on the wire (IDNA host, percent-encoded path): what is
        # accepted here is what every attempt sends
        return normalised_url(url)
    except Refused:
        return url  # the guard's check at the route says why, as url_refused


WebhookUrl = Annotated[str, Field(min_length=1, max_length=2048), AfterValidator(_storable_url)]


class _Common(BaseModel):
    model_config = ConfigDict(extra="forbid")

    filter: Filter = Field(default_factory=Filter)


class WebhookSubscriptionIn(_Common):
    channel: Literal["webhook"]
    url: WebhookUrl
    contact_email: EmailStr | None = Field(
        None, description="told when the subscription is disabled for failing")


class EmailSubscriptionIn(_Common):
    channel: Literal["email"]
    address: EmailStr
    digest: Digest = "immediate"


class SubscriptionPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    filter: Filter | None = None
    url: WebhookUrl | None = None
    digest: Digest | None = None
    enabled: bool | None = Field(None, description="true re-enables a disabled subscription")
    contact_email: EmailStr | None = None


@dataclass(frozen=True)
class Route:
    """What routing keeps of a subscription: its id and its filter, pre-expanded."""

    id: str
    facility_ids: frozenset[str]
    design_ids: frozenset[str]
    processes: frozenset[str]  # with their more specific kinds
    region: Region | None
    event_types: frozenset[str]

    @classmethod
    def of(cls, subscription_id: str, f: Filter | Mapping[str, Any]) -> Route:
        f = f if isinstance(f, Filter) else Filter.model_validate(f)
        vocab = vocabulary.processes()
        processes: set[str] = set()
        for p in f.processes:
            processes |= vocab.with_descendants(p)
        return cls(subscription_id, frozenset(f.facility_ids), frozenset(f.design_ids),
                   frozenset(processes), f.region, frozenset(f.event_types))

    def wants(self, pair: PairView) -> bool:
        if pair.type not in self.event_types:
            return False
        if self.facility_ids and pair.facility_id not in self.facility_ids:
            return False
        if self.design_ids and pair.design_id not in self.design_ids:
            return False
        if self.processes and self.processes.isdisjoint(pair.design_processes):
            return False
        if self.region is not None:
            lat, lon = pair.facility_lat, pair.facility_lon
            if lat is None or lon is None:
                return False
            r = self.region
            return haversine_km(r.lat, r.lon, lat, lon) <= r.radius_km
        return True


class RoutingIndex:
    """Subscriptions by the most selective thing their filter names."""

    def __init__(self, routes: Iterable[Route] = ()) -> None:
        self._by: dict[tuple[str, Any], set[str]] = defaultdict(set)
        self._routes: dict[str, Route] = {}
        for route in routes:
            self.add(route)

    def __len__(self) -> int:
        return len(self._routes)

    def add(self, route: Route) -> None:
        self.discard(route.id)
        self._routes[route.id] = route
        for key in _anchors(route):
            self._by[key].add(route.id)

    def discard(self, subscription_id: str) -> None:
        route = self._routes.pop(subscription_id, None)
        if route is None:
            return
        for key in _anchors(route):
            ids = self._by.get(key)
            if ids is not None:
                ids.discard(subscription_id)
                if not ids:
                    del self._by[key]

    def route(self, pair: PairView) -> list[str]:
        """The subscriptions that want this pair."""
        return self.route_all([pair])[0]

    def route_change(self, change: Mapping[str, Any]) -> list[tuple[int, PairView, list[str]]]:
        """(number, pair, subscriptions) of each pair of a decoded change that some
        subscription wants. When nothing is filed under what the pairs share (the changed
        design, its processes; the changed facility, its cell), a pair is looked at only if
        something is filed under its own counterpart: most pairs of a fan-out (labs nobody
        watches) are never made into PairViews."""
        by = self._by
        design, facility = change.get("design"), change.get("facility")
        if design is not None:
            shared = [("design", design["id"]), *(("process", p)
                                                 for p in design["processes"])]
        else:
            shared = [("facility", facility["id"])]  # type: ignore[index]
            if facility.get("lat") is not None and facility.get("lon") is not None:  # type: ignore[union-attr]
                shared.append(("cell", cell(facility["lat"], facility["lon"])))  # type: ignore[index]
        rows = [*(change.get("found") or ()), *(change.get("withdrawn") or ())]
        if ("all", None) in by or any(key in by for key in shared):
            numbers: Sequence[int] = range(len(rows))
        elif design is not None:  # the pair's lab or its cell
            numbers = [n for n, row in enumerate(rows) if ("facility", row["id"]) in by or (
                row.get("lat") is not None and row.get("lon") is not None
                and ("cell", cell(row["lat"], row["lon"])) in by)]
        else:  # the pair's design or one of its processes
            watched = [any(("process", p) in by for p in processes)
                       for processes in change.get("process_sets") or ()]
            numbers = [n for n, row in enumerate(rows)
                       if ("design", row["id"]) in by or watched[row["p"]]]
        pairs = [matches.pair_at(change, n) for n in numbers]
        return [(n, pair, wanted) for n, pair, wanted
                in zip(numbers, pairs, self.route_all(pairs), strict=True) if wanted]

    def route_all(self, pairs: Sequence[PairView]) -> list[list[str]]:
        """For each pair of a change, the subscriptions that want it. The pairs of one
        change share one side (its design, or its facility and place): what is filed under
        its keys is looked up once, and most pairs (a lab nobody watches) cost two
        lookups."""
        by, routes = self._by, self._routes
        everyone = by.get(("all", None), _NONE)
        by_processes: dict[int, tuple[Sequence[str], frozenset[str]]] = {}
        by_cell: dict[tuple[float, float], frozenset[str] | set[str]] = {}
        shared: dict[tuple[str, str], frozenset[str] | set[str]] = {}
        out: list[list[str]] = []
        for pair in pairs:
            found = []
            for key in (("facility", pair.facility_id), ("design", pair.design_id)):
                ids = shared.get(key)
                if ids is None:
                    ids = shared[key] = by.get(key, _NONE)
                if ids:
                    found.append(ids)
            # a process list is one object for all the pairs that share it
            memo = by_processes.get(id(pair.design_processes))
            if memo is None:
                union = frozenset().union(*(by.get(("process", p), _NONE)
                                            for p in pair.design_processes))
                memo = by_processes[id(pair.design_processes)] = (pair.design_processes,
                                                                  union)
            if memo[1]:
                found.append(memo[1])
            lat, lon = pair.facility_lat, pair.facility_lon
            if lat is not None and lon is not None:
                ids = by_cell.get((lat, lon))
                if ids is None:
                    ids = by_cell[(lat, lon)] = by.get(("cell", cell(lat, lon)), _NONE)
                if ids:
                    found.append(ids)
            if everyone:
                found.append(everyone)
            if not found:
                out.append([])
                continue
            candidates = found[0] if len(found) == 1 else set().union(*found)
            out.append(sorted(s for s in candidates if routes[s].wants(pair)))
        return out


_NONE: frozenset[str] = frozenset()


def _anchors(route: Route) -> list[tuple[str, Any]]:
    """Where the index files a route: under one field its filter requires, the most
    selective stated; a subscription with no filter hears everything."""
    if route.facility_ids:
        return [("facility", f) for f in route.facility_ids]
    if route.design_ids:
        return [("design", d) for d in route.design_ids]
    if route.region is not None:
        rows, columns = reach(route.region.lat, route.region.lon, route.region.radius_km)
        if columns is not None and len(rows) * len(columns) <= MAX_REGION_CELLS:
            return [("cell", (r, c)) for r in rows for c in columns]
    if route.processes:
        return [("process", p) for p in route.processes]
    return [("all", None)]

