"""Guessing processes where a manifest states none (OKH v1): from file names and words.
Every guess is marked inferred, so matching can weigh it and people can correct it."""

from __future__ import annotations

import re
from collections.abc import Iterable

# File endings that, in open hardware repositories, almost always mean one process.
EXTENSIONS = {
    ".stl": "3d-printing",
    ".3mf": "3d-printing",
    ".gcode": "3d-printing",
    ".dxf": "laser-cutting",
    ".svg": "laser-cutting",
    ".gbr": "pcb-fabrication",
    ".gtl": "pcb-fabrication",
    ".gbl": "pcb-fabrication",
    ".gerber": "pcb-fabrication",
    ".kicad_pcb": "pcb-fabrication",
    ".brd": "pcb-fabrication",
}
# Phrases that name a process in prose, keywords or folder names.
PHRASES = [
    (re.compile(r"3d[\s_-]?print", re.I), "3d-printing"),
    (re.compile(r"\blaser[\s_-]?cut", re.I), "laser-cutting"),
    (re.compile(r"\bcnc\b", re.I), "cnc-machining"),
    (re.compile(r"\b(pcb|printed circuit board|gerber)s?\b", re.I), "pcb-fabrication"),
    (re.compile(r"\bweld(ed|ing)?\b", re.I), "welding"),
    (re.compile(r"\bsew(n|ing)?\b", re.I), "sewing"),
    (re.compile(r"\bsolder(ed|ing)?\b", re.I), "electronics-assembly"),
    (re.compile(r"\bvinyl[\s_-]?cut", re.I), "vinyl-cutting"),
    (re.compile(r"\binjection[\s_-]?mou?ld", re.I), "injection-molding"),
    (re.compile(r"\bwoodwork", re.I), "woodworking"),
]


def from_files(paths: Iterable[str]) -> list[tuple[str, str]]:
    """(process id, evidence) for each file whose ending or name tells its process."""
    found = []
    for path in paths:
        lower = path.lower().rstrip("/ ")
        for ending, process in EXTENSIONS.items():
            if lower.endswith(ending):
                found.append((process, f"file {ending}"))
                break
        else:
            found.extend(
                (p, f"file name {path.rsplit('/', 1)[-1][:60]!r}")
                for p, _ in from_text([lower.rsplit("/", 1)[-1]], "name")
            )
    return found


def from_text(texts: Iterable[str], what: str) -> list[tuple[str, str]]:
    """(process id, evidence) for each process phrase in the given texts."""
    found = []
    for body in texts:
        for pattern, process in PHRASES:
            match = pattern.search(body)
            if match:
                found.append((process, f"{what} {match.group(0)!r}"))
    return found
