"""Small, tolerant field readers shared by the OKH and OKW readers."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from contracts import vocabulary
from contracts.errors import InvalidInput
from contracts.models import Box, Term
from contracts.units import parse_length, to_mm

MAX_LIST = 1000
MAX_TEXT = 20_000


def snake(key: str) -> str:
    """'Facility status', 'facilityStatus', 'facility-status' -> 'facility_status'."""
    key = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", key.strip())
    return re.sub(r"[\s\-]+", "_", key).lower()


def text(value: Any, field: str, *, required: bool = False) -> str | None:
    """A string field; numbers are accepted as their text, structures are not."""
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise InvalidInput("is required", field=field, code="missing")
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise InvalidInput(f"must be text, not {type(value).__name__}", field=field, code="type")
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidInput("must be text", field=field, code="type")
    out = str(value).strip()
    if len(out) > MAX_TEXT:
        raise InvalidInput(f"longer than {MAX_TEXT} characters", field=field, code="too_long")
    return out


def text_list(value: Any, field: str) -> list[str]:
    """A list of strings; a single string is a list of one; commas are not split here."""
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    if len(items) > MAX_LIST:
        raise InvalidInput(f"more than {MAX_LIST} items", field=field, code="too_long")
    out = []
    for i, item in enumerate(items):
        if isinstance(item, dict):
            # OKH v1 file entries {path, title}; OKW entries {name}
            item = item.get("path") or item.get("title") or item.get("name")
        value_text = text(item, f"{field}[{i}]")
        if value_text:
            out.append(value_text)
    return out


def terms(
    kind: vocabulary.TermKind,
    names: Iterable[str],
    *,
    source: str,
    warnings: list[str],
    inferred: bool = False,
) -> list[Term]:
    """Resolve names to vocabulary terms; unknown ones are kept, flagged and warned about."""
    vocab = vocabulary.vocabulary(kind)
    out: list[Term] = []
    for name in names:
        entry = vocab.resolve(name)
        if entry is not None:
            out.append(Term(id=entry.id, label=entry.label, inferred=inferred, source=source))
        else:
            warnings.append(f"unknown {kind} {name!r} ({source}) kept as given")
            out.append(
                Term(
                    id=vocabulary.normalise(name)[:200],
                    label=name[:200],
                    known=False,
                    inferred=inferred,
                    source=source,
                )
            )
    return out


def most_specific(kind: vocabulary.TermKind, found: Iterable[Term]) -> list[Term]:
    """Deduplicate, dropping a term when a more specific one of it is also present
    (a part needing FDM needs 3D printing; saying both adds nothing)."""
    vocab = vocabulary.vocabulary(kind)
    unique: dict[str, Term] = {}
    for term in found:
        current = unique.get(term.id)
        if current is None or (current.inferred and not term.inferred):
            unique[term.id] = term
    ids = set(unique)
    return [t for t in unique.values() if not t.known or not (vocab.descendants(t.id) & ids)]


_CUBE = re.compile(r"cube\s*\(\s*(?:size\s*=\s*)?\[([^\]]*)\]", re.I)
_CUBE_SCALAR = re.compile(r"cube\s*\(\s*(?:size\s*=\s*)?([\d.]+)", re.I)
_NAMED = re.compile(r"\b(h|r|d|r1|r2|d1|d2)\s*=\s*([\d.]+)", re.I)


def openscad_box(expr: str, unit: str, field: str) -> Box:
    """The bounding box of an OpenSCAD primitive: cube, cylinder or sphere."""
    low = expr.strip().lower()
    if m := _CUBE.search(low):
        sides = [s for s in m.group(1).split(",") if s.strip()]
        if len(sides) != 3:
            raise InvalidInput(f"cube needs 3 sides: {expr[:60]!r}", field=field, code="format")
        x, y, z = (_number(s, field) for s in sides)
        return _box(x, y, z, unit, field)
    if m := _CUBE_SCALAR.search(low):
        side = _number(m.group(1), field)
        return _box(side, side, side, unit, field)
    named = {k.lower(): _number(v, field) for k, v in _NAMED.findall(low)}
    radius = max(
        [named[k] for k in ("r", "r1", "r2") if k in named]
        + [named[k] / 2 for k in ("d", "d1", "d2") if k in named],
        default=None,
    )
    if low.startswith("cylinder") and radius is not None and "h" in named:
        return _box(2 * radius, 2 * radius, named["h"], unit, field)
    if low.startswith("sphere") and radius is not None:
        return _box(2 * radius, 2 * radius, 2 * radius, unit, field)
    raise InvalidInput(f"unsupported shape {expr[:60]!r}", field=field, code="format")


def box_from_text(value: str, field: str, *, default_unit: str = "mm") -> Box:
    """'200 x 270 x 200 mm', '300x200 mm', '12in x 8in' -> a box (z may be unknown)."""
    unit_match = re.search(r"(mm|cm|m|in|inch|inches|\")\s*$", value.strip(), re.I)
    unit = unit_match.group(1) if unit_match else default_unit
    pieces = [p for p in re.split(r"\s*[x\u00d7*]\s*", value.strip(), flags=re.I) if p.strip()]
    if not 2 <= len(pieces) <= 3:
        raise InvalidInput(f"not a size: {value[:60]!r}", field=field, code="format")
    sides = [parse_length(p, default_unit=unit, field=field) for p in pieces]
    return Box(x_mm=sides[0], y_mm=sides[1], z_mm=sides[2] if len(sides) == 3 else None)


def length(value: Any, field: str, *, unit: str = "mm") -> float | None:
    """A length that may be a number (in `unit`) or a string with its own unit."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "n/a")):
        return None
    if isinstance(value, bool):
        raise InvalidInput("must be a length", field=field, code="type")
    if isinstance(value, int | float):
        return to_mm(value, unit, field=field)
    if isinstance(value, str):
        return parse_length(value, default_unit=unit, field=field)
    raise InvalidInput(f"must be a length, not {type(value).__name__}", field=field, code="type")


def _number(s: str, field: str) -> float:
    try:
        value = float(s.strip())
    except ValueError:
        raise InvalidInput(f"not a number: {s[:20]!r}", field=field, code="format") from None
    return value


def _box(x: float, y: float, z: float, unit: str, field: str) -> Box:
    return Box(
        x_mm=to_mm(x, unit, field=field),
        y_mm=to_mm(y, unit, field=field),
        z_mm=to_mm(z, unit, field=field),
    )


M = TypeVar("M", bound=BaseModel)


def build(model: type[M], **fields: Any) -> M:
    """A model from fields already read; a constraint it breaks (an id pattern, a range)
    becomes our InvalidInput naming the field."""
    try:
        return model(**fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or None
        raise InvalidInput(str(first.get("msg", "invalid")), field=where) from None
