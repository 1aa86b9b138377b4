"""The registry's answer bodies, for its OpenAPI document only: the routes send JSON text
they render themselves (services.registry.api.represent), never through these models."""

from __future__ import annotations

from datetime import datetime
from typing import Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from contracts import vocabulary
from contracts.events import EntityKind
from contracts.models import Design, Facility


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EntityMeta(_Out):
    id: str
    version: int
    owner: str
    created_at: datetime
    updated_at: datetime


class Manifest(_Out):
    media_type: str = Field(description="the media type the manifest was sent as")
    content: str = Field(description="the manifest as it was sent")


class Written(_Out):
    changed: bool = Field(description="false: the same manifest was stored already")
    event_id: str | None = Field(description="the change's event id, to follow with"
                                             " `makelocal trace`; none when unchanged")


class Read(_Out):
    manifest: Manifest


class Listed(_Out):
    distance_km: float | None = Field(None, description="with near=: from that point")


class DesignWritten(EntityMeta, Written):
    design: Design


class FacilityWritten(EntityMeta, Written):
    facility: Facility


class DesignRead(EntityMeta, Read):
    design: Design


class FacilityRead(EntityMeta, Read):
    facility: Facility


class DesignListed(EntityMeta, Listed):
    design: Design


class FacilityListed(EntityMeta, Listed):
    facility: Facility


class DesignPage(_Out):
    items: list[DesignListed]
    next_cursor: str | None = Field(description="pass as cursor= for the next page")


class FacilityPage(_Out):
    items: list[FacilityListed]
    next_cursor: str | None = Field(description="pass as cursor= for the next page")


class Deleted(_Out):
    id: str
    version: int
    deleted: Literal[True]
    event_id: str | None


class EntityModels(NamedTuple):
    """The bodies of one kind's routes."""

    written: type[BaseModel]
    read: type[BaseModel]
    page: type[BaseModel]


MODELS = {
    EntityKind.design: EntityModels(written=DesignWritten, read=DesignRead, page=DesignPage),
    EntityKind.facility: EntityModels(written=FacilityWritten, read=FacilityRead,
                                      page=FacilityPage),
}


class Inferred(_Out):
    kind: vocabulary.TermKind
    id: str
    label: str
    field: str | None
    evidence: str | None
    confidence: float | None


class Size(_Out):
    part: str
    size_mm: dict[str, float] | None = Field(description="x_mm, y_mm, z_mm as known")
    processes: list[str]
    evidence: str | None


class Report(_Out):
    """What POST /v1/validate says of a manifest (ingest.validation.report)."""

    kind: EntityKind
    id: str
    name: str
    warnings: list[str]
    matchable: bool | None = Field(None, description="designs: whether any facility could"
                                                     " be matched to it")
    inferred: list[Inferred] | None = Field(None, description="designs: terms guessed")
    sizes: list[Size] | None = Field(None, description="designs: part sizes inferred")
    entity: Design | Facility = Field(description="what a write would store")
