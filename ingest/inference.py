"""What making a design takes, where the manifest's process fields say nothing: processes,
materials and sizes read from its files, paths and words. Pure.

Every guess is a Term marked inferred, with the field it came from, the file or words that
gave it and a confidence, so matching weighs it lower and people can see and correct it.
The rules are data (ingest/inference.yaml, over the process ids of
contracts/vocabulary.yaml); this module only applies them. Precision matters as much as
recall, so three readings are refused:
- a machine named in prose without a word of use ("an open CNC mill") is what the design
  *is*, not what making it takes; in a tool list it is a need;
- a process named in the design's own name ("laser cutter", "3D printer") says what the
  design is; only words that something *is made so* ("3D printed") count there;
- a process after a word of capability in its sentence ("it can do laser cutting") is what
  the product does."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Literal

import yaml

from contracts import vocabulary
from contracts.models import Box, Part, Term
from contracts.units import parse_length

Role = Literal["name", "keywords", "tools", "prose", "files", "images"]
Class = Literal["made", "doing", "machines", "folders"]

# How surely a phrase of each class means a need, by the role of the field it is in
# (None: not a need there). Files carry their own confidence in the vocabulary.
CONFIDENCE: dict[Role, dict[Class, float | None]] = {
    "name": {"made": 0.7, "doing": None, "machines": None, "folders": None},
    "keywords": {"made": 0.75, "doing": 0.7, "machines": None, "folders": None},
    "tools": {"made": 0.8, "doing": 0.8, "machines": 0.85, "folders": None},
    "prose": {"made": 0.65, "doing": 0.5, "machines": 0.6, "folders": None},
    "files": {"made": 0.6, "doing": 0.6, "machines": None, "folders": 0.6},
    "images": {"made": 0.6, "doing": 0.5, "machines": None, "folders": 0.5},
}
# A picture's file type says nothing of the design: only its name is read (an image field
# holding "front.svg" is not a laser-cutting file).
_PICTURE_ONLY = {"images"}
MATERIAL_CONFIDENCE = 0.6
MAX_TEXT = 20_000  # of one field: past this, the rest is not read for evidence
MAX_EVIDENCE = 120


@dataclass(frozen=True)
class Source:
    """One field of a manifest, as its author spelled it, and how to read it."""

    field: str
    role: Role
    values: tuple[str, ...]


@dataclass
class Inference:
    processes: list[Term] = field(default_factory=list)
    materials: list[Term] = field(default_factory=list)
    parts: list[Part] = field(default_factory=list)


@dataclass(frozen=True)
class _Rule:
    process: str
    kind: Class
    phrase: str


@dataclass(frozen=True)
class _Phrasebook:
    """Many phrases as one pattern (one pass over a text, not one per phrase): the longest
    phrase that matches at a place wins ("3D printer" is a machine, not "3D print")."""

    pattern: re.Pattern[str]
    rules: tuple[_Rule, ...]  # the rule of each group, in order

    @classmethod
    def of(cls, rules: Iterable[_Rule]) -> _Phrasebook:
        order = {"made": 0, "doing": 1, "machines": 2, "folders": 3}
        ordered = tuple(sorted(rules, key=lambda r: (-len(r.phrase), order[r.kind])))
        # the word-start check once per place, not once per phrase
        pattern = "|".join(f"({_phrase_pattern(r.phrase, start=False)})" for r in ordered)
        firsts = "".join(sorted({re.escape(r.phrase[0]) for r in ordered if r.phrase}))
        return cls(re.compile(rf"{_WORD_START}(?=[{firsts}])(?:{pattern})" if ordered
                              else r"(?!)"), ordered)

    def find(self, text: str) -> list[tuple[_Rule, tuple[int, int]]]:
        return [(self.rules[m.lastindex - 1], m.span())  # type: ignore[operator]
                for m in self.pattern.finditer(text)]


@dataclass(frozen=True)
class _Rules:
    words: _Phrasebook  # made, doing and machines: read in text
    folders: _Phrasebook  # read in paths only
    files: dict[str, tuple[str, float]]  # ending -> (process, confidence)
    implies: dict[str, tuple[tuple[str, float], ...]]
    machine_use: re.Pattern[str]
    capability: re.Pattern[str]
    product: re.Pattern[str]  # right after a phrase
    product_for: re.Pattern[str]  # "an extractor for" right before one
    negation: re.Pattern[str]
    material_join: re.Pattern[str]
    size_cue: re.Pattern[str]


def infer(sources: Iterable[Source]) -> Inference:
    """Processes, materials and sizes the sources give evidence of, strongest first."""
    rules = _rules()
    sources = list(sources)
    own = _named_processes(s for s in sources if s.role == "name")
    found: dict[str, Term] = {}
    materials: dict[str, Term] = {}
    parts: list[Part] = []
    for source in sources:
        for index, raw in enumerate(source.values):
            where = source.field if len(source.values) == 1 else f"{source.field}[{index}]"
            value = raw[:MAX_TEXT]
            if source.role in ("files", "images"):
                for term in _from_file(rules, value, where, source.role, own):
                    _keep(found, term)
                continue
            for term, span in _from_text(rules, value, where, source.role, own):
                _keep(found, term)
                for material in _materials_after(rules, value, span[1], where):
                    _keep(materials, material)
            if source.role in ("tools", "prose"):
                parts += _sizes(rules, value, where, found)
    for term in list(found.values()):
        for implied in implications(term, rules):
            found.setdefault(implied.id, implied)
    return Inference(
        processes=sorted(found.values(), key=lambda t: -(t.confidence or 0)),
        materials=list(materials.values()),
        parts=parts,
    )


def implications(term: Term, rules: _Rules | None = None) -> list[Term]:
    """What a process brings with it (a PCB made is a PCB populated), marked inferred and
    citing the term it follows from. For stated terms too: the author said PCB."""
    rules = rules or _rules()
    return [_term("process", implied, term.source or "", f"implied by {term.label}",
                  confidence * (term.confidence if term.inferred and term.confidence
                                else 1.0))
            for implied, confidence in rules.implies.get(term.id, ())]


def fold(text: str) -> str:
    """Case and compatibility forms folded; separators kept (phrases span them)."""
    return unicodedata.normalize("NFKC", text).casefold()


def _keep(found: dict[str, Term], term: Term) -> None:
    """The strongest evidence of a term stands; more evidence makes it surer."""
    current = found.get(term.id)
    if current is None:
        found[term.id] = term
        return
    best, other = (term, current) if (term.confidence or 0) > (current.confidence or 0) else (
        current, term)
    surer = min(0.95, (best.confidence or 0) + 0.1 * (other.confidence or 0))
    found[term.id] = best.model_copy(update={"confidence": round(surer, 2)})


def _term(kind: vocabulary.TermKind, entry_id: str, where: str, evidence: str,
          confidence: float) -> Term:
    entry = vocabulary.vocabulary(kind).entries[entry_id]
    return Term(id=entry.id, label=entry.label, inferred=True, source=where,
                evidence=evidence[:MAX_EVIDENCE], confidence=round(confidence, 2))


def _from_file(rules: _Rules, path: str, where: str, role: Role,
               own: frozenset[str]) -> list[Term]:
    lower = fold(path.strip()).rstrip("/ ")
    lower = lower.split("?", 1)[0].split("#", 1)[0]  # a URL's query names no file type
    name = lower.rsplit("/", 1)[-1]
    out = []
    for ending, (process, confidence) in rules.files.items():
        if role not in _PICTURE_ONLY and name.endswith(ending):
            out.append(_term("process", process, where, path.strip(), confidence))
            break
    # folders and file names: "PCB/board.zip", "laser_files/", "Box_Laser_Cut.dxf"; one
    # by one ("PCB/assembly/" is a PCB and its assembly)
    for word in _path_words(lower):
        for rule, (start, end) in rules.words.find(word) + rules.folders.find(word):
            confidence = CONFIDENCE[role].get(rule.kind)
            if confidence is not None and not _refuted(rules, rule, word, start, end, role,
                                                       own):
                out.append(_term("process", rule.process, where, path.strip(), confidence))
    return out


def _path_words(path: str) -> list[str]:
    # The host of a link says nothing of how to make the design ("cnc-kitchen.com").
    if "://" in path:
        path = path.split("://", 1)[1].partition("/")[2]
    pieces = [p for p in path.split("/") if p]
    if pieces and "." in pieces[-1]:
        pieces[-1] = pieces[-1].rsplit(".", 1)[0]
    return pieces


def _from_text(rules: _Rules, text: str, where: str, role: Role,
               own: frozenset[str]) -> list[tuple[Term, tuple[int, int]]]:
    out = []
    folded = fold(text)
    for rule, (start, end) in rules.words.find(folded):
        confidence = CONFIDENCE[role].get(rule.kind)
        if confidence is None or _refuted(rules, rule, folded, start, end, role, own):
            continue
        out.append((_term("process", rule.process, where, _quote(text, start, end),
                          confidence), (start, end)))
    return out


def _refuted(rules: _Rules, rule: _Rule, text: str, start: int, end: int, role: Role,
             own: frozenset[str]) -> bool:
    """Whether the words around a phrase say it is no need: the precision rules."""
    before = _sentence_before(text, start)
    if rules.negation.search(before[-24:]):
        return True  # "no soldering required", "without a PCB"
    if role == "tools":
        return False  # a tool list names what making takes ("welding helmet" included)
    if rule.kind in ("doing", "machines", "folders") and rule.process in own:
        return True  # the design is such a machine: its name says so
    if rule.kind != "made" and (rules.product.match(text, end)
                                or rules.product_for.search(before[-40:])):
        return True  # "a PCB holder", "a fume extractor for soldering" ("3D printed case"
        # is a case made so: a need)
    if rule.kind == "machines" and role == "prose":
        return not rules.machine_use.search(before[-24:])  # "on a laser cutter"
    return rule.kind == "doing" and role == "prose" and bool(
        rules.capability.search(_PASSIVE.sub(" ", before)))  # "it can do laser cutting"


def _named_processes(names: Iterable[Source]) -> frozenset[str]:
    """Processes whose machine the design's own name states: what it is ("Open CNC Mill").
    (A process named there is not enough: a "logic board" is made as a PCB.)"""
    rules = _rules()
    own = set()
    for source in names:
        for value in source.values:
            for rule, _ in rules.words.find(fold(value)):
                if rule.kind == "machines":
                    own.add(rule.process)
                    own |= vocabulary.processes().ancestors(rule.process)
    return frozenset(own)


# "parts that can be 3D printed": can of the passive is a need, not a capability
_PASSIVE = re.compile(r"\b(?:can|could)\s+be\b")
_SENTENCE_END = re.compile(r"[.!?;\n]\s")


def _sentence_before(text: str, start: int) -> str:
    head = text[max(0, start - 200):start]
    pieces = _SENTENCE_END.split(head)
    return pieces[-1] if pieces else head


def _quote(text: str, start: int, end: int) -> str:
    """The phrase with a few words around it: evidence a person recognises."""
    left = text.rfind(" ", 0, max(0, start - 30)) + 1
    right = text.find(" ", min(len(text), end + 30))
    right = len(text) if right < 0 else right
    return ("…" if left > 0 else "") + " ".join(text[left:right].split()) + (
        "…" if right < len(text) else "")


def _materials_after(rules: _Rules, text: str, end: int, where: str) -> list[Term]:
    """A material named just after a way of making: "laser-cut plywood", "printed in
    PETG", "milled from aluminium"."""
    tail = fold(text[end:end + 60])
    join = rules.material_join.match(tail)
    rest = tail[join.end():] if join else tail
    words = re.findall(r"[\w+-]+", rest)[:3]
    if not words:
        return []
    vocab = vocabulary.materials()
    for size in (2, 1):  # the longer name first: "stainless steel" before "steel"
        if len(words) >= size:
            entry = vocab.resolve(" ".join(words[:size]))
            if entry is not None and len(words[0]) > 1:
                return [_term("material", entry.id, where, _quote(text, end, end + 20),
                              MATERIAL_CONFIDENCE)]
    return []


_TIMES = "[x\u00d7*]"  # x, the multiplication sign, *
_LENGTH = r"(\d+(?:[.,]\d+)?)\s*(mm|cm|m|in|inch|inches|\"|″)(?![a-z])"
_SIZE = re.compile(
    rf"{_LENGTH}(?:\s*{_TIMES}\s*{_LENGTH})?(?:\s*{_TIMES}\s*{_LENGTH})?"
    rf"|(\d+(?:[.,]\d+)?)\s*{_TIMES}\s*(\d+(?:[.,]\d+)?)(?:\s*{_TIMES}\s*(\d+(?:[.,]\d+)?))?"
    rf"\s*(mm|cm|in)(?![a-z])")


MAX_SIZE_CUES = 20  # of one field: a size need is said once or twice, not hundreds of times


def _sizes(rules: _Rules, text: str, where: str, found: dict[str, Term]) -> list[Part]:
    """A size a machine must take, said in words: "a 3D printer with a bed at least 170 mm
    wide", "build volume of 200 x 200 x 150 mm". Only with the machine named in the same
    sentence ("the bed is 1900 mm long" of a bed that is furniture is no need)."""
    folded = fold(text)
    machines = [(rule, span) for rule, span in rules.words.find(folded)
                if rule.kind == "machines"]
    if not machines:
        return []
    out: list[Part] = []
    for cue in list(rules.size_cue.finditer(folded))[:MAX_SIZE_CUES]:
        window = _SENTENCE_END.split(folded[cue.end():cue.end() + 60])[0]
        size = _SIZE.search(window)
        if size is None:
            continue
        start = cue.start() - len(_sentence_before(folded, cue.start()))
        named = [rule for rule, (s, _) in machines if start <= s < cue.start()]
        box = _box(size) if named else None
        if box is None:
            continue
        evidence = _quote(text, cue.start(), cue.end() + size.end())
        process = _term("process", named[-1].process, where, evidence,
                        CONFIDENCE["tools"]["machines"] or 0.6)
        found.setdefault(process.id, process)
        part = Part(name=f"size from {where}", processes=[process], outer_dimensions=box,
                    evidence=evidence[:MAX_EVIDENCE])
        if part not in out:
            out.append(part)
    return out


def _box(size: re.Match[str]) -> Box | None:
    groups = size.groups()
    if groups[0] is not None:
        pairs = [(groups[i], groups[i + 1]) for i in (0, 2, 4) if groups[i] is not None]
    else:
        unit = groups[9]
        pairs = [(groups[i], unit) for i in (6, 7, 8) if groups[i] is not None]
    try:
        sides = [parse_length(f"{n.replace(',', '.')} {u}", default_unit="mm", field="size")
                 for n, u in pairs]
    except ValueError:
        return None
    if not sides or any(s <= 0 or s > 100_000 for s in sides):
        return None
    sides += [None] * (3 - len(sides))  # type: ignore[list-item]
    return Box(x_mm=sides[0], y_mm=sides[1], z_mm=sides[2])


_WORD_START = r"(?<![^\W_])"


def _phrase_pattern(phrase: str, *, start: bool = True) -> str:
    words = fold(phrase).split()
    parts = []
    for word in words:
        open_end = word.endswith("*")
        body = re.escape(word.rstrip("*"))
        parts.append(body + (r"[^\W_]*" if open_end else ""))
    # "_" separates words too: file names are snake_case ("Box_Laser_Cut.dxf")
    return (_WORD_START if start else "") + r"[\s_\-]*".join(parts) + r"(?![^\W_])"


def _alternatives(phrases: Iterable[str]) -> re.Pattern[str]:
    ordered = sorted({fold(p) for p in phrases}, key=len, reverse=True)
    return re.compile("|".join(_phrase_pattern(p) for p in ordered))


@cache
def _rules() -> _Rules:
    text = resources.files("ingest").joinpath("inference.yaml").read_text("utf-8")
    data = yaml.safe_load(text)
    known = vocabulary.processes().entries
    phrases: list[_Rule] = []
    files: dict[str, tuple[str, float]] = {}
    implies: dict[str, tuple[tuple[str, float], ...]] = {}
    for process, spec in data["inference"].items():
        if process not in known:
            raise ValueError(f"inference rule for unknown process {process!r}")
        implies[process] = tuple((p, float(c)) for p, c in (spec.get("implies") or {}).items())
        for ending, confidence in (spec.get("files") or {}).items():
            files[fold(ending)] = (process, float(confidence))
        for kind in ("made", "doing", "machines", "folders"):
            for phrase in spec.get(kind) or ():
                phrases.append(_Rule(process, kind, fold(str(phrase))))
    # longer endings first: ".kicad_pcb" before ".pcb"
    files = dict(sorted(files.items(), key=lambda kv: -len(kv[0])))
    return _Rules(
        words=_Phrasebook.of(r for r in phrases if r.kind != "folders"),
        folders=_Phrasebook.of(r for r in phrases if r.kind == "folders"),
        files=files,
        implies=implies,
        machine_use=_alternatives(data["machine_use"]),
        capability=_alternatives(data["capability"]),
        product=re.compile(r"[\s_\-]*(?:" + _alternatives(data["products"]).pattern + ")"),
        product_for=re.compile(r"(?:" + _alternatives(data["products"]).pattern
                               + r")\s+(?:for|für|pour|para)\s+(?:the\s+|a\s+)?$"),
        negation=re.compile(r"(?:" + _alternatives(data["negation"]).pattern
                            + r")(?:\s+\w+)?[\s_\-]*$"),
        material_join=re.compile(r"\s*(?:" + "|".join(
            re.escape(j) for j in sorted(data["material_joins"], key=len, reverse=True))
            + r")\s+"),
        size_cue=_alternatives(data["size_cues"]),
    )
