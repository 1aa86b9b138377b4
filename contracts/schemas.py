"""JSON Schemas of the shared models and events, as published in contracts/schemas/."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import TypeAdapter

from contracts.events import DesignEvent, FacilityEvent, RegistryEvent
from contracts.matches import MatchChange, MatchEvent
from contracts.models import Design, Facility

SCHEMA_DIR = Path(__file__).parent / "schemas"


def all_schemas() -> dict[str, dict]:
    return {
        "design.schema.json": Design.model_json_schema(),
        "facility.schema.json": Facility.model_json_schema(),
        "design-event.schema.json": DesignEvent.model_json_schema(),
        "facility-event.schema.json": FacilityEvent.model_json_schema(),
        "registry-event.schema.json": TypeAdapter(RegistryEvent).json_schema(),
        "match-change.schema.json": MatchChange.model_json_schema(),
        "match-event.schema.json": MatchEvent.model_json_schema(),
    }


def render(schema: dict) -> str:
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def write_schemas(directory: Path = SCHEMA_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in all_schemas().items():
        path = directory / name
        path.write_text(render(schema), encoding="utf-8")
        written.append(path)
    return written
