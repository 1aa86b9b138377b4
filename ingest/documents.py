"""Bytes of a TOML, YAML or JSON document -> a mapping, or our InvalidInput."""

from __future__ import annotations

import json
import re
import tomllib
from typing import Any

import yaml

from contracts.errors import InvalidInput, Position

MEDIA_TYPES = {
    "application/toml": "toml",
    "text/toml": "toml",
    "text/x-toml": "toml",
    "application/yaml": "yaml",
    "application/x-yaml": "yaml",
    "text/yaml": "yaml",
    "text/x-yaml": "yaml",
    "application/json": "json",
    "text/json": "json",
}
SUFFIXES = {".toml": "toml", ".yml": "yaml", ".yaml": "yaml", ".json": "json"}


# libyaml's parser and composer where PyYAML was built with it: several times faster
_BaseLoader: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _NoAliasLoader(_BaseLoader):  # type: ignore[misc, valid-type]
    """YAML aliases let a small document expand into a huge one; manifests never need them.
    (libyaml composes in C, so they are caught where a node would be built a second time.)"""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        if node in self.constructed_objects or node in self.recursive_objects:
            raise InvalidInput("YAML aliases (*name) are not accepted", code="syntax")
        return super().construct_object(node, deep)


def format_of(media_type: str | None) -> str:
    base = (media_type or "").split(";", 1)[0].strip().lower()
    fmt = MEDIA_TYPES.get(base)
    if fmt is None:
        raise InvalidInput(
            f"unsupported content type {base or '(none)'!r}; use one of "
            + ", ".join(sorted(set(MEDIA_TYPES) - {"text/json", "text/x-toml", "text/x-yaml"})),
            field="Content-Type",
            code="unsupported_media_type",
        )
    return fmt


def parse_document(raw: bytes, fmt: str) -> dict[str, Any]:
    """Parse a manifest; only a mapping at the top is a manifest."""
    doc = parse_value(raw, fmt)
    if not isinstance(doc, dict):
        raise InvalidInput(f"a manifest must be a mapping, not {type(doc).__name__}", code="type")
    return doc


def parse_value(raw: bytes, fmt: str) -> Any:
    """TOML, YAML or JSON text -> whatever value it holds (a list of records too); every
    syntax error located."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        shown = raw.decode("utf-8-sig", "replace")
        raise InvalidInput(f"body is not UTF-8 (byte {exc.start}, line {line}, column"
                           f" {column})", code="encoding",
                           position=Position.in_text(shown, line, column)) from None
    try:
        if fmt == "toml":
            value = tomllib.loads(text)
        elif fmt == "yaml":
            value = yaml.load(_unknown_directives_as_comments(text), Loader=_NoAliasLoader)
        else:
            value = json.loads(text, parse_constant=_reject_constant)
    except InvalidInput:
        raise
    except tomllib.TOMLDecodeError as exc:
        raise toml_error(exc, text) from None
    except yaml.YAMLError as exc:
        if _BAD_ESCAPE in str(exc):  # libyaml's word for what the pure loader lets through
            raise InvalidInput("text holds an escape of an unpaired surrogate or of no"
                               " character", code="invalid_character") from None
        raise yaml_error(exc, text) from None
    except json.JSONDecodeError as exc:
        raise located("JSON", exc.msg, text, exc.lineno, exc.colno) from None
    except (RecursionError, ValueError, TypeError, OverflowError) as exc:
        raise InvalidInput(f"unreadable {fmt.upper()}: {_first_line(exc)}", code="syntax") from None
    _refuse_unstorable(value)
    return value


_BAD_ESCAPE = "found invalid Unicode character escape code"
# NUL and unpaired surrogates (which JSON and YAML escapes can spell) cannot be stored in
# PostgreSQL text or encoded as UTF-8: refused here, before anything reads them.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


# Deeper than any manifest or record needs; past it, storing, serialising and reading
# the value recurse (pydantic stops at about 250 levels). Counted in containers.
MAX_DEPTH = 64
# Integers of more digits than this are no quantity a manifest states, and past 4,300
# digits Python cannot even write them out as JSON.
MAX_DIGITS = 30


def _refuse_unstorable(doc: Any) -> None:
    """What PostgreSQL, JSON or our readers cannot hold, refused before anything reads it:
    NUL and unpaired surrogates (which JSON and YAML escapes can spell), nesting past
    MAX_DEPTH, integers of more than MAX_DIGITS digits."""
    stack: list[tuple[str, Any, int]] = [("", doc, 0)]
    while stack:  # iterative: a parsed document may be nested a thousand deep
        path, value, depth = stack.pop()
        if isinstance(value, str):
            if _UNSTORABLE.search(value):
                raise InvalidInput("text holds a NUL character or an unpaired surrogate",
                                   field=path or None, code="invalid_character")
        elif isinstance(value, bool):
            continue
        elif isinstance(value, int):
            if value.bit_length() > MAX_DIGITS * 3.33:
                raise InvalidInput(f"a number of more than {MAX_DIGITS} digits",
                                   field=path or None, code="range")
        elif isinstance(value, dict | list):
            if depth >= MAX_DEPTH:
                raise InvalidInput(f"nested more than {MAX_DEPTH} levels deep",
                                   field=path or None, code="too_deep")
            if isinstance(value, dict):
                for key, item in value.items():
                    stack.append((path, key if isinstance(key, str | int) else str(key),
                                  depth + 1))  # (a bad key is not echoed as a field)
                    stack.append((f"{path}.{key}"[:200] if path else str(key)[:200], item,
                                  depth + 1))
            else:
                stack.extend((f"{path}[{i}]"[:200], item, depth + 1)
                             for i, item in enumerate(value))


_DIRECTIVE = re.compile(r"^%(?!YAML[ \t]|TAG[ \t])", re.M)


def _unknown_directives_as_comments(text: str) -> str:
    """Early OKH v1 manifests open with "%Open know-how manifest 0.1": a YAML directive
    that libyaml refuses and the pure-Python reader skips. Read as the comment it was
    meant to be (same length, so every position stays where it was). Only before the
    first document's start, where directives live."""
    head, marker, rest = text.partition("\n---")
    if not marker or not _DIRECTIVE.search(head):
        return text
    return _DIRECTIVE.sub("#", head) + marker + rest


def located(fmt: str, reason: str, text: str, line: int, column: int,
            hint: str | None = None) -> InvalidInput:
    """A syntax error that says where: line, column and the text of that line."""
    position = Position.in_text(text, line, column)
    message = f"malformed {fmt} at line {line}, column {column}: {reason}"
    if hint:
        message += f" ({hint})"
    return InvalidInput(f"{message}: {position.text!r}", code="syntax", position=position)


_TOML_AT = re.compile(r"^(?P<reason>.*?)\s*\(at line (?P<line>\d+), column (?P<column>\d+)\)$",
                      re.S)


def toml_error(exc: tomllib.TOMLDecodeError, text: str) -> InvalidInput:
    # tomllib (3.11) gives the position only inside its message
    found = _TOML_AT.match(str(exc))
    if found is None:  # "(at end of document)"
        lines = text.splitlines() or [""]
        reason = re.sub(r"\s*\(at end of document\)$", "", str(exc))
        return located("TOML", reason + " at the end of the document", text, len(lines),
                       len(lines[-1]) + 1)
    reason = found["reason"]
    hint = _TOML_HINTS.get(reason)
    return located("TOML", reason, text, int(found["line"]), int(found["column"]), hint)


_TOML_HINTS = {
    "Invalid value": "text values are quoted: key = \"text\"",
    "Illegal character '\\n'": "a quoted value closes on its own line",
    "Cannot overwrite a value": "the key is given twice",
    "Cannot declare": "the table is declared twice",
    "Expected '=' after a key in a key/value pair": "a key and its value are joined by =",
}


def yaml_error(exc: yaml.YAMLError, text: str) -> InvalidInput:
    mark = getattr(exc, "problem_mark", None)
    problem = str(getattr(exc, "problem", None) or _first_line(exc))
    if mark is None:
        return InvalidInput(f"malformed YAML: {problem}", code="syntax")
    line, column = mark.line + 1, mark.column + 1  # libyaml counts from 0
    lines = text.split("\n")
    at = lines[line - 1][column - 1:column] if 0 < line <= len(lines) else ""
    if at and "character" in problem and repr(at) not in problem:
        problem = problem.replace("character", f"character {at!r}", 1)
    hint = None
    if at in ("@", "`"):
        hint = f"a value that starts with {at} must be quoted: \"{at}...\""
    elif at == "\t":
        hint = "YAML indents with spaces, not tabs"
    elif "mapping values are not allowed" in problem:
        hint = "a value holding ': ' must be quoted"
    context = str(getattr(exc, "context", None) or "")
    opened = getattr(exc, "context_mark", None)
    if opened is not None and ("quoted" in context or "flow" in context):
        # a quote or bracket left open: the slip is where it opened
        what = "a quoted value" if "quoted" in context else "a [list] or {mapping}"
        if not at.strip():
            return located("YAML", f"{what} is not closed", text, opened.line + 1,
                           opened.column + 1)
        hint = hint or f"{what} opened at line {opened.line + 1} is not closed"
    return located("YAML", problem, text, line, column, hint)


def _reject_constant(name: str) -> None:
    raise InvalidInput(f"{name} is not a number a manifest may hold", code="syntax")


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
