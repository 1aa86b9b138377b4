"""`makelocal import`: files and folders -> the registry's HTTP API, idempotently."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from ingest.documents import SUFFIXES
from ingest.identity import document_id
from ingest.layouts import records
from ingest.record import Record

MEDIA = {"toml": "application/toml", "yaml": "application/yaml", "json": "application/json"}
PLURAL = {"design": "designs", "facility": "facilities"}
IMPORTABLE = (*SUFFIXES, ".csv")


@dataclass
class Summary:
    counts: Counter = field(default_factory=Counter)
    rejected: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[tuple[str, str]] = field(default_factory=list)


def files_in(paths: list[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*")
                              if p.is_file() and p.name.lower().endswith(IMPORTABLE))
        else:
            yield path


def read_all(paths: list[Path], mapping: dict[str, str] | None = None,
             ) -> list[tuple[Record, bytes | None, str | None]]:
    """Each record with the body to send and its media type (None when rejected).
    `mapping` ({column: field}, from --map) reads CSVs no known layout fits."""
    out = []
    for path in files_in(paths):
        raw = path.read_bytes()
        for record in records(str(path), raw, mapping):
            if record.document is None:
                out.append((record, None, None))
                continue
            whole_file = record.where == str(path)
            fmt = next((f for s, f in SUFFIXES.items() if path.name.lower().endswith(s)),
                       None)
            if whole_file and fmt is not None:
                # A manifest file is sent as written, so the registry keeps the original.
                # (One recognised by content under another suffix is sent as JSON below.)
                body, media = raw, MEDIA[fmt]
            else:
                body = json.dumps(record.document, sort_keys=True, ensure_ascii=False).encode()
                media = MEDIA["json"]
            if record.entity_id is None:
                record.entity_id = document_id(record.kind, record.document)
            out.append((record, body, media))
    return out


async def import_paths(paths: list[Path], *, registry_url: str, api_key: str,
                       concurrency: int = 8, progress: bool = True,
                       mapping: dict[str, str] | None = None) -> Summary:
    items = read_all(paths, mapping)
    summary = Summary()
    semaphore = asyncio.Semaphore(concurrency)
    headers = {"Authorization": f"Bearer {api_key}"}
    from rich.progress import Progress

    with Progress(disable=not progress, transient=False) as bar:
        task = bar.add_task("importing", total=len(items))
        async with httpx.AsyncClient(base_url=registry_url, headers=headers,
                                     timeout=30) as client:

            async def one(record: Record, body: bytes | None, media: str | None) -> None:
                async with semaphore:
                    outcome, reason = await _send(client, record, body, media)
                summary.counts[outcome] += 1
                if reason:
                    summary.rejected.append((record.where, reason))
                summary.warnings.extend((record.where, w) for w in record.warnings)
                bar.advance(task)

            await asyncio.gather(*(one(*item) for item in items))
    return summary


async def _send(client: httpx.AsyncClient, record: Record, body: bytes | None,
                media: str | None) -> tuple[str, str | None]:
    if body is None or media is None:
        return "rejected", record.error or "unreadable"
    url = f"/v1/{PLURAL[record.kind]}/{record.entity_id}"
    content_headers = {"Content-Type": media}
    for _ in range(3):  # a concurrent writer may move the version between GET and PUT
        current = await client.get(url)
        if current.status_code == 404:
            response = await _write(client, "POST", f"/v1/{PLURAL[record.kind]}",
                                    params={"id": record.entity_id}, content=body,
                                    headers=content_headers)
            if response.status_code == 409:
                continue
        elif current.status_code == 200:
            response = await _write(client, "PUT", url, content=body, headers=content_headers | {
                "If-Match": current.headers["etag"]})
            if response.status_code == 412:
                continue
        else:
            return "rejected", _reason(current)
        if response.status_code == 201:
            return "created", None
        if response.status_code == 200:
            return ("updated" if response.json().get("changed") else "unchanged"), None
        return "rejected", _reason(response)
    return "rejected", "changed concurrently three times; try again"


async def _write(client: httpx.AsyncClient, method: str, url: str, **options: Any,
                 ) -> httpx.Response:
    """The request, sent again after the wait a 429 asks for (a big import runs into the
    key's write limit and must slow down, not fail)."""
    for _ in range(RATE_LIMIT_RETRIES):
        response = await client.request(method, url, **options)
        if response.status_code != 429:
            return response
        await asyncio.sleep(min(60.0, float(response.headers.get("retry-after", "1"))))
    return response


RATE_LIMIT_RETRIES = 20


def _reason(response: httpx.Response) -> str:
    try:
        error = response.json()["error"]
        where = f" ({error['field']})" if error.get("field") else ""
        return f"{response.status_code} {error['message']}{where}"
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}"
