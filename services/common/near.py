"""The `near=lat,lon&radius_km=` query of every API that filters by distance."""

from __future__ import annotations

from services.common.errors import ApiError


def parse_near(near: str | None, radius_km: float | None) -> tuple[float, float, float] | None:
    """`near=lat,lon` with `radius_km`, as every API that filters by distance takes them."""
    if near is None and radius_km is None:
        return None
    if near is None or radius_km is None:
        raise ApiError(422, "invalid", "near=lat,lon and radius_km go together",
                       "near" if near is None else "radius_km")
    try:
        lat_s, lon_s = near.split(",")
        lat, lon = float(lat_s), float(lon_s)
    except ValueError:
        raise ApiError(422, "invalid", "near must be 'lat,lon'", "near") from None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise ApiError(422, "range", "latitude must be in [-90, 90], longitude in [-180, 180]",
                       "near")
    return lat, lon, radius_km
