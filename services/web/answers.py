"""The shapes of the API answers the pages are made from, checked at the edge: an answer
of another shape (a proxy's page, a half-written body, an older version) is an API that
did not answer usably, never a KeyError in a template. Extra fields are allowed: the
APIs may say more than the page reads."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from contracts.models import Design, Facility


class _Shape(BaseModel):
    model_config = ConfigDict(extra="allow")


class Reason(_Shape):
    kind: str
    need: str
    outcome: str
    by: str | None = None
    note: str | None = None


class Row(_Shape):
    score: float
    summary: str
    distance_km: float | None = None
    explanation: list[Reason] = []
    facility: str | None = None
    design: str | None = None


class Matches(_Shape):
    matches: list[Row]
    near_misses: list[Row] = []
    status: str | None = None
    needs: str | None = None


class DesignItem(_Shape):
    id: str
    design: Design


class FacilityItem(_Shape):
    id: str
    facility: Facility


class DesignList(_Shape):
    items: list[DesignItem]
    next_cursor: str | None = None


class FacilityList(_Shape):
    items: list[FacilityItem]
    next_cursor: str | None = None


class Region(_Shape):
    lat: float
    lon: float
    radius_km: float


class AlertFilter(_Shape):
    region: Region | None = None
    processes: list[str] = []
    design_ids: list[str] = []
    facility_ids: list[str] = []


class Alert(_Shape):
    address: str
    filter: AlertFilter
    enabled: bool
    verified: bool
    disabled_reason: str | None = None


def checked(model: type[BaseModel], value: Any) -> dict[str, Any]:
    """The answer, if it has the model's shape (ValueError if not), as the plain data the
    templates read."""
    return model.model_validate(value).model_dump(mode="json")
