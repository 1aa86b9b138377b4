"""The matcher's answer bodies, for its OpenAPI document (the routes build dicts)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from contracts.matches import Requirement

Status = Literal["matchable", "needs_information"]


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Row(_Out):
    version: int
    score: float
    distance_km: float | None = Field(description="with near=: from that point")
    summary: str = Field(description="'match', or what is missing")
    explanation: list[Requirement]


class FacilityRow(_Row):
    facility: str


class DesignRow(_Row):
    design: str


class FacilitiesForDesign(_Out):
    design: str
    status: Status
    needs: str | None = Field(None, description="needs_information: what the manifest"
                                                " must say before anything can match")
    matches: list[FacilityRow]
    near_misses: list[FacilityRow] = Field(description="one requirement short")


class NeedingInformation(_Out):
    design: str
    status: Literal["needs_information"]
    needs: str


class NeedingInformationPage(_Out):
    designs: list[NeedingInformation]
    next: str | None = Field(description="pass as after= for the next page")


class DesignsForFacility(_Out):
    facility: str
    matches: list[DesignRow]


class Explained(_Out):
    design: str
    facility: str
    matches: bool
    near_miss: bool
    summary: str
    score: float
    explanation: list[Requirement]
