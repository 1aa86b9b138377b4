"""`makelocal validate FILE...`: what importing would store, read here with no key and no
server (the registry's `POST /v1/validate` gives the same report for one document)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from contracts.errors import InvalidInput
from ingest.layouts import records
from ingest.okh import read_design
from ingest.okw import read_facility
from ingest.validation import lines, report
from makelocal.importer import files_in


def validate(paths: list[Path], mapping: dict[str, str] | None = None,
             ) -> tuple[list[dict[str, Any]], int]:
    """One result per record (its report, or its error), and how many were errors."""
    results: list[dict[str, Any]] = []
    errors = 0
    for path in files_in(paths):
        for record in records(str(path), path.read_bytes(), mapping):
            if record.document is None:
                errors += 1
                error = InvalidInput(record.error or "unreadable", code="invalid",
                                     position=record.position)
                results.append({"where": record.where, "error": error.as_dict()})
                continue
            reader: Callable[..., Any] = (read_design if record.kind == "design"
                                          else read_facility)
            try:
                entity = reader(record.document)
            except InvalidInput as exc:
                errors += 1
                results.append({"where": record.where, "error": exc.as_dict()})
                continue
            outcome = report(entity)
            outcome["warnings"] = [*record.warnings, *outcome["warnings"]]
            results.append({"where": record.where} | outcome)
    return results, errors


def render(results: list[dict[str, Any]], *, as_json: bool) -> str:
    if as_json:
        return json.dumps(results, indent=2, ensure_ascii=False)
    out = []
    for result in results:
        error = result.get("error")
        if error is None:
            out.append(f"{result['where']}: ok")
            out.extend(lines(result))
            continue
        field = f" ({error['field']})" if error.get("field") else ""
        out.append(f"{result['where']}: error{field}: {error['message']}")
    return "\n".join(out)
