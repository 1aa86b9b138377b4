"""Match changes: the pairs (design, facility) one registry change made match (found) or
stop matching (withdrawn), with the reasons. Pure: encoding and decoding both live here.

One MATCHES message per change, in numbered pieces under the server's largest message.
What a change's pairs share is written once per piece: the cause, the changed entity, a
table of the distinct reasons its pairs give and of the distinct process lists of its
designs; a pair holds only its counterpart (id, version, place or process list), its
score and the indexes of its reasons. The piece is JSON compressed with zlib
(`Content-Encoding: deflate`): about 25 bytes a pair where one event per pair took 882.

`match_events` rebuilds every pair as the MatchEvent webhook bodies carry (with its
explanation and the id a per-pair event always had), from the message alone.

MatchChange and MatchEvent are the one definition of both shapes: the JSON Schemas
(contracts/schemas/match-*.schema.json) and the AsyncAPI documents are generated from them;
the encoder's rows and match_event's entries are written by hand for speed, and
tests/unit/test_match_changes.py holds them to the models on real data."""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, NamedTuple, get_args

import orjson
from pydantic import BaseModel, ConfigDict, Field, model_validator

from contracts.events import EntityKind
from contracts.models import EntityId

MATCHES_STREAM = "MATCHES"
MATCHES_SUBJECTS = "matches.>"
MATCHES_DUPLICATE_WINDOW_S = 20 * 60
MATCHES_MAX_AGE_S = 30 * 24 * 3600
# 16 GiB: fits a 20 GiB volume with room for JetStream's indexes and compaction. At about
# 25 bytes a pair that is ~600 million pairs, more than a month of steady use.
MATCHES_MAX_BYTES = 16 * 1024**3
SCHEMA_VERSION = 2
EVENT_SCHEMA_VERSION = 1  # a MatchEvent's (MATCHES carried one a pair before version 2)
ENCODING_HEADER = "Content-Encoding"
ENCODING = "deflate"  # zlib's format, as HTTP's "deflate" means
MESSAGE_ID_PATTERN = r"^[0-9a-f]{32}$"  # a piece's id, also its Nats-Msg-Id

# Bounds on what grows with the input, so that every pair fits a piece whatever it is made
# of: a design of 5,000 sized parts explains its 63 most telling requirements and counts
# the rest; a 1,000-character label is cut to 200 characters and 400 bytes; a pair's
# explanation takes at most 16 KB, or a quarter of a (small) piece.
MAX_REASONS = 64
MAX_TEXT = 200
MAX_TEXT_BYTES = 400
MAX_EXPLANATION_BYTES = 16 * 1024
MAX_PROCESSES = 100
MAX_DECODED = 64 * 1024 * 1024  # NATS's largest max_payload: no piece is larger unpacked


def headroom(max_bytes: int) -> int:
    """Room kept under max_payload for the headers and zlib's worst case (0.1 %)."""
    return 1024 + max_bytes // 500

Outcome = Literal["met", "weak", "unknown", "unmet"]
RequirementKind = Literal["status", "process", "material", "size", "more"]
MatchKind = Literal["found", "withdrawn"]
MATCH_KINDS: tuple[MatchKind, ...] = get_args(MatchKind)
# A MatchEvent's type, what subscriptions filter on: "matches." and its MatchKind (a test
# holds the two together; a Literal cannot be derived from another).
MatchEventType = Literal["matches.found", "matches.withdrawn"]
MATCH_EVENT_TYPES: tuple[MatchEventType, ...] = get_args(MatchEventType)
_SEVERITY = {"unmet": 0, "unknown": 1, "weak": 2, "met": 3}


class Requirement(BaseModel):
    """One thing a design needs, and how the facility answers it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: RequirementKind = Field(
        description="more: the requirements an explanation bounded for size leaves out")
    need: str = Field(description="what is needed: a process or material id, a part, 'active'")
    outcome: Outcome
    by: str | None = Field(None, description="what meets it: equipment, process, material")
    note: str | None = None


class Cause(BaseModel):
    """The registry change that moved the matches: the entity and its event."""

    model_config = ConfigDict(extra="forbid")

    entity: EntityKind
    entity_id: EntityId
    version: int
    event_id: str | None = None
    occurred_at: datetime | None = None


class MatchEvent(BaseModel):
    """One pair, as a webhook body's entry carries it (rebuilt by match_events)."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = EVENT_SCHEMA_VERSION
    event_id: str
    type: MatchEventType
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


class ChangedDesign(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: EntityId
    version: int
    processes: list[str] = Field(description="the processes it needs (vocabulary ids)")


class ChangedFacility(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: EntityId
    version: int
    lat: float | None = None
    lon: float | None = None


class Pair(BaseModel):
    """The counterpart of the changed entity: a facility (with lat, lon) for a design
    change, a design (with p) for a facility change."""

    model_config = ConfigDict(extra="forbid")

    id: EntityId
    v: int = Field(description="the counterpart's version")
    s: float = Field(ge=0, le=1, description="score (0 for a withdrawn pair)")
    r: list[int] = Field(description="indexes into reasons: the explanation, in order")
    lat: float | None = None
    lon: float | None = None
    p: int | None = Field(None, description="index into process_sets: the design's processes")


class MatchChange(BaseModel):
    """One piece of the match difference of one registry change. Subject
    matches.<design|facility>.<id of the changed entity>; Nats-Msg-Id is message_id;
    the payload is this JSON compressed with zlib (header Content-Encoding: deflate)."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[2] = 2
    message_id: str = Field(pattern=MESSAGE_ID_PATTERN,
                            description="a hash of the piece's content: the same for a "
                            "replay of the same piece, another for any other content")
    partition: int = Field(0, ge=0, description="the matcher partition that made it: a "
                           "facility change comes from each partition, with its designs")
    piece: int = Field(ge=0, description="this piece's number, from 0, within the partition's")
    pieces: int = Field(ge=1)
    cause: Cause
    design: ChangedDesign | None = Field(None, description="the changed design")
    facility: ChangedFacility | None = Field(None, description="the changed facility")
    reasons: list[Requirement]
    process_sets: list[list[str]] = []
    found: list[Pair] = []
    withdrawn: list[Pair] = []

    @model_validator(mode="after")
    def _consistent(self) -> MatchChange:
        """What a reader indexes must be there: the changed entity of the cause's kind,
        every reason and process-set index in its table, each pair of its side's shape."""
        design = self.cause.entity is EntityKind.design
        if (self.design is None) == design or (self.facility is None) != design:
            raise ValueError(f"a {self.cause.entity} change names that entity, only")
        reasons, sets = len(self.reasons), len(self.process_sets)
        for pair in (*self.found, *self.withdrawn):
            if any(not 0 <= i < reasons for i in pair.r):
                raise ValueError(f"pair {pair.id}: a reason index outside the table")
            if design != (pair.p is None) or (pair.p is not None and not 0 <= pair.p < sets):
                raise ValueError(f"pair {pair.id}: no process set of its own")
        if self.piece >= self.pieces:
            raise ValueError("piece number past the count")
        return self


def match_event_id(kind: MatchKind, design_id: str, design_version: int, facility_id: str,
                   facility_version: int) -> str:
    """The same transition always gets the same id: a receiver's key across replays."""
    key = f"{kind}|{design_id}|{design_version}|{facility_id}|{facility_version}"
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def change_subject(entity: EntityKind, entity_id: str) -> str:
    return f"matches.{entity}.{entity_id}"


# encoding (the matcher)

class Reason(NamedTuple):
    """One requirement and how it is answered: Requirement's fields (a test holds them
    together), as a tuple, because a fan-out builds one per requirement of every
    transition, and a piece's table of reasons is keyed by them."""

    kind: RequirementKind
    need: str
    outcome: Outcome
    by: str | None = None
    note: str | None = None

    def as_dict(self) -> dict[str, str | None]:
        return reason_dict(self)


@dataclass(slots=True)
class PairOut:
    """One transition as the matcher hands it over: the counterpart and its answer."""

    kind: MatchKind
    id: str
    version: int
    score: float
    reasons: Sequence[Reason]
    lat: float | None = None  # a facility counterpart's place
    lon: float | None = None
    processes: tuple[str, ...] | None = None  # a design counterpart's processes


@dataclass(frozen=True, slots=True)
class Piece:
    subject: str
    message_id: str
    payload: bytes
    found: int
    withdrawn: int

    @property
    def headers(self) -> dict[str, str]:
        return {"Nats-Msg-Id": self.message_id, ENCODING_HEADER: ENCODING}


def encode_change(cause: Cause, changed: ChangedDesign | ChangedFacility,
                  pairs: Iterable[PairOut], max_bytes: int, partition: int = 0) -> list[Piece]:
    """The pieces of one change, each at most `max_bytes` (the server's max_payload)
    compressed, and at most `max_bytes - headroom(max_bytes)` before. Pairs go in order of
    kind and counterpart id, so that a replay cuts the same pieces; a piece's id is a hash
    of its content, so that one id never names two contents (a replay under another
    piece size makes other ids: pairs sent twice, which consumers drop by event_id,
    rather than pairs lost). The shared part is written from its models, once a change;
    the rows by hand, as Pair's fields: a fan-out has thousands, and a model each would be
    on the matcher's hot path (tests validate the pieces of real changes instead)."""
    if isinstance(changed, ChangedDesign) != (cause.entity is EntityKind.design):
        raise ValueError(f"a {cause.entity} change names that entity, only")
    budget = max_bytes - headroom(max_bytes)
    entity = cause.entity.value  # orjson takes no str subclass as a key
    head = {"schema_version": SCHEMA_VERSION, "cause": cause.model_dump(mode="json"),
            entity: _bounded_changed(changed, budget // 4)}
    room = budget - _head_size(head, partition)
    # A fan-out's pairs share a few reason tuples (the matcher's Explainer makes one per
    # kind of answer): each is bounded, and each reason measured, once. The pairs hold
    # their tuples alive, so an id stays theirs.
    bounded: dict[int, tuple[Reason, ...]] = {}
    memo = ReasonMemo()
    pieces: list[_Builder] = [_Builder(memo)]
    for pair in sorted(pairs, key=lambda p: (p.kind != "found", p.id)):
        reasons = bounded.get(id(pair.reasons))
        if reasons is None:
            reasons = bounded[id(pair.reasons)] = bound_reasons(
                pair.reasons, explanation_limit(max_bytes), memo)
        if not pieces[-1].fits(pair, reasons, room):
            pieces.append(_Builder(memo))
            pieces[-1].fits(pair, reasons, room)  # (a first pair always fits)
        pieces[-1].add(pair, reasons)
    out = []
    for n, builder in enumerate(pieces):
        body = {**head, "partition": partition, "piece": n, "pieces": len(pieces),
                **builder.columns()}
        message_id = hashlib.sha256(orjson.dumps(body)).hexdigest()[:32]
        payload = zlib.compress(orjson.dumps({**body, "message_id": message_id}), 6)
        if len(payload) > max_bytes - 512:  # never: the budget leaves zlib's worst case
            raise ValueError(f"piece of {len(payload)} bytes over {max_bytes}")
        out.append(Piece(change_subject(cause.entity, cause.entity_id), message_id, payload,
                         len(builder.found), len(builder.withdrawn)))
    return out


def explanation_limit(max_bytes: int) -> int:
    """The bytes one pair's explanation may take in pieces of `max_bytes`: at most
    MAX_EXPLANATION_BYTES, and an eighth of a small piece (whose shared part takes at most
    a quarter), so that any pair fits."""
    return min(MAX_EXPLANATION_BYTES, (max_bytes - headroom(max_bytes)) // 8)


def _head_size(head: Mapping[str, Any], partition: int) -> int:
    """What a piece takes besides its rows and tables: the shared part, its id and
    numbers (at their widest) and the empty lists' brackets."""
    return len(orjson.dumps({**head, "message_id": "0" * 32, "partition": partition,
                             "piece": 10**9, "pieces": 10**9, "reasons": [],
                             "process_sets": [], "found": [], "withdrawn": []}))


# A row's JSON apart from its id and reason indexes is at most this long: the keys, a
# version, a score and two coordinates (a float is at most 24 characters), or a
# process-set index.
ROW_FIXED = 140


class _Builder:
    """One piece's pairs and the tables they index, with its size as JSON so far."""

    def __init__(self, memo: ReasonMemo) -> None:
        self.reasons: dict[Reason, int] = {}
        self.process_sets: dict[tuple[str, ...], int] = {}
        self.found: list[orjson.Fragment] = []
        self.withdrawn: list[orjson.Fragment] = []
        self.size = 0
        self._memo = memo  # shared by a change's pieces
        # what fits() worked out of the pair it was asked about, for add()
        self._tables = 0
        self._processes: tuple[str, ...] | None = None

    def fits(self, pair: PairOut, reasons: Sequence[Reason], room: int) -> bool:
        """Whether the pair surely fits: its row's size is bounded from above (ids are
        [A-Za-z0-9_-], written as they are), what it adds to the tables is exact."""
        tables = sum(self._memo.size(r) for r in reasons if r not in self.reasons)
        processes = self._processes = _bounded_processes(pair.processes)
        if processes is not None and processes not in self.process_sets:
            tables += len(orjson.dumps(processes)) + 1
        self._tables = tables
        digits = len(str(len(self.reasons) + len(reasons))) + 1
        row = len(pair.id) + ROW_FIXED + digits * len(reasons)
        # a piece always takes its first pair: bound_reasons keeps any pair far smaller
        return not (self.found or self.withdrawn) or self.size + row + tables <= room

    def add(self, pair: PairOut, reasons: Sequence[Reason]) -> None:
        """The pair, after fits() was asked about it."""
        table = self.reasons
        indexes = [table.setdefault(r, len(table)) for r in reasons]
        row: dict[str, Any] = {"id": pair.id, "v": pair.version, "s": pair.score, "r": indexes}
        if self._processes is not None:
            sets = self.process_sets
            row["p"] = sets.setdefault(self._processes, len(sets))
        else:
            row["lat"], row["lon"] = pair.lat, pair.lon
        data = orjson.dumps(row)
        self.size += len(data) + 1 + self._tables
        (self.found if pair.kind == "found" else self.withdrawn).append(orjson.Fragment(data))

    def columns(self) -> dict[str, Any]:
        return {"reasons": [reason_dict(r) for r in self.reasons],
                "process_sets": [list(p) for p in self.process_sets],
                "found": self.found, "withdrawn": self.withdrawn}


def reason_dict(r: Reason) -> dict[str, str | None]:
    """A reason as the JSON object an explanation lists."""
    return dict(zip(Reason._fields, r, strict=True))


def _text(value: str | None) -> str | None:
    """At most MAX_TEXT characters and MAX_TEXT_BYTES of JSON (a character may take 4
    bytes, an escaped control character 6)."""
    if value is None or (len(value) <= MAX_TEXT and value.isascii() and value.isprintable()):
        return value  # at most two bytes a character (\" and \\)
    cut = value[:MAX_TEXT]
    while len(orjson.dumps(cut)) > MAX_TEXT_BYTES:
        cut = cut[:len(cut) * 3 // 4]
    return cut if cut == value else cut[:-1] + "\u2026"


class ReasonMemo:
    """What one change's pieces measure of its reasons, kept across its pairs (a fan-out
    repeats a few): a reason cut to the text bounds, a cut reason's bytes in a table."""

    def __init__(self) -> None:
        self._cut: dict[Reason, Reason] = {}
        self._size: dict[Reason, int] = {}

    def cut(self, r: Reason) -> Reason:
        found = self._cut.get(r)
        if found is None:
            found = self._cut[r] = r if all(_text(x) is x for x in r[1:]) else Reason(
                r[0], _text(r[1]) or "", r[2], _text(r[3]), _text(r[4]))
        return found

    def size(self, r: Reason) -> int:
        found = self._size.get(r)
        if found is None:
            found = self._size[r] = len(orjson.dumps(reason_dict(r))) + 1
        return found


def bound_reasons(reasons: Sequence[Reason], limit: int = MAX_EXPLANATION_BYTES,
                  memo: ReasonMemo | None = None) -> tuple[Reason, ...]:
    """At most MAX_REASONS reasons, of at most MAX_TEXT characters a field, taking at most
    `limit` bytes as JSON. Over either, the most telling are kept (unmet first, then
    unknown, weak, met; in their order otherwise) and the rest counted by one reason of
    kind "more" with the worst outcome among them; the matcher's API explains the pair
    in full."""
    memo = memo or ReasonMemo()
    out = [memo.cut(r) for r in reasons]
    if len(out) <= MAX_REASONS and sum(map(memo.size, out)) <= limit:
        return tuple(out)
    order = sorted(range(len(out)), key=lambda i: (_SEVERITY.get(out[i][2], 0), i))
    keep = min(len(out), MAX_REASONS - 1)
    while True:
        rest = order[keep:]
        worst = min((out[i][2] for i in rest), key=lambda o: _SEVERITY.get(o, 0),
                    default="met")
        summary = Reason("more", f"{len(rest)} more requirements", worst, None,
                         "not listed here; GET /v1/match on the matcher explains the "
                         "pair in full")
        bounded = (*(out[i] for i in sorted(order[:keep])), summary)
        if keep == 0 or sum(map(memo.size, bounded)) <= limit:
            return bounded
        keep //= 2


def _bounded_processes(processes: tuple[str, ...] | None) -> tuple[str, ...] | None:
    if processes is None:
        return None
    return tuple(_text(p) or "" for p in processes[:MAX_PROCESSES])


def _bounded_changed(changed: ChangedDesign | ChangedFacility, limit: int) -> dict[str, Any]:
    """The changed entity as the pieces carry it: a design's process list bounded, and
    shortened further if it would take more than `limit` bytes."""
    out = changed.model_dump()
    if isinstance(changed, ChangedDesign):
        processes = list(_bounded_processes(tuple(changed.processes)) or ())
        while processes and len(orjson.dumps(processes)) > limit // 2:
            processes = processes[:len(processes) // 2]
        out["processes"] = processes
    return out


# decoding (any consumer)

def decode(data: bytes, headers: Mapping[str, str] | None) -> dict[str, Any]:
    """A MATCHES message's JSON body, checked against MatchChange (so that everything a
    reader indexes is there). Raises ValueError (pydantic's ValidationError is one) when
    it is not one: not zlib, larger than any piece unpacked, not JSON, not our schema."""
    if (headers or {}).get(ENCODING_HEADER) == ENCODING:
        inflate = zlib.decompressobj()
        try:
            data = inflate.decompress(data, MAX_DECODED)
        except zlib.error as exc:
            raise ValueError(f"not deflate data: {exc}") from None
        if inflate.unconsumed_tail:
            raise ValueError(f"unpacks to more than {MAX_DECODED} bytes")
    change = orjson.loads(data)  # orjson.JSONDecodeError is a ValueError
    if not isinstance(change, dict) or change.get("schema_version") != SCHEMA_VERSION:
        raise ValueError("not a match change of schema version 2")
    MatchChange.model_validate(change)
    return change


@dataclass(slots=True)
class PairView:
    """A pair of a decoded change with what routing asks of it; `row` is its raw entry.
    (Not frozen: a change has thousands, and a frozen dataclass's __init__ costs twice.)"""

    kind: MatchKind
    design_id: str
    design_version: int
    facility_id: str
    facility_version: int
    facility_lat: float | None
    facility_lon: float | None
    design_processes: Sequence[str]
    row: Mapping[str, Any]

    @property
    def type(self) -> MatchEventType:
        return f"matches.{self.kind}"  # type: ignore[return-value]


def pairs(change: Mapping[str, Any]) -> list[PairView]:
    """Every pair of a decoded change, found ones first: a pair's place in this list is
    its number (pair_at). Raises KeyError, TypeError or IndexError (all LookupError or
    TypeError) on a malformed one."""
    found = change.get("found") or ()
    return [_view(change, "found" if n < len(found) else "withdrawn", row)
            for n, row in enumerate([*found, *(change.get("withdrawn") or ())])]


def pair_at(change: Mapping[str, Any], n: int) -> PairView:
    """pairs(change)[n], without making the others."""
    found = change.get("found") or ()
    if n < len(found):
        return _view(change, "found", found[n])
    return _view(change, "withdrawn", change["withdrawn"][n - len(found)])


def _view(change: Mapping[str, Any], kind: MatchKind, row: Mapping[str, Any]) -> PairView:
    design = change.get("design")
    if design is not None:
        return PairView(kind, design["id"], design["version"], row["id"],
                        row["v"], row.get("lat"), row.get("lon"), design["processes"], row)
    facility = change["facility"]
    return PairView(kind, row["id"], row["v"], facility["id"],
                    facility["version"], facility.get("lat"), facility.get("lon"),
                    change["process_sets"][row["p"]], row)


def match_event(change: Mapping[str, Any], pair: PairView,
                event_id: str | None = None) -> dict[str, Any]:
    """The pair as one MatchEvent (a webhook body's entry), explanation included;
    `event_id`, when the caller knows it, spares working it out again. By hand, as
    MatchEvent's fields: routing makes one per pair a subscription wants, too many to
    validate each (tests validate those of real changes)."""
    reasons = change["reasons"]
    return {
        "schema_version": EVENT_SCHEMA_VERSION,
        "event_id": event_id or match_event_id(pair.kind, pair.design_id,
                                               pair.design_version, pair.facility_id,
                                               pair.facility_version),
        "type": pair.type, "design_id": pair.design_id,
        "design_version": pair.design_version, "facility_id": pair.facility_id,
        "facility_version": pair.facility_version, "score": pair.row["s"],
        "explanation": [reasons[i] for i in pair.row["r"]],
        "facility_lat": pair.facility_lat, "facility_lon": pair.facility_lon,
        "design_processes": list(pair.design_processes), "cause": change["cause"],
    }


def match_events(change: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every pair of a decoded change as a MatchEvent dict."""
    for pair in pairs(change):
        yield match_event(change, pair)
