"""Bytes of a TOML, YAML or JSON document -> a mapping, or our InvalidInput."""

from __future__ import annotations

import json
import re
import tomllib
from typing import Any

import yaml

from contracts.errors import InvalidInput

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
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"body is not UTF-8 (byte {exc.start})", code="encoding") from None
    try:
        if fmt == "toml":
            doc = tomllib.loads(text)
        elif fmt == "yaml":
            doc = yaml.load(text, Loader=_NoAliasLoader)
        else:
            doc = json.loads(text, parse_constant=_reject_constant)
    except InvalidInput:
        raise
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(f"malformed TOML: {exc}", code="syntax") from None
    except yaml.YAMLError as exc:
        if _BAD_ESCAPE in str(exc):  # libyaml's word for what the pure loader lets through
            raise InvalidInput("text holds an escape of an unpaired surrogate or of no"
                               " character", code="invalid_character") from None
        raise InvalidInput(f"malformed YAML: {_first_line(exc)}", code="syntax") from None
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"malformed JSON: {exc}", code="syntax") from None
    except (RecursionError, ValueError, TypeError, OverflowError) as exc:
        raise InvalidInput(f"unreadable {fmt.upper()}: {_first_line(exc)}", code="syntax") from None
    if not isinstance(doc, dict):
        raise InvalidInput(f"a manifest must be a mapping, not {type(doc).__name__}", code="type")
    _refuse_unstorable(doc)
    return doc


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


def _reject_constant(name: str) -> None:
    raise InvalidInput(f"{name} is not a number a manifest may hold", code="syntax")


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
