"""The normalized Design (from OKH) and Facility (from OKW) that every service shares."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
EntityId = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
ShortText = Annotated[str, StringConstraints(max_length=1000)]
LongText = Annotated[str, StringConstraints(max_length=20_000)]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class Term(Model):
    """A process or material: a canonical vocabulary id, or an unknown name kept as given."""

    id: str = Field(description="canonical vocabulary id; for an unknown term, its name")
    label: str
    known: bool = True
    inferred: bool = Field(False, description="guessed from files, keywords or text")
    source: str | None = Field(None, description="where the term came from: the field, as"
                               " the manifest spells it")
    evidence: str | None = Field(None, description="for an inferred term: the file or the"
                                 " words in that field that gave it")
    confidence: float | None = Field(None, ge=0, le=1, description="for an inferred term:"
                                     " how surely the evidence means it")


class Box(Model):
    """Axis-aligned size in millimetres; None where a side is not stated."""

    x_mm: float | None = None
    y_mm: float | None = None
    z_mm: float | None = None


class Part(Model):
    name: ShortText
    processes: list[Term] = []
    materials: list[Term] = []
    outer_dimensions: Box | None = None
    evidence: str | None = Field(None, description="set when the part is inferred: a size"
                                 " a machine must take, read from the manifest's text")


class Design(Model):
    id: EntityId
    name: ShortText
    description: LongText | None = None
    version: ShortText | None = Field(None, description="the design's own release version")
    license: ShortText | None = None
    licensor: ShortText | None = None
    okh_format: str = Field(description="OKH-LOSH or OKH v1, with its manifest version")
    processes: list[Term] = Field([], description="all processes the design needs")
    materials: list[Term] = []
    parts: list[Part] = []
    outer_dimensions: Box | None = None
    keywords: list[ShortText] = []
    links: dict[str, ShortText] = {}
    warnings: list[str] = []
    extra: dict[str, Any] = Field({}, description="non-standard manifest keys, kept")


class FacilityStatus(StrEnum):
    active = "active"
    planned = "planned"
    temporary_closure = "temporary-closure"
    closed = "closed"


class Address(Model):
    street: ShortText | None = None
    city: ShortText | None = None
    region: ShortText | None = None
    country: ShortText | None = None
    postcode: ShortText | None = None


class Location(Model):
    address: Address | None = None
    lat: float | None = Field(None, ge=-90, le=90)
    lon: float | None = Field(None, ge=-180, le=180)


class Equipment(Model):
    equipment_type: ShortText | None = None
    processes: list[Term] = []
    make: ShortText | None = None
    model: ShortText | None = None
    materials: list[Term] = []
    working_volume: Box | None = None
    quantity: int = Field(1, ge=1, le=10_000)


class Facility(Model):
    id: EntityId
    name: ShortText
    status: FacilityStatus = FacilityStatus.active
    access_type: ShortText | None = None
    location: Location = Location()
    processes: list[Term] = Field([], description="every process offered, equipment included")
    materials: list[Term] = []
    equipment: list[Equipment] = []
    certifications: list[ShortText] = []
    owner: ShortText | None = None
    links: dict[str, ShortText] = {}
    warnings: list[str] = []
    extra: dict[str, Any] = {}
