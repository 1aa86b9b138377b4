"""Distances and the one-degree grid that the matcher's facility index and the notifier's
region routing both file places under. Pure."""

from __future__ import annotations

import math

EARTH_RADIUS_KM = 6371.0088
CELL_DEG = 1.0
Cell = tuple[int, int]


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


def cell(lat: float, lon: float) -> Cell:
    """Longitude 180 is -180: one column, as reach() wraps them."""
    return math.floor(lat / CELL_DEG), ((math.floor(lon / CELL_DEG) + 180) % 360) - 180


def reach(lat: float, lon: float, radius_km: float) -> tuple[range, set[int] | None]:
    """The cell rows and columns a circle can touch; columns None when it spans every
    longitude (near a pole, or a radius of thousands of km)."""
    dlat = radius_km / 111.0
    coslat = max(math.cos(math.radians(lat)), 0.01)
    dlon = radius_km / (111.0 * coslat)
    rows = range(math.floor((lat - dlat) / CELL_DEG), math.floor((lat + dlat) / CELL_DEG) + 1)
    if dlon >= 180 or abs(lat) + dlat >= 90:  # over a pole: every longitude is near
        return rows, None
    columns = {((c + 180) % 360) - 180 for c in range(math.floor((lon - dlon) / CELL_DEG),
                                                      math.floor((lon + dlon) / CELL_DEG) + 1)}
    return rows, columns
