"""The capability index: every design and facility profile, posting lists from process to
facilities offering it and to designs needing it, and a grid for radius queries. Pure.
Candidates come from the posting lists; only candidates are evaluated, never all pairs."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Iterator

from services.matcher.profiles import DesignProfile, FacilityProfile
from services.matcher.rules import (
    Evaluation,
    answering,
    can_design_match,
    can_make,
    evaluate,
)

EARTH_RADIUS_KM = 6371.0088
CELL_DEG = 1.0


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


class CapabilityIndex:
    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.designs: dict[str, DesignProfile] = {}
        self.facilities: dict[str, FacilityProfile] = {}
        self.versions: dict[tuple[str, str], int] = {}  # (kind, id) -> last applied version
        # need -> facilities answering it (offering it, a more specific or a more generic
        # process), and offer -> designs it answers: candidates are one lookup per need.
        self._answering: dict[str, set[str]] = defaultdict(set)
        self._answered: dict[str, set[str]] = defaultdict(set)
        self._cells: dict[tuple[int, int], set[str]] = defaultdict(set)

    # upkeep

    def put_design(self, profile: DesignProfile) -> None:
        self.remove_design(profile.id)
        self.designs[profile.id] = profile
        for key in _closure(n.id for n in profile.processes):
            self._answered[key].add(profile.id)

    def remove_design(self, design_id: str) -> None:
        old = self.designs.pop(design_id, None)
        if old is not None:
            for key in _closure(n.id for n in old.processes):
                _discard(self._answered, key, design_id)

    def put_facility(self, profile: FacilityProfile) -> None:
        self.remove_facility(profile.id)
        self.facilities[profile.id] = profile
        for key in _closure(profile.processes):
            self._answering[key].add(profile.id)
        if profile.lat is not None and profile.lon is not None:
            self._cells[_cell(profile.lat, profile.lon)].add(profile.id)

    def remove_facility(self, facility_id: str) -> None:
        old = self.facilities.pop(facility_id, None)
        if old is None:
            return
        for key in _closure(old.processes):
            _discard(self._answering, key, facility_id)
        if old.lat is not None and old.lon is not None:
            _discard(self._cells, _cell(old.lat, old.lon), facility_id)

    # candidates

    def facility_candidates(self, design: DesignProfile, *, slack: int = 0) -> set[str]:
        """Facilities answering every known process need (all but `slack` of them)."""
        needs = [n.id for n in design.processes if n.known]
        if not needs or not can_design_match(design):
            return set()
        empty: set[str] = set()
        sets = [self._answering.get(p, empty) for p in needs]
        if slack == 0:
            sets.sort(key=len)
            found = set(sets[0])
            for s in sets[1:]:
                found &= s
                if not found:
                    break
            return found
        counts: dict[str, int] = defaultdict(int)
        for s in sets:
            for fid in s:
                counts[fid] += 1
        return {fid for fid, c in counts.items() if c >= len(sets) - slack}

    def design_candidates(self, facility: FacilityProfile) -> set[str]:
        """Designs one of whose process needs this facility answers."""
        return self.designs_answered_by(facility.processes)

    def designs_answered_by(self, processes: Iterable[str]) -> set[str]:
        out: set[str] = set()
        for q in processes:
            out |= self._answered.get(q, set())
        return out

    def near(self, lat: float, lon: float, radius_km: float) -> Iterator[tuple[str, float]]:
        """(facility id, distance) within the radius, from the grid cells it can reach."""
        dlat = radius_km / 111.0
        coslat = max(math.cos(math.radians(lat)), 0.01)
        dlon = min(180.0, radius_km / (111.0 * coslat))
        lat_cells = range(math.floor((lat - dlat) / CELL_DEG), math.floor((lat + dlat) / CELL_DEG)
                          + 1)
        lon_cells = range(math.floor((lon - dlon) / CELL_DEG),
                          math.floor((lon + dlon) / CELL_DEG) + 1)
        seen_lon = {((c + 180) % 360) - 180 for c in lon_cells} if dlon < 180 else None
        for cell, ids in self._cells.items():
            if cell[0] not in lat_cells or (seen_lon is not None and cell[1] not in seen_lon):
                continue
            for fid in ids:
                f = self.facilities[fid]
                d = haversine_km(lat, lon, f.lat, f.lon)  # type: ignore[arg-type]
                if d <= radius_km:
                    yield fid, d

    # matches

    def matches_of_design(self, design: DesignProfile) -> set[str]:
        facilities = self.facilities
        return {fid for fid in self.facility_candidates(design)
                if can_make(design, facilities[fid])}

    def matches_of_facility(self, facility: FacilityProfile) -> set[str]:
        if not facility.active:
            return set()
        designs = self.designs
        return {did for did in self.design_candidates(facility)
                if can_make(designs[did], facility)}

    def explained_matches_of_facility(self, facility: FacilityProfile) -> dict[str, Evaluation]:
        return {did: evaluate(self.designs[did], facility)
                for did in self.matches_of_facility(facility)}

    def sizes(self) -> dict[str, int]:
        return {"designs": len(self.designs), "facilities": len(self.facilities),
                "process_postings": sum(len(s) for s in self._answering.values())
                + sum(len(s) for s in self._answered.values())}


def _closure(processes: Iterable[str]) -> set[str]:
    """Every process related to one of these (same, more specific, more generic)."""
    out: set[str] = set()
    for p in processes:
        out |= answering("process", p)
    return out


def _cell(lat: float, lon: float) -> tuple[int, int]:
    return math.floor(lat / CELL_DEG), math.floor(lon / CELL_DEG)


def _discard(postings: dict, key: object, value: str) -> None:
    members = postings.get(key)
    if members is not None:
        members.discard(value)
        if not members:
            del postings[key]


def all_pairs(designs: Iterable[DesignProfile],
              facilities: Iterable[FacilityProfile]) -> set[tuple[str, str]]:
    """Every matching pair by brute force: the reference the index is tested against."""
    facilities = list(facilities)
    return {(d.id, f.id) for d in designs for f in facilities if evaluate(d, f).matches}
