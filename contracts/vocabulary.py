"""The process and material vocabulary: resolving names to canonical terms and walking
the "is a kind of" hierarchy. Pure; the data lives in vocabulary.yaml."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Literal
from urllib.parse import unquote, urlparse

import yaml

TermKind = Literal["process", "material"]  # which vocabulary a term is of


@dataclass(frozen=True)
class Entry:
    id: str
    label: str
    wikidata: str | None
    parents: tuple[str, ...]
    synonyms: tuple[str, ...]
    requirement: bool = True


@dataclass
class Vocabulary:
    """One kind of term (processes or materials) with its lookup table and hierarchy."""

    kind: TermKind
    entries: dict[str, Entry]
    _lookup: dict[str, str] = field(default_factory=dict)
    _ancestors: dict[str, frozenset[str]] = field(default_factory=dict)
    _descendants: dict[str, frozenset[str]] = field(default_factory=dict)
    _resolved: dict[str, Entry | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for entry in self.entries.values():
            for name in (entry.id, entry.label, *entry.synonyms):
                self._lookup.setdefault(normalise(name), entry.id)
            if entry.wikidata:
                self._lookup[entry.wikidata.lower()] = entry.id
        for entry_id in self.entries:
            self._ancestors[entry_id] = frozenset(self._walk_up(entry_id))
        children: dict[str, set[str]] = {entry_id: set() for entry_id in self.entries}
        for entry_id, ancestors in self._ancestors.items():
            for ancestor in ancestors:
                children[ancestor].add(entry_id)
        self._descendants = {k: frozenset(v) for k, v in children.items()}

    def _walk_up(self, entry_id: str) -> set[str]:
        seen: set[str] = set()
        stack = list(self.entries[entry_id].parents)
        while stack:
            parent = stack.pop()
            if parent not in seen:
                seen.add(parent)
                stack.extend(self.entries[parent].parents)
        return seen

    def resolve(self, name: str) -> Entry | None:
        """The entry a name, id, synonym, Wikidata id or Wikipedia/Wikidata URL stands for."""
        # Real data repeats a few hundred names endlessly; remember what each resolved to.
        if name in self._resolved:
            return self._resolved[name]
        entry = self._resolve(name)
        if len(self._resolved) < 50_000:
            self._resolved[name] = entry
        return entry

    def _resolve(self, name: str) -> Entry | None:
        for candidate in _candidates(name):
            entry_id = self._lookup.get(candidate)
            if entry_id is not None:
                return self.entries[entry_id]
        return None

    def ancestors(self, entry_id: str) -> frozenset[str]:
        """Every more generic term (transitively), without the term itself."""
        return self._ancestors.get(entry_id, frozenset())

    def descendants(self, entry_id: str) -> frozenset[str]:
        """Every more specific term (transitively), without the term itself."""
        return self._descendants.get(entry_id, frozenset())

    def with_descendants(self, entry_id: str) -> frozenset[str]:
        return self.descendants(entry_id) | {entry_id}

    def is_kind_of(self, specific: str, generic: str) -> bool:
        return specific == generic or generic in self.ancestors(specific)


def normalise(name: str) -> str:
    """Case, accents, separators and spacing folded, so spellings meet."""
    text = unicodedata.normalize("NFKC", name).casefold().strip()
    text = re.sub(r"[_\-\s]+", " ", text)
    return text.strip(" .,;:")


def _candidates(name: str) -> list[str]:
    """The ways a name may be read, most literal first."""
    raw = name.strip()
    out: list[str] = []
    if raw.lower().startswith(("http://", "https://")):
        path = unquote(urlparse(raw).path)
        last = path.rstrip("/").rsplit("/", 1)[-1]
        out.append(normalise(last))
        return out
    out.append(normalise(raw))
    stripped = re.sub(r"\s*\(.*?\)\s*", " ", raw).strip()
    if stripped and stripped != raw:
        out.append(normalise(stripped))
    out.extend(normalise(inner) for inner in re.findall(r"\((.*?)\)", raw))
    # "additive manufacturing/FDM": the most specific part is usually the last
    if "/" in raw:
        out.extend(normalise(part) for part in reversed(raw.split("/")) if part.strip())
    if raw.lower().startswith("q") and raw[1:].isdigit():
        out.append(raw.lower())
    # "Steel pipes & steel plates", "ABS Plastic", "PET bottles": a short phrase whose
    # head word is the term; tried last so that exact names always win.
    for piece in re.split(r"\s*(?:&|\+|\band\b)\s*", raw):
        words = normalise(piece).split()
        if 1 < len(words) <= 3:
            out.extend([words[0], words[-1]])
        elif words and len(out) > 0 and words[0] != out[0]:
            out.append(words[0])
    return [c for c in out if c]


def _load(kind: TermKind, rows: list[dict]) -> Vocabulary:
    entries = {
        row["id"]: Entry(
            id=row["id"],
            label=row["label"],
            wikidata=row.get("wikidata"),
            parents=tuple(row.get("parents", ())),
            synonyms=tuple(str(s) for s in row.get("synonyms", ())),
            requirement=row.get("requirement", True),
        )
        for row in rows
    }
    return Vocabulary(kind=kind, entries=entries)


@cache
def _vocabularies() -> dict[str, Vocabulary]:
    text = resources.files("contracts").joinpath("vocabulary.yaml").read_text("utf-8")
    data = yaml.safe_load(text)
    return {
        "process": _load("process", data["processes"]),
        "material": _load("material", data["materials"]),
    }


def processes() -> Vocabulary:
    return _vocabularies()["process"]


def materials() -> Vocabulary:
    return _vocabularies()["material"]


def vocabulary(kind: TermKind) -> Vocabulary:
    return _vocabularies()[kind]
