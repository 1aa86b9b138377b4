"""Attacks on the match-change contract (contracts.matches), the matcher's cutting of a change
into pieces and the notifier's reading of them. Pure: no NATS, no PostgreSQL.

Found by an adversarial review of the change; tests whose docstring starts with "Was a bug"
show a fault it found (each fixed since), the others hold the properties the format relies
on (determinism, each pair once, pair numbers, routing equal to the per-event code it
replaced)."""

from __future__ import annotations

import hashlib
import random
import zlib
from datetime import UTC
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from contracts import matches, vocabulary
from contracts.matches import (
    Cause,
    ChangedDesign,
    ChangedFacility,
    PairOut,
    PairView,
    encode_change,
    headroom,
)
from contracts.models import Box, Equipment, Part
from services.matcher.checkpoint import Change
from services.matcher.diff import apply_design
from services.matcher.index import CapabilityIndex
from services.matcher.outgoing import change_pieces
from services.matcher.profiles import design_profile, facility_profile
from services.notifier import messages
from services.notifier.consumer import MatchConsumer
from services.notifier.subscriptions import Route, RoutingIndex
from tests.support.builders import design_model, facility_model, term

SMALLEST_PIECE = 4096  # services.matcher.settings: matcher_piece_bytes >= 4096
DESIGN_CAUSE = Cause(entity="design", entity_id="d", version=1, event_id="e",
                     occurred_at="2026-11-30T12:00:00+00:00")
DESIGN = ChangedDesign(id="d", version=1, processes=["fdm"])
FACILITY_CAUSE = Cause(entity="facility", entity_id="lab", version=2)
FACILITY = ChangedFacility(id="lab", version=2, lat=48.85, lon=2.35)
STATUS_MET: matches.Reason = ("status", "active", "met", None, None)


def budget(max_bytes: int) -> int:
    return max_bytes - headroom(max_bytes)


def raw(piece: matches.Piece) -> bytes:
    return zlib.decompress(piece.payload)


def decoded(pieces: list[matches.Piece]) -> list[dict[str, Any]]:
    return [matches.decode(p.payload, p.headers) for p in pieces]


def pair_keys(pieces: list[matches.Piece]) -> list[tuple[str, str, str]]:
    return [(e["type"], e["design_id"], e["facility_id"])
            for c in decoded(pieces) for e in matches.match_events(c)]


def noise(rng: random.Random, n: int) -> str:
    """n printable ASCII characters that JSON writes as they are (no quote, no backslash)
    and zlib hardly shrinks (to ~84 %)."""
    return "".join(rng.choices(_PRINTABLE, k=n))


_PRINTABLE = [chr(c) for c in range(0x20, 0x7F) if chr(c) not in '"\\']


# 1. encode_change: the sizes it promises


def test_every_piece_counts_the_reasons_of_its_first_pair() -> None:
    """Was a bug: a piece after the first one does not count the table entries (reasons, process
    set) of the pair that opened it. `_Builder.fits` records a pair's table cost in
    `self._tables` for `add` to use, but encode_change opens a new builder and calls `add`
    on it without `fits`, so `_tables` is 0: every piece but the first can exceed
    `max_bytes - headroom(max_bytes)` uncompressed by a whole pair's explanation (here
    pieces of 19.0 KB for a 15.3 KB budget: the second pair of each went in uncounted)."""
    limit = 16 * 1024
    pairs = []
    for i in range(60):
        reasons = tuple(("size", f"part {i}-{j} ".ljust(200, "x"), "met",
                         f"printer {j} ".ljust(200, "y"), None) for j in range(20))
        pairs.append(PairOut("found", f"f{i:03d}", 1, 0.5, reasons, lat=1.0, lon=2.0))
    pieces = encode_change(DESIGN_CAUSE, DESIGN, pairs, limit)
    assert len(pieces) >= 2
    assert all(len(p.payload) <= limit for p in pieces)
    sizes = [len(raw(p)) for p in pieces]
    assert all(s <= budget(limit) for s in sizes), (sizes, budget(limit))


def test_long_explanations_at_a_56_kib_piece_size_do_not_stop_the_matcher() -> None:
    """Was a bug (same cause as above, worse effect): with explanations that compress poorly
    (user text: part names, machine labels, unknown process names), the piece whose first
    pair went uncounted compresses to more than max_bytes - 512 and encode_change raises
    ValueError("piece of ... over ..."). change_pieces raises in the matcher's batch, the
    batch is nak'ed and retried from the checkpoint forever: the matcher stalls on that
    change. Four pairs of ~43 KB each, 56 KiB pieces: each pair fits a piece by itself."""
    rng = random.Random(1)
    limit = 56 * 1024
    pairs = [PairOut("found", f"f{i}", 1, 0.5,
                     tuple(("size", noise(rng, 200), "met", noise(rng, 200), noise(rng, 200))
                           for _ in range(matches.MAX_REASONS)), lat=1.0, lon=2.0)
             for i in range(4)]
    assert all(len(orjson.dumps([matches.reason_dict(r) for r in p.reasons]))
               < budget(limit) for p in pairs)  # each pair alone fits a piece
    pieces = encode_change(DESIGN_CAUSE, DESIGN, pairs, limit)
    assert sorted(k[2] for k in pair_keys(pieces)) == ["f0", "f1", "f2", "f3"]


def test_a_real_design_fits_the_smallest_piece_size_the_settings_allow() -> None:
    """Was a bug: README says "whatever its input, a pair fits a piece", encode_change says each
    piece is at most max_bytes - headroom(max_bytes) uncompressed, and the settings accept
    MAKELOCAL_MATCHER_PIECE_BYTES=4096. A design of 70 printed parts (ordinary file-like
    names) explains each pair with 64 reasons, ~9.5 KB of JSON: every piece is three times
    its budget (3,064 bytes). Compressed it still fits here; with less compressible names it
    does not (see the 56 KiB test), and then the matcher stalls. Either the settings' floor
    must be above the largest bounded pair, or bound_reasons must bound bytes."""
    parts = [Part(name=f"{hashlib.sha1(str(i).encode()).hexdigest()[:12]}_bracket.stl",
                  processes=[term("fdm")],
                  outer_dimensions=Box(x_mm=10 + i % 150, y_mm=20 + i % 37, z_mm=5 + i % 11))
             for i in range(70)]
    design = design_model(["fdm"], parts=parts, id_="robot")
    printer = Equipment(equipment_type="printer", make="Prusa Research",
                        model="Original Prusa MK4", processes=[term("fdm")],
                        working_volume=Box(x_mm=250, y_mm=210, z_mm=220))
    labs = [facility_profile(facility_model(["fdm"], equipment=[printer], id_=f"lab-{i}"), 1)
            for i in range(3)]
    index = CapabilityIndex()
    index.load([], labs)
    profile = design_profile(design, 1)
    diff = apply_design(index, "robot", profile, 1)
    change = Change(1, "design", "robot", 1, None, profile, "e-1",
                    "2026-11-30T12:00:00+00:00")
    pieces = change_pieces(diff, change, index, SMALLEST_PIECE)
    assert len(pair_keys(pieces)) == 3
    sizes = [len(raw(p)) for p in pieces]
    assert all(s <= budget(SMALLEST_PIECE) for s in sizes), (sizes, budget(SMALLEST_PIECE))


def test_bound_reasons_bounds_bytes_not_only_characters() -> None:
    """Was a bug: MAX_TEXT counts characters. A bounded explanation of 64 reasons whose texts are
    200 emoji (4 bytes each in UTF-8) or 200 control characters (6 bytes each, as JSON's
    \\u00XX) is ~150-230 KB: one pair does not fit a piece of 64 KiB, nor of anything under
    ~256 KiB, although the settings accept 4 KiB. Part names and machine labels are user
    text (ShortText: 1,000 characters of anything)."""
    for char in ("\U0001F600", "\x01"):
        text = char * 300
        reasons = [("size", f"{i:03d} {text}", "met", text, text) for i in range(100)]
        bounded = matches.bound_reasons(reasons)
        assert len(bounded) <= matches.MAX_REASONS
        assert all(len(x or "") <= matches.MAX_TEXT for r in bounded for x in r[1:])
        table = orjson.dumps([matches.reason_dict(r) for r in bounded])
        assert len(table) <= budget(64 * 1024), len(table)


def test_a_design_needing_many_processes_at_the_smallest_piece_size() -> None:
    """Was a bug: encode_change raises ValueError when the shared part (cause and changed entity)
    takes more than a quarter of the budget. At the 4 KiB piece size the settings accept,
    that is 766 bytes: a design needing the ~25 longest of the vocabulary's 34 processes
    (known ids, nothing hostile) is refused, and the matcher's batch fails and is retried
    forever."""
    ids = sorted(vocabulary.processes().entries, key=len)[-25:]
    design = ChangedDesign(id="d" * 64, version=1, processes=ids)
    cause = DESIGN_CAUSE.model_copy(update={"entity_id": "d" * 64, "event_id": "e" * 32})
    pair = PairOut("found", "f", 1, 0.5, (STATUS_MET,), lat=1.0, lon=2.0)
    pieces = encode_change(cause, design, [pair], SMALLEST_PIECE)
    assert len(pieces) == 1


def test_a_pieces_own_fields_are_counted() -> None:
    """BUG (small): encode_change counts `len(head) + 120` bytes for the shared part, but
    message_id (32 characters), partition, piece, pieces and the keys of reasons,
    process_sets, found and withdrawn take 137 bytes and their digits. With rows at the
    widest the 140-byte row bound allows (24-character floats, 20-digit versions), a piece
    ends up 11 (partition 0) to ~30 bytes over max_bytes - headroom(max_bytes) uncompressed.
    Only adversarial numbers reach it: realistic rows leave ~50 bytes of the bound unused."""
    limit = SMALLEST_PIECE
    ids = [f"{i:04d}".rjust(7, "x") for i in range(400)]
    pairs = [PairOut("found", i, -2**63, -1.2345678901234567e-300, (STATUS_MET,),
                     lat=-1.2345678901234567e-300, lon=-1.2345678901234567e-300) for i in ids]
    first = encode_change(DESIGN_CAUSE, DESIGN, pairs, limit)[0]
    assert len(raw(first)) <= budget(limit), (len(raw(first)), budget(limit))


# Properties: each pair once, the same pieces whatever the order, under max_bytes, readable

ENTITY_ID = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-",
                    min_size=1, max_size=64)
TEXT = st.one_of(st.none(), st.text(max_size=40),
                 st.sampled_from(["\U0001F600" * 250, "\x00\x01\"\\" * 60, "é" * 300]))
REASON = st.tuples(st.sampled_from(["status", "process", "material", "size"]),
                   TEXT.map(lambda t: t or ""),
                   st.sampled_from(["met", "weak", "unknown", "unmet"]), TEXT, TEXT)
NUMBER = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True),
                   st.sampled_from([-1.2345678901234567e-300, 0.30000000000000004]))


@st.composite
def changes(draw: st.DrawFn) -> tuple[str, list[PairOut], int]:
    entity = draw(st.sampled_from(["design", "facility"]))
    pool = draw(st.lists(st.lists(REASON, max_size=8).map(tuple), min_size=1, max_size=4))
    found_ids = draw(st.sets(ENTITY_ID, max_size=40))
    withdrawn_ids = draw(st.sets(ENTITY_ID, max_size=40))
    process_pool = [("fdm",), ("fdm", "laser-cutting"), tuple(f"p{i}" for i in range(150)),
                    ("\U0001F600" * 300,)]
    pairs = []
    for kind, ids in (("found", sorted(found_ids)), ("withdrawn", sorted(withdrawn_ids))):
        for i in ids:
            reasons = pool[draw(st.integers(0, len(pool) - 1))]
            if draw(st.booleans()):
                reasons = list(reasons)  # equal content, another object
            version = draw(st.integers(-2**63, 2**63 - 1))
            score = draw(st.floats(0, 1))  # scores are in [0, 1]; decode refuses others
            if entity == "design":
                pairs.append(PairOut(kind, i, version, score, reasons,
                                     lat=draw(NUMBER), lon=draw(NUMBER)))
            else:
                pairs.append(PairOut(kind, i, version, score, reasons,
                                     processes=draw(st.sampled_from(process_pool))))
    max_bytes = draw(st.sampled_from([SMALLEST_PIECE, 8192, 65536]))
    return entity, pairs, max_bytes


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(changes(), st.randoms(use_true_random=False))
def test_pieces_hold_each_pair_once_are_deterministic_and_readable(
        change: tuple[str, list[PairOut], int], rnd: random.Random) -> None:
    """Holds: every pair in exactly one piece, rebuilt with its own id and its bounded
    reasons; a shuffled input cuts byte-identical pieces (replay dedupe relies on it);
    compressed pieces under max_bytes; pairs() and pair_at() agree on every number."""
    entity, pairs, max_bytes = change
    cause = DESIGN_CAUSE if entity == "design" else FACILITY_CAUSE
    changed = DESIGN if entity == "design" else FACILITY
    pieces = encode_change(cause, changed, pairs, max_bytes)
    assert all(len(p.payload) <= max_bytes for p in pieces)
    shuffled = pairs[:]
    rnd.shuffle(shuffled)
    again = encode_change(cause, changed, shuffled, max_bytes)
    assert [(p.message_id, p.payload) for p in again] == [
        (p.message_id, p.payload) for p in pieces]
    seen = []
    for n, c in enumerate(decoded(pieces)):
        assert (c["piece"], c["pieces"]) == (n, len(pieces))
        views = matches.pairs(c)
        for k, view in enumerate(views):
            assert matches.pair_at(c, k) == view
            seen.append((view.kind, view.row["id"]))
            event = matches.match_event(c, view)
            assert event["type"] == f"matches.{view.kind}"
        with pytest.raises(LookupError):
            matches.pair_at(c, len(views))
    assert sorted(seen) == sorted((p.kind, p.id) for p in pairs)
    by_key = {(p.kind, p.id): p for p in pairs}
    for c in decoded(pieces):
        for view in matches.pairs(c):
            event = matches.match_event(c, view)
            expected = matches.bound_reasons(by_key[(view.kind, view.row["id"])].reasons,
                                             matches.explanation_limit(max_bytes))
            assert [tuple(r.values()) for r in event["explanation"]] == [
                tuple(r) for r in expected]


def test_a_score_that_is_not_a_number_is_refused_where_it_is_read() -> None:
    """orjson writes NaN and infinity as null. A null coordinate is a place unknown (the
    pair is read); a null score is no MatchChange: decode refuses it with a reason rather
    than hand a consumer a score of None. (The matcher's scores and places are finite:
    rules round them, the registry bounds lat/lon.)"""
    pair = PairOut("found", "f", 1, 0.5, (STATUS_MET,), lat=float("inf"), lon=None)
    [change] = decoded(encode_change(DESIGN_CAUSE, DESIGN, [pair], SMALLEST_PIECE))
    assert change["found"][0]["lat"] is None
    bad = encode_change(DESIGN_CAUSE, DESIGN, [PairOut("found", "f", 1, float("nan"),
                                                       (STATUS_MET,))], SMALLEST_PIECE)
    with pytest.raises(ValueError, match=r"found\.0\.s"):
        decoded(bad)


# 2. bound_reasons


def test_the_summary_does_not_hide_an_unmet_requirement() -> None:
    """Was a bug: past 64 reasons, bound_reasons keeps only the FIRST 32 non-size reasons and
    drops the rest silently: they are counted in "N more requirements" but not in its
    `worst` outcome (taken over the dropped size reasons only), and the summary says
    kind "size". A design with 40 materials and 30 sized parts whose 38th material is
    unmet (the reason the pair was withdrawn) is explained as all met."""
    reasons = [STATUS_MET, ("process", "fdm", "met", "fdm", None)]
    reasons += [("material", f"m{i}", "unmet" if i == 37 else "met", f"m{i}", None)
                for i in range(40)]
    reasons += [("size", f"part {i}", "met", "printer", None) for i in range(30)]
    bounded = matches.bound_reasons(reasons)
    assert len(bounded) <= matches.MAX_REASONS
    assert any(r[2] == "unmet" for r in bounded), bounded[-1]


def test_the_summary_counts_what_it_leaves_out() -> None:
    """Holds: what is listed plus what the summary counts is every requirement."""
    for n_fixed, n_size in ((1, 5000), (10, 60), (63, 3), (100, 0), (0, 65)):
        reasons = [("process", f"p{i}", "met", None, None) for i in range(n_fixed)]
        reasons += [("size", f"s{i}", "weak", None, None) for i in range(n_size)]
        bounded = matches.bound_reasons(reasons)
        *listed, summary = bounded
        assert summary[1].endswith(" more requirements")
        assert len(listed) + int(summary[1].split()[0]) == n_fixed + n_size


# 3. decode and the notifier's consumer on hostile messages


def test_decode_bounds_what_a_small_payload_may_expand_to() -> None:
    """Was a bug: decode calls zlib.decompress with no limit. A 32 KB payload expands to 32 MB
    here (zlib reaches ~1000:1), so one 1 MB message (the server's max_payload) becomes
    ~1 GB in the notifier's memory, plus orjson's parse of it: out of memory, then the
    message is redelivered to the next process. No real piece is larger than max_payload
    uncompressed (encode_change's budget), so decode can refuse much less than this."""
    body = b'{"schema_version":2,"message_id":"m",' + b" " * (32 * 1024 * 1024) + b'"x":1}'
    bomb = zlib.compress(body, 9)
    assert len(bomb) < 64 * 1024
    with pytest.raises(ValueError):
        matches.decode(bomb, {matches.ENCODING_HEADER: matches.ENCODING})


class _Msg(SimpleNamespace):
    pass


def consumer(*routes: Route) -> MatchConsumer:
    """The notifier's consumer without NATS or PostgreSQL: only its _items is used."""
    nc = SimpleNamespace(jetstream=lambda: None)
    metrics = SimpleNamespace(pairs=SimpleNamespace(inc=lambda n: None))
    c = MatchConsumer(nc, None, metrics, durable="x")  # type: ignore[arg-type]
    c.index = RoutingIndex(routes or [Route.of("everyone", {})])
    return c


def message(change: dict[str, Any]) -> _Msg:
    return _Msg(data=zlib.compress(orjson.dumps(change)), subject="matches.design.d",
                headers={matches.ENCODING_HEADER: matches.ENCODING})


def good_change() -> dict[str, Any]:
    [c] = decoded(encode_change(DESIGN_CAUSE, DESIGN, [
        PairOut("found", "f1", 1, 0.5, (STATUS_MET,), lat=1.0, lon=2.0),
        PairOut("withdrawn", "f2", 1, 0.0, (STATUS_MET, ("process", "fdm", "unmet", None,
                                                          None)), lat=1.0, lon=2.0)],
        SMALLEST_PIECE))
    return c


def render(c: MatchConsumer, msg: _Msg) -> list[Any]:
    """What the consumer would store, then what assembly would render from it."""
    _, rows = c._items(msg)  # type: ignore[arg-type]
    stored = {m: messages.decode_stored(msg.data, matches.ENCODING) for _, _, m, _, _ in rows}
    return messages.item_events([(None, m, n, e) for _, e, m, n, _ in rows], stored)


def test_a_good_message_is_routed_and_rendered() -> None:
    """Holds: the fake consumer reads a real piece; both pairs render."""
    events = render(consumer(), message(good_change()))
    assert [e["facility_id"] for e in events] == ["f1", "f2"]
    assert [e["type"] for e in events] == ["matches.found", "matches.withdrawn"]


def _bad_reason_index(c: dict) -> None:
    c["found"][0]["r"] = [7]


def _negative_reason_index(c: dict) -> None:
    c["found"][0]["r"] = [-1]  # renders the withdrawn pair's "unmet" reason


def _no_score(c: dict) -> None:
    del c["found"][0]["s"]


def _no_reasons(c: dict) -> None:
    del c["reasons"]


def _no_cause(c: dict) -> None:
    del c["cause"]


def _string_reasons(c: dict) -> None:
    c["found"][0]["r"] = "0"


@pytest.mark.parametrize("spoil", [_bad_reason_index, _negative_reason_index, _no_score,
                                   _no_reasons, _no_cause, _string_reasons])
def test_a_message_the_consumer_accepts_can_be_rendered(spoil: Any) -> None:
    """Was a bug: the consumer checks only what routing reads (ids, versions, places, process
    sets); reason indexes, scores, the reasons table and the cause are first read when
    assembly renders the webhook body. A message broken there is stored and its items
    queued; then assemble_webhooks raises (IndexError, KeyError, TypeError) inside the
    transaction that renders EVERY ready subscription's batch, the dispatcher restarts,
    and tries again: no webhook goes out any more, for anyone. A negative index renders
    another reason silently. Malformed messages must be refused at the door (the consumer
    skips what raises ValueError/LookupError/TypeError)."""
    change = good_change()
    spoil(change)
    c = consumer()
    try:
        c._items(message(change))  # type: ignore[arg-type]
    except (ValueError, LookupError, TypeError):
        return  # refused and skipped: fine
    events = render(c, message(change))  # raises here: the dispatcher's restart loop
    for e in events:
        matches.MatchEvent.model_validate(e)
    assert events[0]["explanation"] == [{"kind": "status", "need": "active", "outcome": "met",
                                         "by": None, "note": None}]


def test_a_process_set_index_out_of_range_is_refused() -> None:
    """Holds: pairs() reads a facility change's process set, so a bad index is refused."""
    [change] = decoded(encode_change(FACILITY_CAUSE, FACILITY, [
        PairOut("found", "d1", 1, 0.5, (STATUS_MET,), processes=("fdm",))], SMALLEST_PIECE))
    change["found"][0]["p"] = 3
    with pytest.raises(ValueError, match="no process set"):
        consumer()._items(message(change))  # type: ignore[arg-type]


@pytest.mark.parametrize("field,value", [
    ("cause", b'"not a mapping"'), ("cause", b"[1]"),
    ("message_id", b"[" * 1000 + b'"x"' + b"]" * 1000),  # orjson reads 1,024 deep
])
def test_only_the_caught_exceptions_escape_the_consumer(field: str, value: bytes) -> None:
    """Was a bug: a `cause` that is a truthy non-mapping made _occurred_at call .get on
    it (AttributeError), a message_id nested 1,000 deep made str() raise RecursionError;
    either failed the whole batch, redelivered forever. decode now checks the message
    against MatchChange, and refuses both with a reason."""
    change = good_change()
    change[field] = "PLACEHOLDER"
    data = orjson.dumps(change).replace(b'"PLACEHOLDER"', value)
    msg = _Msg(data=data, subject="matches.design.d", headers=None)
    with pytest.raises(ValueError, match=field):
        consumer()._items(msg)  # type: ignore[arg-type]


@pytest.mark.parametrize("field,value", [
    ("message_id", "a\x00b"),  # PostgreSQL text holds no NUL
    ("message_id", "".join(random.Random(2).choices("0123456789abcdef", k=4000))),
    ("occurred_at", "0001-01-01T00:00:00+01:00"),  # before year 1 in UTC
    ("occurred_at", "9999-12-31T23:30:00-01:00"),  # after year 9999 in UTC
])
def test_what_the_consumer_accepts_can_be_stored(field: str, value: str) -> None:
    """Was a bug: what _items returns goes straight into PostgreSQL (add_items, outside the
    try that skips bad messages). A message_id with NUL, or longer than a btree entry
    may be (~2,700 bytes, it is match_messages' primary key), or a time of the change
    that asyncpg cannot turn into UTC (datetime.astimezone raises OverflowError) fails
    the INSERT: the batch is nak'ed and redelivered forever. The matcher writes 32 hex
    characters and registry times; the consumer should refuse anything else."""
    change = good_change()
    if field == "occurred_at":
        change["cause"]["occurred_at"] = value
    else:
        change[field] = value
    try:
        _, rows = consumer()._items(message(change))  # type: ignore[arg-type]
    except (ValueError, LookupError, TypeError):
        return
    for _, _, message_id, _, occurred in rows:
        assert "\x00" not in message_id and len(message_id.encode()) <= 2700
        if occurred is not None:
            occurred.astimezone(UTC)


# 4. pair numbers: an item points into a stored message by (message id, pair number)


def _cut(limit: int) -> list[matches.Piece]:
    pairs = [PairOut("found", f"design-{i:05d}", 1, 0.75,
                     (STATUS_MET, ("process", "fdm", "met", "fdm", f"note {i % 7}")),
                     processes=("fdm",)) for i in range(3000)]
    return encode_change(FACILITY_CAUSE, FACILITY, pairs, limit)


def test_a_message_id_names_one_content() -> None:
    """Was a bug: message_id (and Nats-Msg-Id) hashes (entity, id, version, partition, piece
    number) only, and the cut depends on max_bytes = min(server max_payload, PIECE_BYTES).
    A change replayed after a restart under another piece size (the setting changed, or
    the matcher reconnected to a server with another max_payload, or MAKELOCAL_PARTITIONS
    changed a partition's designs) makes pieces with the SAME ids and OTHER pairs.
    The notifier keeps the first body under an id (ON CONFLICT DO NOTHING) and points
    the replay's new items (a subscription made in between) at (id, pair number) of the
    replay: assembly renders another pair, or raises IndexError past its end; the
    Decoded cache, filled from the replay, renders the old items wrongly in turn."""
    first, replay = _cut(32 * 1024), _cut(16 * 1024)
    stored = {p.message_id: p for p in first}  # the notifier's match_messages
    wrong = 0
    for piece in replay:
        if piece.message_id not in stored:
            continue
        kept = matches.decode(stored[piece.message_id].payload, stored[piece.message_id].headers)
        for n, view in enumerate(matches.pairs(matches.decode(piece.payload, piece.headers))):
            try:
                shown = matches.pair_at(kept, n)
            except LookupError:
                wrong += 1
                continue
            wrong += (shown.design_id, shown.kind) != (view.design_id, view.kind)
    assert wrong == 0, f"{wrong} items would render another pair (or none)"


def test_a_replay_under_a_larger_piece_size_loses_no_pair() -> None:
    """BUG (same cause): the matcher is killed between the pieces of a change (README: it
    may be, and replays the batch). It published piece 0 of a 16 KiB cut; restarted with
    32 KiB pieces, its new piece 0 holds more pairs but has the old piece 0's
    Nats-Msg-Id, so JetStream drops it as a duplicate (20 min window): the pairs between
    the two cuts' first pieces never reach MATCHES."""
    before, after = _cut(16 * 1024), _cut(32 * 1024)
    assert len(before) > 1
    stream = {before[0].message_id: before[0]}  # published, then the process died
    for piece in after:
        stream.setdefault(piece.message_id, piece)  # JetStream's duplicate window
    got = {k for k in pair_keys(list(stream.values()))}
    assert len(got) == 3000, f"{3000 - len(got)} pairs lost"


# 5. routing: route_all against the per-event code it replaced, and against the filters

PROCESSES = sorted(vocabulary.processes().entries)
FACILITIES = ["f1", "f2", "f3"]
DESIGNS = ["d1", "d2", "d3"]
EDGE_LATS = [90.0, -90.0, 89.9, -89.95, 0.0]
EDGE_LONS = [180.0, -180.0, 179.99, -179.99, 0.0]
LAT = st.one_of(st.floats(-90, 90), st.sampled_from(EDGE_LATS))
LON = st.one_of(st.floats(-180, 180), st.sampled_from(EDGE_LONS))


@st.composite
def filters(draw: st.DrawFn) -> dict[str, Any]:
    f: dict[str, Any] = {}
    if draw(st.booleans()):
        f["facility_ids"] = draw(st.lists(st.sampled_from(FACILITIES), max_size=2))
    if draw(st.booleans()):
        f["design_ids"] = draw(st.lists(st.sampled_from(DESIGNS), max_size=2))
    if draw(st.booleans()):
        f["processes"] = draw(st.lists(st.sampled_from(PROCESSES), max_size=3))
    if draw(st.booleans()):
        f["region"] = {"lat": draw(LAT), "lon": draw(LON),
                       "radius_km": draw(st.one_of(st.floats(0.5, 20_100),
                                                   st.sampled_from([1.0, 50.0, 500.0])))}
    if draw(st.booleans()):
        f["event_types"] = draw(st.lists(st.sampled_from(["matches.found",
                                                          "matches.withdrawn"]),
                                         min_size=1, max_size=2, unique=True))
    return f


@st.composite
def pair_views(draw: st.DrawFn) -> list[PairView]:
    """A change's pairs: a design change (one design, many facilities and places) or a
    facility change (one facility and place, many designs and process lists)."""
    n = draw(st.integers(1, 8))
    if draw(st.booleans()):
        design, processes = draw(st.sampled_from(DESIGNS)), tuple(
            draw(st.lists(st.sampled_from(PROCESSES), max_size=3)))
        return [PairView(draw(st.sampled_from(["found", "withdrawn"])), design, 1,
                         draw(st.sampled_from(FACILITIES)), 1,
                         *draw(st.one_of(st.tuples(LAT, LON), st.just((None, None)))),
                         processes, {}) for _ in range(n)]
    facility = draw(st.sampled_from(FACILITIES))
    lat, lon = draw(st.one_of(st.tuples(LAT, LON), st.just((None, None))))
    # like a decoded message's process_sets: one list object shared by several pairs
    # (route_all remembers a list by its identity), some equal lists apart
    sets = draw(st.lists(st.lists(st.sampled_from(PROCESSES), max_size=3), min_size=1,
                         max_size=3))
    sets += [list(x) for x in sets]
    return [PairView(draw(st.sampled_from(["found", "withdrawn"])),
                     draw(st.sampled_from(DESIGNS)), 1, facility, 1, lat, lon,
                     sets[draw(st.integers(0, len(sets) - 1))], {})
            for _ in range(n)]


def old_route(index: RoutingIndex, pair: PairView) -> list[str]:
    """RoutingIndex.route as it was before the change (per event, every key looked up)."""
    from contracts.geo import cell

    keys = [("all", None), ("facility", pair.facility_id), ("design", pair.design_id)]
    keys.extend(("process", p) for p in pair.design_processes or ())
    if pair.facility_lat is not None and pair.facility_lon is not None:
        keys.append(("cell", cell(pair.facility_lat, pair.facility_lon)))
    candidates: set[str] = set()
    for key in keys:
        candidates |= index._by.get(key, set())
    return sorted(s for s in candidates if index._routes[s].wants(pair))


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.lists(filters(), max_size=8), pair_views())
def test_route_all_equals_the_per_event_route_it_replaced(
        fs: list[dict[str, Any]], pairs: list[PairView]) -> None:
    """Holds: for every pair of a change, route_all gives what the old route() gave."""
    index = RoutingIndex(Route.of(f"s{i}", f) for i, f in enumerate(fs))
    assert index.route_all(pairs) == [old_route(index, p) for p in pairs]


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.lists(filters(), max_size=8), pair_views())
@example([{"region": {"lat": 0.0, "lon": 179.9, "radius_km": 50.0}}],
         [PairView("found", "d1", 1, "f1", 1, 0.0, 180.0, ("fdm",), {})])
@example([{"region": {"lat": -89.5, "lon": 120.0, "radius_km": 60.0}}],
         [PairView("found", "d1", 1, "f1", 1, -90.0, 0.0, ("fdm",), {})])
def test_route_all_gives_exactly_the_subscriptions_whose_filter_wants_the_pair(
        fs: list[dict[str, Any]], pairs: list[PairView]) -> None:
    """BUG (old, not from this change: route() had it too): a region filed under grid
    cells misses pairs its filter wants. (1) reach() wraps its columns into [-180, 180),
    cell() does not: a facility at lon 180.0 (allowed by Location) is in column 180, which
    no region lists; a region around (0, 179.9, 50 km) never hears of a facility at
    (0, 180), 11 km away. (2) Near a pole the columns are a band of longitudes around the
    centre, but the circle reaches over the pole: a region of 60 km around (-89.5, 120)
    misses the South Pole itself (-90, 0), 56 km away."""
    routes = [Route.of(f"s{i}", f) for i, f in enumerate(fs)]
    index = RoutingIndex(routes)
    assert index.route_all(pairs) == [sorted(r.id for r in routes if r.wants(p))
                                      for p in pairs]


@st.composite
def routed_changes(draw: st.DrawFn) -> dict[str, Any]:
    """A decoded change as the consumer reads it, of either kind."""
    kinds = st.sampled_from(["found", "withdrawn"])
    if draw(st.booleans()):
        processes = draw(st.lists(st.sampled_from(PROCESSES), max_size=3, unique=True))
        pairs = [PairOut(draw(kinds), f, 1, 0.5, (STATUS_MET,),
                         *draw(st.one_of(st.tuples(LAT, LON), st.just((None, None)))))
                 for f in draw(st.sets(st.sampled_from(FACILITIES), min_size=1))]
        changed = ChangedDesign(id="d1", version=1, processes=processes)
        pieces = encode_change(DESIGN_CAUSE.model_copy(update={"entity_id": "d1"}), changed,
                               pairs, 2**20)
    else:
        lat, lon = draw(st.one_of(st.tuples(LAT, LON), st.just((None, None))))
        pairs = [PairOut(draw(kinds), d, 1, 0.5, (STATUS_MET,), processes=tuple(
                     draw(st.lists(st.sampled_from(PROCESSES), max_size=3, unique=True))))
                 for d in draw(st.sets(st.sampled_from(DESIGNS), min_size=1))]
        changed = ChangedFacility(id="f1", version=1, lat=lat, lon=lon)
        pieces = encode_change(FACILITY_CAUSE.model_copy(update={"entity_id": "f1"}), changed,
                               pairs, 2**20)
    [change] = decoded(pieces)
    return change


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.lists(filters(), max_size=8), routed_changes())
def test_route_change_skips_only_pairs_nobody_wants(fs: list[dict[str, Any]],
                                                    change: dict[str, Any]) -> None:
    """route_change, which makes views only of pairs something is filed under, gives the
    same (number, pair, subscriptions) as routing every pair."""
    index = RoutingIndex(Route.of(f"s{i}", f) for i, f in enumerate(fs))
    pairs = matches.pairs(change)
    everything = [(n, p, w) for n, (p, w) in enumerate(zip(pairs, index.route_all(pairs),
                                                           strict=True)) if w]
    assert index.route_change(change) == everything
