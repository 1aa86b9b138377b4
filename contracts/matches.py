"""Match events: a design and a facility that can (found) or no longer can (withdrawn)
make it, with the reasons."""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from contracts.models import EntityId

MATCHES_STREAM = "MATCHES"
MATCHES_SUBJECTS = "matches.>"
MATCHES_DUPLICATE_WINDOW_S = 20 * 60
MATCHES_MAX_AGE_S = 30 * 24 * 3600

Outcome = Literal["met", "weak", "unknown", "unmet"]
MatchKind = Literal["found", "withdrawn"]


class Requirement(BaseModel):
    """One thing a design needs, and how the facility answers it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["status", "process", "material", "size"]
    need: str = Field(description="what is needed: a process or material id, a part, 'active'")
    outcome: Outcome
    by: str | None = Field(None, description="what meets it: equipment, process, material")
    note: str | None = None


class Cause(BaseModel):
    model_config = ConfigDict(extra="forbid")

    entity: Literal["design", "facility"]
    entity_id: EntityId
    version: int
    event_id: str | None = None
    occurred_at: datetime | None = None


class MatchEvent(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: int = 1
    event_id: str
    type: Literal["matches.found", "matches.withdrawn"]
    design_id: EntityId
    design_version: int
    facility_id: EntityId
    facility_version: int
    score: float = Field(ge=0, le=1)
    explanation: list[Requirement]
    facility_lat: float | None = None
    facility_lon: float | None = None
    design_processes: list[str] = []
    cause: Cause


def match_event_id(kind: MatchKind, design_id: str, design_version: int, facility_id: str,
                   facility_version: int) -> str:
    """The same transition always gets the same id, so a replay is a duplicate."""
    key = f"{kind}|{design_id}|{design_version}|{facility_id}|{facility_version}"
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def match_subject(kind: MatchKind, design_id: str, facility_id: str) -> str:
    return f"matches.{kind}.{design_id}.{facility_id}"
