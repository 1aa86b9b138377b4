"""API answers -> what a page shows: needs with where each came from, matches with names,
distances and reasons in words, links that are safe to follow. Pure."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

TIMES = " \u00d7 "  # the multiplication sign between sides
OUTCOMES = {"met": "has it", "weak": "only the more general kind",
            "unknown": "not known", "unmet": "missing"}
LINK_NAMES = {"repo": "Repository", "release": "Release", "readme": "Read me",
              "user-manual": "User manual", "manufacturing-instructions": "Making instructions",
              "bom": "Bill of materials", "image": "Image", "project-link": "Project",
              "documentation-home": "Documentation", "archive-download": "Download",
              "contribution-guide": "Contributing"}


def needs(design: dict[str, Any]) -> list[dict[str, Any]]:
    """Each process, material and size the design needs, and where it came from: stated
    in a field, or inferred, with the evidence and how sure."""
    rows = []
    for kind, terms in (("process", design.get("processes", [])),
                        ("material", design.get("materials", []))):
        for term in terms:
            rows.append({"kind": kind, "label": term["label"], "known": term.get("known", True),
                         "origin": origin(term)})
    for part in design.get("parts", []):
        size = part.get("outer_dimensions")
        if size:
            sides = [f"{size[a]:g}" for a in ("x_mm", "y_mm", "z_mm") if size.get(a)]
            origin_text = (f"inferred from the text: “{part['evidence']}”"
                           if part.get("evidence") else f"part {part['name']}")
            rows.append({"kind": "size", "label": TIMES.join(sides) + " mm", "known": True,
                         "origin": origin_text})
    return rows


def origin(term: dict[str, Any]) -> str:
    source = term.get("source") or "the manifest"
    if not term.get("inferred"):
        return f"stated in {source}"
    sure = term.get("confidence")
    how = f", {round(sure * 100)} % sure" if isinstance(sure, int | float) else ""
    evidence = term.get("evidence")
    said = f": “{evidence}”" if evidence else ""
    return f"inferred from {source}{said}{how}"


MET_LISTED = 5  # past this many requirements met, they are counted, not listed


def reasons(explanation: list[dict[str, Any]]) -> list[str]:
    """Why, in words: every requirement not fully met, and those met (counted when there
    are many: a design of 40 parts has 40 size lines, and a page lists 50 facilities)."""
    out, met = [], []
    for item in explanation:
        text = f"{item['kind']} {item['need']}: {OUTCOMES.get(item['outcome'], item['outcome'])}"
        if item.get("by") and item["by"] != item["need"]:
            text += f" ({item['by']})"
        if item.get("note"):
            text += f"; {item['note']}"
        (met if item["outcome"] == "met" else out).append(text)
    if len(met) > MET_LISTED:
        return [*out, f"{len(met)} requirements met"]
    return out + met


def ranked(rows: list[dict[str, Any]], directory: dict[str, dict[str, Any]],
           near: bool) -> list[dict[str, Any]]:
    """Matcher rows with the facility's name and place. Near a place, the closest first
    (a maker goes to the lab down the road); else the best score first."""
    out = []
    for row in rows:
        facility = directory.get(row["facility"]) or {"id": row["facility"],
                                                      "name": row["facility"]}
        out.append({"facility": facility, "score": row["score"],
                    "distance_km": row.get("distance_km"), "summary": row["summary"],
                    "reasons": reasons(row.get("explanation", []))})
    if near:
        out.sort(key=lambda r: (r["distance_km"] if r["distance_km"] is not None
                                else float("inf"), -r["score"]))
    return out


def safe_links(links: dict[str, str]) -> list[tuple[str, str]]:
    """Links a manifest gives, only those a browser may follow safely (http and https:
    never `javascript:` or `data:` from a document anyone can write)."""
    out = []
    for key, url in links.items():
        if urlsplit(url.strip()).scheme.lower() in ("http", "https"):
            # OKW links have no names of their own ("link0"): their host names them
            name = LINK_NAMES.get(key) or (urlsplit(url.strip()).hostname or key
                                           if key.startswith("link") else
                                           key.replace("-", " ").capitalize())
            out.append((name, url.strip()))
    return out


def markers(facilities: list[dict[str, Any]]) -> list[list[Any]]:
    """[id, name, lat, lon] of each facility with a place: the map's data, kept small."""
    return [[f["id"], f["name"], round(f["lat"], 5), round(f["lon"], 5)]
            for f in facilities if f.get("lat") is not None and f.get("lon") is not None]


def alert_terms(filter_: dict[str, Any], labels: dict[str, str]) -> list[tuple[str, str, str]]:
    """An alert's filter as (what, words, link or "") rows a person reads."""
    out: list[tuple[str, str, str]] = []
    region = filter_.get("region")
    if region:
        out.append(("Near", f"{region['lat']:.4f}, {region['lon']:.4f}, within"
                            f" {region['radius_km']:g} km", ""))
    if filter_.get("processes"):
        out.append(("Processes", ", ".join(labels.get(p, p) for p in filter_["processes"]), ""))
    out += [("Design", d, f"/designs/{d}") for d in filter_.get("design_ids", [])]
    out += [("Facility", f, f"/facilities/{f}") for f in filter_.get("facility_ids", [])]
    return out
