"""Lengths in any unit real manifests use, converted to millimetres. Pure."""

from __future__ import annotations

import math
import re

from contracts.errors import InvalidInput

MM_PER_UNIT = {
    "mm": 1.0,
    "millimeter": 1.0,
    "millimetre": 1.0,
    "millimeters": 1.0,
    "millimetres": 1.0,
    "cm": 10.0,
    "centimeter": 10.0,
    "centimetre": 10.0,
    "centimeters": 10.0,
    "centimetres": 10.0,
    "m": 1000.0,
    "meter": 1000.0,
    "metre": 1000.0,
    "meters": 1000.0,
    "metres": 1000.0,
    "in": 25.4,
    "inch": 25.4,
    "inches": 25.4,
    '"': 25.4,
    "''": 25.4,
    "ft": 304.8,
    "foot": 304.8,
    "feet": 304.8,
}
# Nothing made in a workshop is larger than this; beyond it the number is a typo.
MAX_MM = 1_000_000.0

_LENGTH = re.compile(r"^\s*([-+]?\d+(?:[.,]\d+)?)\s*([a-zA-Z\"']*)\s*$")


def to_mm(value: float, unit: str, *, field: str) -> float:
    """A length in `unit`, in millimetres; refuses unknown units and absurd numbers."""
    factor = MM_PER_UNIT.get(unit.strip().lower())
    if factor is None:
        raise InvalidInput(f"unknown length unit {unit!r}", field=field, code="unit")
    return checked_mm(float(value) * factor, field=field)


def checked_mm(mm: float, *, field: str) -> float:
    if not math.isfinite(mm) or mm <= 0 or mm > MAX_MM:
        raise InvalidInput(f"length {mm!r} mm is not a positive size", field=field, code="range")
    return round(mm, 3)


def parse_length(text: str, *, default_unit: str = "mm", field: str) -> float:
    """'220mm', '8.5 in', '12"', '30' (default unit) -> millimetres."""
    match = _LENGTH.match(text)
    if not match:
        raise InvalidInput(f"not a length: {text[:40]!r}", field=field, code="format")
    number, unit = match.groups()
    return to_mm(float(number.replace(",", ".")), unit or default_unit, field=field)
