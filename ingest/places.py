"""Small pieces the source readers share: clean text cells, coordinates checked before
they are stored, link lists. Pure."""

from __future__ import annotations

from typing import Any


def cell(value: Any) -> str | None:
    """A cell or JSON value as trimmed text; None for empty and the "None"/"nan" that
    pandas exports write for missing values."""
    if value is None or isinstance(value, bool):
        return None
    out = str(value).strip()
    return None if out.lower() in ("", "none", "nan", "null") else out


def gps(lat: Any, lon: Any, warnings: list[str]) -> str | None:
    """"lat, lon" for location.gps_coordinates, or None with a warning: one bad pair
    (swapped, out of range, text) must not cost the facility, only its place on the
    map."""
    la, lo = cell(lat), cell(lon)
    if la is None or lo is None:
        warnings.append("no coordinates: not found by distance queries")
        return None
    try:
        fla, flo = float(la), float(lo)
    except ValueError:
        warnings.append(f"coordinates not numbers ({la[:30]!r}, {lo[:30]!r}); left out")
        return None
    if not (-90 <= fla <= 90 and -180 <= flo <= 180) or fla != fla or flo != flo:
        warnings.append(f"coordinates out of range ({la[:30]}, {lo[:30]}); left out")
        return None
    return f"{fla}, {flo}"


def urls(value: Any) -> list[str]:
    """Links given as URLs, {"url": ...} objects (fablabs.io) or one URL string."""
    items = value if isinstance(value, list) else [value]
    out = []
    for item in items:
        url = item.get("url") if isinstance(item, dict) else item
        if isinstance(url, str) and url.strip().lower().startswith(("http://", "https://")):
            out.append(url.strip())
    return out


def compact(value: Any) -> Any:
    """A document without empty values, so absent data stays absent (not "" or null)."""
    if isinstance(value, dict):
        kept = {k: compact(v) for k, v in value.items()}
        return {k: v for k, v in kept.items() if v not in (None, "", [], {})}
    if isinstance(value, list):
        return [compact(v) for v in value if v not in (None, "", [], {})]
    return value

