"""HTTP routes of the matcher: questions answered from the index."""

from __future__ import annotations

import heapq
from typing import Annotated, Any

from fastapi import APIRouter, Query

from contracts.geo import haversine_km
from contracts.models import ID_PATTERN
from services.common.errors import ERROR_RESPONSES, ApiError
from services.common.near import parse_near
from services.matcher.index import CapabilityIndex
from services.matcher.rules import Evaluation, Explainer, can_design_match, evaluate
from services.matcher.schemas import (
    DesignsForFacility,
    Explained,
    FacilitiesForDesign,
    NeedingInformationPage,
)

Id = Annotated[str, Query(pattern=ID_PATTERN)]


def router(index: CapabilityIndex) -> APIRouter:
    api = APIRouter(prefix="/v1", tags=["matches"], responses=ERROR_RESPONSES)

    def design_of(design_id: str) -> Any:
        design = index.designs.get(design_id)
        if design is None:
            raise ApiError(404, "not_found", f"no design {design_id!r} in the index", "design")
        return design

    def facility_of(facility_id: str) -> Any:
        facility = index.facilities.get(facility_id)
        if facility is None:
            raise ApiError(404, "not_found", f"no facility {facility_id!r} in the index",
                           "facility")
        return facility

    @api.get("/designs/{design_id}/facilities",
             summary="Facilities that can make a design, best first, and near misses",
             response_model=None, responses={200: {"model": FacilitiesForDesign}})
    async def facilities_for(design_id: str, near: str | None = None,
                             radius_km: Annotated[float | None, Query(gt=0, le=20_100)] = None,
                             limit: Annotated[int, Query(ge=1, le=500)] = 50) -> dict:
        design = design_of(design_id)
        origin = parse_near(near, radius_km)
        if not can_design_match(design):
            return {"design": design_id, "status": NEEDS_INFORMATION, "needs": _needs(design),
                    "matches": [], "near_misses": []}
        allowed = None
        if origin is not None:
            allowed = dict(index.near(origin[0], origin[1], origin[2]))
        explainer = Explainer()  # one per request: candidates share capability sets
        matches, misses = [], []
        for facility in index.near_miss_candidates(design):
            if allowed is not None and facility.id not in allowed:
                continue
            evaluation = explainer.evaluate(design, facility)
            if not (evaluation.matches or evaluation.near_miss):
                continue
            found = (evaluation, facility, _distance(origin, facility))
            (matches if evaluation.matches else misses).append(found)
        # explained only for what is shown: building every row cost more than ranking
        return {"design": design_id, "status": "matchable",
                "matches": _top("facility", matches, limit),
                "near_misses": _top("facility", misses, limit)}

    @api.get("/designs/needing-information",
             summary="Designs no facility can be matched to until their manifest says more",
             response_model=None, responses={200: {"model": NeedingInformationPage}})
    async def needing_information(
            after: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
            limit: Annotated[int, Query(ge=1, le=500)] = 100) -> dict:
        waiting = sorted(d.id for d in index.designs.values() if not can_design_match(d)
                         and (after is None or d.id > after))
        page = waiting[:limit]
        return {"designs": [{"design": i, "status": NEEDS_INFORMATION,
                             "needs": _needs(index.designs[i])} for i in page],
                "next": page[-1] if len(waiting) > limit else None}

    @api.get("/facilities/{facility_id}/designs", summary="Designs a facility can make",
             response_model=None, responses={200: {"model": DesignsForFacility}})
    async def designs_for(facility_id: str,
                          limit: Annotated[int, Query(ge=1, le=500)] = 50) -> dict:
        facility = facility_of(facility_id)
        explainer = Explainer()
        found = [(explainer.evaluate(d, facility), d, None)
                 for d in index.designs.profiles(index.designs_for(facility))]
        return {"facility": facility_id, "matches": _top("design", found, limit)}

    @api.get("/match", summary="Explain one design and facility pair",
             response_model=None, responses={200: {"model": Explained}})
    async def explain(design: Id, facility: Id) -> dict:
        d, f = design_of(design), facility_of(facility)
        evaluation = evaluate(d, f)
        return {"design": design, "facility": facility, "matches": evaluation.matches,
                "near_miss": evaluation.near_miss, "summary": evaluation.summary(),
                "score": evaluation.score,
                "explanation": [r.as_dict() for r in evaluation.requirements]}

    return api


NEEDS_INFORMATION = "needs_information"


def _needs(design: Any) -> str:
    unknown = [n.id for n in design.processes if not n.known]
    if unknown:
        return (f"the processes it states ({', '.join(unknown[:5])}) are not in the"
                " vocabulary: name a known process so facilities can be matched")
    return ("no process is stated or could be inferred from its files and text: its"
            " manifest needs `tsdc` / `manufacturing-processes`, or the files to make it")


def _distance(origin: tuple[float, float, float] | None, facility: Any) -> float | None:
    if origin is None or facility.lat is None or facility.lon is None:
        return None
    return round(haversine_km(origin[0], origin[1], facility.lat, facility.lon), 3)


def _row(kind: str, entity_id: str, version: int, evaluation: Evaluation,
         distance: float | None) -> dict[str, Any]:
    return {kind: entity_id, "version": version, "score": evaluation.score,
            "distance_km": distance, "summary": evaluation.summary(),
            "explanation": [{k: v for k, v in r.as_dict().items() if v is not None}
                            for r in evaluation.requirements]}


def _top(kind: str, found: list[tuple[Evaluation, Any, float | None]],
         limit: int) -> list[dict[str, Any]]:
    """The best `limit` by score, then distance (then id, so pages are stable), as rows."""
    best = heapq.nsmallest(limit, found, key=lambda f: (
        -f[0].score, f[2] if f[2] is not None else float("inf"), f[1].id))
    return [_row(kind, entity.id, entity.version, evaluation, distance)
            for evaluation, entity, distance in best]
