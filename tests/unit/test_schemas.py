"""The published JSON Schemas match the models."""

from __future__ import annotations

from contracts.schemas import SCHEMA_DIR, all_schemas, render


def test_published_schemas_are_in_sync_with_the_models() -> None:
    for name, schema in all_schemas().items():
        path = SCHEMA_DIR / name
        assert path.exists(), f"{name} missing: run `makelocal schema`"
        assert path.read_text() == render(schema), f"{name} stale: run `makelocal schema`"
