"""The one error our readers and validators let escape."""

from __future__ import annotations


class InvalidInput(ValueError):
    """Input that cannot be accepted, with the field at fault and the reason."""

    def __init__(self, message: str, *, field: str | None = None, code: str = "invalid") -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.code = code

    def as_dict(self) -> dict[str, str | None]:
        return {"code": self.code, "message": self.message, "field": self.field}
