"""How the write routes' request bodies are documented in OpenAPI: a manifest as people
write it, in any of the three formats, with one short example of each drawn from the real
manifests and facility records in ../shared/data. The readers take the slips real
manifests carry, so the schema says "a document" and the description says where the
fields are explained; a test posts every example to /v1/validate, so they stay readable."""

from __future__ import annotations

from typing import Any

from contracts.events import EntityKind

_WHAT = {
    EntityKind.design: (
        "An Open Know-How manifest: OKH-LOSH (TOML, or the same fields in JSON) or OKH v1 "
        "(YAML, or JSON). What is read from which field, what is inferred when the "
        "manifest does not say, and the slips taken: docs/manifests.md."),
    EntityKind.facility: (
        "An Open Know-Where facility record (YAML or JSON): name, location (with "
        "gps_coordinates or lat/lon), facility_status, manufacturing_processes, equipment. "
        "docs/manifests.md lists every field read."),
}

_EXAMPLES: dict[EntityKind, dict[str, Any]] = {
    EntityKind.design: {
        "application/yaml": """\
title: Switch Plate - GoPro Compatible
description: A 3D printable mounting plate for an assistive switch.
okh-manifest-version: 1.0.0
license:
  hardware: CC-BY-SA-4.0
licensor:
  name: Anna Millbourn
manufacturing-processes:
  - 3D printing
materials:
  - PLA
""",
        "application/toml": """\
okhv = "OKH-LOSHv1.0"
name = "PlanktoScope"
function = "An affordable modular microscope to study plankton."
license = "CERN-OHL-S-2.0"
licensor = "PlanktoScope community"
version = "2.1"
tsdc = ["3DP", "PCB"]
""",
        "application/json": {
            "title": "Switch Plate - GoPro Compatible",
            "okh-manifest-version": "1.0.0",
            "license": {"hardware": "CC-BY-SA-4.0"},
            "licensor": {"name": "Anna Millbourn"},
            "manufacturing-processes": ["3D printing"],
        },
    },
    EntityKind.facility: {
        "application/yaml": """\
name: Fab Lab Nantes
location:
  gps_coordinates: 47.2184, -1.5536
  city: Nantes
  country: France
facility_status: Active
manufacturing_processes:
  - 3D printing
  - laser cutting
equipment:
  - equipment_type: 3D printer
    manufacturing_process: 3D printing
""",
        "application/json": {
            "name": "Fab Lab Nantes",
            "location": {"gps_coordinates": "47.2184, -1.5536", "city": "Nantes",
                         "country": "France"},
            "facility_status": "Active",
            "manufacturing_processes": ["3D printing", "laser cutting"],
        },
    },
}


def request_body(kind: EntityKind | None) -> dict[str, Any]:
    """The OpenAPI requestBody of a write of `kind` (None: either, as /v1/validate takes)."""
    kinds = [kind] if kind is not None else list(EntityKind)
    description = " ".join(_WHAT[k] for k in kinds)
    content: dict[str, Any] = {}
    for media, schema in (("application/toml", {"type": "string"}),
                          ("application/yaml", {"type": "string"}),
                          ("application/json", {"type": "object"})):
        examples = {f"{k.value}": {"summary": f"a {k.value}", "value": _EXAMPLES[k][media]}
                    for k in kinds if media in _EXAMPLES[k]}
        content[media] = {"schema": schema} | ({"examples": examples} if examples else {})
    return {"required": True, "description": description, "content": content}
