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
    _refuse_unstorable(doc)
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
            return tomllib.loads(text)
        if fmt == "yaml":
            return yaml.load(_unknown_directives_as_comments(text), Loader=_NoAliasLoader)
        return json.loads(text, parse_constant=_reject_constant)
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


_BAD_ESCAPE = "found invalid Unicode character escape code"
# NUL and unpaired surrogates (which JSON and YAML escapes can spell) cannot be stored in
# PostgreSQL text or encoded as UTF-8: refused here, before anything reads them.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _refuse_unstorable(doc: dict[str, Any]) -> None:
    stack: list[tuple[str, Any]] = [("", doc)]
    while stack:  # iterative: a parsed document may be nested a thousand deep
        path, value = stack.pop()
        if isinstance(value, str):
            if _UNSTORABLE.search(value):
                raise InvalidInput("text holds a NUL character or an unpaired surrogate",
                                   field=path or None, code="invalid_character")
        elif isinstance(value, dict):
            for key, item in value.items():
                stack.append((path, str(key)))  # (a bad key is not echoed as a field)
                stack.append((f"{path}.{key}" if path else str(key), item))
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", item) for i, item in enumerate(value))


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
    lines = text.splitlines()
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
    elif "end of stream" in problem and "quoted" in str(getattr(exc, "context", "")):
        opened = getattr(exc, "context_mark", None)
        if opened is not None:  # the slip is where the quote opened, not at the end
            return located("YAML", "a quoted value is not closed", text, opened.line + 1,
                           opened.column + 1)
    return located("YAML", problem, text, line, column, hint)


def _reject_constant(name: str) -> None:
    raise InvalidInput(f"{name} is not a number a manifest may hold", code="syntax")


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
