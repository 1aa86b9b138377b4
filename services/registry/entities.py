"""From a request body to a normalized entity and the columns that index it. Pure."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from contracts import vocabulary
from contracts.events import EntityKind
from contracts.models import Design, Facility
from ingest.documents import format_of, parse_document
from ingest.identity import document_id
from ingest.okh import read_design
from ingest.okw import read_facility
from ingest.record import kind_of_document


@dataclass(frozen=True)
class Prepared:
    entity: Design | Facility
    data_json: str
    manifest: str
    media_type: str
    content_hash: str

    @property
    def processes(self) -> list[str]:
        return sorted({t.id for t in self.entity.processes})

    @property
    def materials(self) -> list[str]:
        return sorted({t.id for t in self.entity.materials})

    @property
    def search_text(self) -> str:
        e = self.entity
        words = [e.name, getattr(e, "description", None) or "", *getattr(e, "keywords", [])]
        words += [t.label for t in e.processes] + [t.label for t in e.materials]
        return " ".join(words)[:100_000]

    @property
    def position(self) -> tuple[float | None, float | None]:
        if isinstance(self.entity, Facility):
            return self.entity.location.lat, self.entity.location.lon
        return None, None


def prepare(kind: EntityKind | None, raw: bytes, media_type: str | None,
            entity_id: str | None) -> Prepared:
    """Parse and normalize one body; raises InvalidInput and nothing else. With no kind,
    the document says which it is (an OKH manifest names a design)."""
    fmt = format_of(media_type)
    doc = parse_document(raw, fmt)
    if kind is None:
        kind = kind_of_document(doc, "")
    chosen = entity_id or document_id(kind, doc)
    entity: Design | Facility = (
        read_design(doc, design_id=chosen) if kind is EntityKind.design
        else read_facility(doc, facility_id=chosen)
    )
    manifest = raw.decode("utf-8-sig")
    # pydantic writes fields in declaration order, so equal entities give equal text
    data_json = entity.model_dump_json()
    digest = hashlib.sha256(f"{fmt}\x00{manifest}\x00{data_json}".encode()).hexdigest()
    return Prepared(entity, data_json, manifest, fmt, digest)


def expand(kind: vocabulary.TermKind, name: str) -> list[str]:
    """A filter value and every more specific term: process=3d-printing finds FDM too."""
    entry = vocabulary.vocabulary(kind).resolve(name)
    if entry is None:
        return [vocabulary.normalise(name)]
    return sorted(vocabulary.vocabulary(kind).with_descendants(entry.id))

