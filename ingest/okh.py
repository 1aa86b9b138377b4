"""OKH manifests (OKH-LOSH TOML and OKH v1 YAML, or either as JSON) -> Design."""

from __future__ import annotations

from typing import Any

from contracts.errors import InvalidInput
from contracts.events import EntityKind
from contracts.models import Box, Design, Part, Term
from ingest import inference
from ingest.fields import (
    box_from_text,
    build,
    most_specific,
    openscad_box,
    terms,
    text,
    text_list,
)
from ingest.identity import document_id

MAX_PARTS = 2000

LOSH_KNOWN = {
    "okhv",
    "name",
    "function",
    "description",
    "image",
    "version",
    "repo",
    "release",
    "license",
    "licensor",
    "organization",
    "readme",
    "user-manual",
    "manufacturing-instructions",
    "contribution-guide",
    "documentation-language",
    "technology-readiness-level",
    "documentation-readiness-level",
    "bom",
    "source",
    "export",
    "tsdc",
    "part",
    "outer-dimensions",
    "outer-dimension",
    "outer-dimension-dim",
    "material",
    "printing-process",
    "software",
    "id",
    "keywords",
    "cpc-patent-class",
}
V1_KNOWN = {
    "title",
    "description",
    "intended-use",
    "keywords",
    "project-link",
    "image",
    "made",
    "made-independently",
    "license",
    "licensor",
    "okh-manifest-version",
    "date-created",
    "date-updated",
    "manifest-author",
    "manifest-language",
    "contact",
    "contributors",
    "version",
    "development-stage",
    "documentation-home",
    "archive-download",
    "documentation-language",
    "bom",
    "making-instructions",
    "manufacturing-files",
    "operating-instructions",
    "design-files",
    "tool-list",
    "materials",
    "manufacturing-processes",
    "id",
    "health-safety-notice",
    "standards-used",
    "variant-of",
    "user-manual",
    "schematics",
    "software",
}
LINK_KEYS = (
    "repo",
    "release",
    "readme",
    "user-manual",
    "manufacturing-instructions",
    "bom",
    "image",
    "project-link",
    "documentation-home",
    "archive-download",
    "contribution-guide",
)


def read_design(doc: dict[str, Any], *, design_id: str | None = None) -> Design:
    """A Design from an OKH manifest of either generation."""
    doc = _unprefixed(doc)
    okhv = doc.get("okhv")
    if isinstance(okhv, str) and okhv.upper().startswith("OKH-LOSH"):
        return _read_losh(doc, design_id)
    if "title" in doc or "okh-manifest-version" in doc:
        return _read_v1(doc, design_id)
    if "name" in doc:
        return _read_losh(doc, design_id)
    raise InvalidInput(
        "not an OKH manifest: expected `okhv` and `name` (OKH-LOSH) or `title` (OKH v1)",
        field="title",
        code="missing",
    )


def _unprefixed(doc: dict[str, Any]) -> dict[str, Any]:
    """Keys written with a namespace ("okh:manifest-version", as some RDF-minded manifests
    do) read as the plain ones; a plain key given too wins."""
    if not any(isinstance(k, str) and k.startswith("okh:") for k in doc):
        return doc
    out: dict[str, Any] = {}
    for key, value in doc.items():
        if isinstance(key, str) and key.startswith("okh:"):
            plain = key[4:]
            out.setdefault("okh-manifest-version" if plain == "manifest-version" else plain,
                           value)
        else:
            out[key] = value
    return out


def _read_losh(doc: dict[str, Any], design_id: str | None) -> Design:
    warnings: list[str] = []
    name = text(doc.get("name"), "name", required=True)
    tsdc_key = "tsdc" if "tsdc" in doc or "tsdc-id" not in doc else "tsdc-id"
    design_processes = terms(
        "process", _codes(doc.get(tsdc_key), tsdc_key), source=tsdc_key, warnings=warnings
    )
    design_processes += terms(
        "process",
        text_list(doc.get("printing-process"), "printing-process"),
        source="printing-process",
        warnings=warnings,
    )
    design_materials = terms(
        "material", text_list(doc.get("material"), "material"), source="material", warnings=warnings
    )
    raw_parts = doc.get("part") or []
    if isinstance(raw_parts, dict):
        raw_parts = [raw_parts]
    if not isinstance(raw_parts, list):
        raise InvalidInput("must be a list of parts", field="part", code="type")
    if len(raw_parts) > MAX_PARTS:
        raise InvalidInput(f"more than {MAX_PARTS} parts", field="part", code="too_long")
    parts = [_losh_part(p, f"part[{i}]", warnings) for i, p in enumerate(raw_parts)]
    if not design_processes and not any(p.processes for p in parts):
        guess = inference.infer(_sources(doc, LOSH_SOURCES))
        design_processes, parts = guess.processes, parts + guess.parts
        if not design_materials:
            design_materials = guess.materials
        _explain(guess.processes, "tsdc", warnings)
    return _design(
        doc,
        design_id,
        name=name,
        okh_format=f"OKH-LOSH ({doc.get('okhv', '?')})",
        description=text(doc.get("function") or doc.get("description"), "function"),
        processes=design_processes,
        materials=design_materials,
        parts=parts,
        outer=_outer(doc, "", warnings),
        known=LOSH_KNOWN,
        warnings=warnings,
    )


def _losh_part(raw: Any, field: str, warnings: list[str]) -> Part:
    if not isinstance(raw, dict):
        raise InvalidInput("must be a table", field=field, code="type")
    name = text(raw.get("name"), f"{field}.name") or "unnamed part"
    processes = terms(
        "process",
        _codes(raw.get("tsdc"), f"{field}.tsdc"),
        source=f"{field}.tsdc",
        warnings=warnings,
    )
    processes += terms(
        "process",
        text_list(raw.get("printing-process"), f"{field}.printing-process"),
        source=f"{field}.printing-process",
        warnings=warnings,
    )
    if not processes:
        processes = inference.infer(_sources(raw, PART_SOURCES, prefix=f"{field}.")).processes
    materials = terms(
        "material",
        text_list(raw.get("material"), f"{field}.material"),
        source=f"{field}.material",
        warnings=warnings,
    )
    try:
        return build(Part, name=name, processes=most_specific("process", processes),
                     materials=most_specific("material", materials),
                     outer_dimensions=_outer(raw, field, warnings))
    except InvalidInput as exc:  # its field, within the manifest
        raise InvalidInput(exc.message, field=f"{field}.{exc.field}" if exc.field else field,
                           code=exc.code) from None


def _read_v1(doc: dict[str, Any], design_id: str | None) -> Design:
    warnings: list[str] = []
    if doc.get("title") is None and doc.get("name") is not None:
        # OKH v1 says `title`; a manifest saying `name` means the same
        warnings.append("`title` is missing; `name` is read as the title")
        name = text(doc.get("name"), "name", required=True)
    else:
        name = text(doc.get("title"), "title", required=True)
    stated = terms(
        "process",
        text_list(doc.get("manufacturing-processes"), "manufacturing-processes"),
        source="manufacturing-processes",
        warnings=warnings,
    )
    materials = terms(
        "material",
        _split(text_list(doc.get("materials"), "materials")),
        source="materials",
        warnings=warnings,
    )
    processes, parts = stated, []
    if not any(t.known for t in stated):  # names no one knows say nothing to match on
        guess = inference.infer(_sources(doc, V1_SOURCES))
        processes, parts = stated + guess.processes, guess.parts
        if not materials:
            materials = guess.materials
        _explain(guess.processes, "manufacturing-processes", warnings)
    return _design(
        doc,
        design_id,
        name=name,
        okh_format=f"OKH v1 ({doc.get('okh-manifest-version', '?')})",
        description=text(doc.get("description"), "description"),
        processes=processes,
        materials=materials,
        parts=parts,
        outer=None,
        known=V1_KNOWN,
        warnings=warnings,
    )


def _design(
    doc: dict[str, Any],
    design_id: str | None,
    *,
    name: str | None,
    okh_format: str,
    description: str | None,
    processes: list[Term],
    materials: list[Term],
    parts: list[Part],
    outer: Box | None,
    known: set[str],
    warnings: list[str],
) -> Design:
    all_processes = processes + [t for p in parts for t in p.processes]
    all_processes += [i for t in all_processes for i in inference.implications(t)
                      if i.id not in {u.id for u in all_processes}]
    all_materials = materials + [t for p in parts for t in p.materials]
    links = {k: v for k in LINK_KEYS if isinstance(v := doc.get(k), str) and v.strip()}
    return build(
        Design,
        id=design_id or document_id(EntityKind.design, doc),
        name=name or "",
        description=description,
        version=text(doc.get("version"), "version"),
        license=_license(doc.get("license")),
        licensor=_person(doc.get("licensor")),
        okh_format=okh_format,
        processes=most_specific("process", all_processes),
        materials=most_specific("material", all_materials),
        parts=parts,
        outer_dimensions=outer,
        keywords=text_list(doc.get("keywords"), "keywords"),
        links={k: v.strip()[:1000] for k, v in links.items()},
        warnings=warnings[:200],
        extra={k: v for k, v in doc.items() if k not in known},
    )


# Where each generation of manifest shows what making it takes, and how to read each
# field (see inference.Source).
LOSH_SOURCES: tuple[tuple[str, inference.Role], ...] = (
    ("name", "name"), ("function", "prose"), ("description", "prose"),
    ("keywords", "keywords"), ("source", "files"), ("export", "files"), ("bom", "files"),
    ("manufacturing-instructions", "files"), ("image", "images"),
)
PART_SOURCES: tuple[tuple[str, inference.Role], ...] = (
    ("name", "keywords"), ("source", "files"), ("export", "files"), ("image", "images"),
)
V1_SOURCES: tuple[tuple[str, inference.Role], ...] = (
    ("title", "name"), ("description", "prose"), ("intended-use", "prose"),
    ("keywords", "keywords"), ("tool-list", "tools"), ("manufacturing-files", "files"),
    ("design-files", "files"), ("making-instructions", "files"), ("schematics", "files"),
    ("bom", "files"), ("files", "files"), ("image", "images"),
)
# What an author can add when nothing says how to make the design, by the field they
# would have used: the warning names them.
ADVICE = {
    "tsdc": "add `tsdc` (e.g. tsdc = [\"3DP\"]) to the manifest or its parts, or list the"
            " files to make it (.stl, .kicad_pcb, .dxf) under `source` or `export`",
    "manufacturing-processes": "add `manufacturing-processes` (e.g. [\"3D printing\"]), or"
            " list the files to make it under `manufacturing-files` or `design-files`, or"
            " the machines under `tool-list`",
}


def _sources(doc: dict[str, Any], fields: tuple[tuple[str, inference.Role], ...], *,
             prefix: str = "") -> list[inference.Source]:
    """The fields inference reads, as the manifest spells them. A field of the wrong type
    is someone else's error to report: here it simply gives no evidence."""
    out = []
    for key, role in fields:
        values = _strings(doc.get(key))
        if values:
            out.append(inference.Source(f"{prefix}{key}", role, tuple(values)))
    return out


def _strings(value: Any, limit: int = 1000) -> list[str]:
    """Every text in a field, however nested: file entries are {path, title, type} and
    each of those may say how the file is made ("3D printed LED mount", type "PCB")."""
    out: list[str] = []
    stack = [value]
    while stack and len(out) < limit:
        item = stack.pop()
        if isinstance(item, str):
            if item.strip():
                out.append(item.strip())
        elif isinstance(item, dict):
            stack.extend(reversed(list(item.values())))
        elif isinstance(item, list):
            stack.extend(reversed(item))
    return out


def _explain(inferred: list[Term], field: str, warnings: list[str]) -> None:
    if not inferred:
        warnings.append(f"no process is stated and none could be inferred, so no facility"
                        f" can be matched to this design: {ADVICE[field]}")
        return
    said = "; ".join(f"{t.label} ({t.confidence:.2f}, {t.source}: {t.evidence!r})"
                     for t in inferred[:5])
    warnings.append(f"processes inferred, not stated: {said}; state them in `{field}` to be"
                    f" sure")


def _codes(value: Any, field: str) -> list[str]:
    """TsDC codes: a string, a list, or a string with commas."""
    return _split(text_list(value, field))


def _split(values: list[str]) -> list[str]:
    out = []
    for value in values:
        out += [p.strip() for p in value.replace(";", ",").split(",") if p.strip()]
    return out


def _outer(raw: dict[str, Any], field: str, warnings: list[str]) -> Box | None:
    """outer-dimension(s) in the shapes real manifests use; an unreadable one is a warning."""
    prefix = f"{field}." if field else ""
    try:
        single = raw.get("outer-dimension")
        if isinstance(single, str):
            unit = text(raw.get("outer-dimension-dim"), f"{prefix}outer-dimension-dim") or "mm"
            return openscad_box(single, unit, f"{prefix}outer-dimension")
        many = raw.get("outer-dimensions")
        if isinstance(many, dict):
            many = [many]
        if isinstance(many, list) and many and isinstance(many[0], dict):
            first = many[0]
            unit = text(first.get("unit"), f"{prefix}outer-dimensions.unit") or "mm"
            if isinstance(first.get("openSCAD"), str):
                return openscad_box(first["openSCAD"], unit, f"{prefix}outer-dimensions")
            if all(k in first for k in ("width", "depth", "height")):
                return box_from_text(
                    f"{first['width']} x {first['depth']} x {first['height']}",
                    f"{prefix}outer-dimensions",
                    default_unit=unit,
                )
        if isinstance(many, str):
            return box_from_text(many, f"{prefix}outer-dimensions")
    except InvalidInput as exc:
        warnings.append(f"{exc.field}: {exc.message}; size left unknown")
    return None


def _license(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("hardware") or value.get("documentation") or value.get("software")
    return text(value, "license")


def _person(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("name")
    if isinstance(value, list):
        names = [_person(v) for v in value]
        return ", ".join(n for n in names if n) or None
    return text(value, "licensor")
