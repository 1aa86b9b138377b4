"""The one error our readers and validators let escape."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Position:
    """Where in a text an error is: 1-based line and column, and the line's text around
    it, so an author finds the slip without counting."""

    line: int
    column: int
    text: str

    @classmethod
    def in_text(cls, source: str, line: int, column: int) -> Position:
        # only \n ends a line, as the TOML, JSON and YAML readers count them
        # (str.splitlines also breaks at U+2028, U+0085 and others)
        lines = source.split("\n")
        at = lines[line - 1] if 0 < line <= len(lines) else ""
        return cls(line, column, excerpt(at, column))


def excerpt(line: str, column: int, width: int = 80) -> str:
    """At most `width` characters of one line, around the column (long lines are cut with
    an ellipsis so the error stays readable and bounded)."""
    line = line.rstrip("\r")
    if len(line) <= width:
        return line
    start = max(0, min(column - 1 - width // 2, len(line) - width))
    cut = line[start:start + width]
    return ("…" if start > 0 else "") + cut + ("…" if start + width < len(line) else "")


class InvalidInput(ValueError):
    """Input that cannot be accepted, with the field at fault and the reason (and, for a
    syntax error, the position in the text)."""

    def __init__(self, message: str, *, field: str | None = None, code: str = "invalid",
                 position: Position | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.code = code
        self.position = position

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "message": self.message, "field": self.field}
        if self.position is not None:
            out |= {"line": self.position.line, "column": self.position.column,
                    "text": self.position.text}
        return out

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> InvalidInput:
        position = (Position(value["line"], value["column"], value["text"])
                    if "line" in value else None)
        return cls(value["message"], field=value.get("field"), code=value.get("code", "invalid"),
                   position=position)
