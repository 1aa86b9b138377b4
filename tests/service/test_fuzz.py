"""schemathesis against each running service's own OpenAPI document: for every operation,
cases that fit the schema and cases that break it, sent with a valid API key so that they
reach the handlers. No 5xx; every 4xx in the one JSON error shape; every response's status,
content type and body as documented.

The calls are blocking (schemathesis uses requests), so they run in a worker thread while
the services serve from the test's event loop."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support.builders import design_doc, facility_doc
from tests.support.helpers import InProcess, InProcessMatcher, wait_ready

# per operation and per mode; enough to reach every validation path of our small schemas
EXAMPLES = int(os.environ.get("MAKELOCAL_FUZZ_EXAMPLES", "30"))
CHECKS = [status_code_conformance, content_type_conformance, response_schema_conformance]


def fuzz(base_url: str, key: str) -> list[str]:
    """Every problem found, one line each (the first failing case per operation and mode)."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    problems: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert operations, "the schema lists no operations"
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                _run(operation, mode, base_url, key)
            except Unsatisfiable:
                # a plain string path parameter alone cannot be made invalid
                assert mode is GenerationMode.NEGATIVE, operation.label
            except Exception as exc:
                problems.append(f"{operation.label} [{mode.value}]: {exc}"[:2000])
    return problems


def _run(operation: Any, mode: GenerationMode, base_url: str, key: str) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck))
    def one(case: Any) -> None:
        response = case.call(base_url=base_url, headers={"Authorization": f"Bearer {key}"},
                             timeout=10)
        assert response.status_code < 500, (response.status_code, response.text[:300])
        # (the email link pages answer people with HTML; the document says so, and
        # content_type_conformance holds every route to what it documents)
        if 400 <= response.status_code < 500 and not _is_html(response):
            error = response.json()["error"]
            assert isinstance(error["code"], str) and isinstance(error["message"], str)
            assert "Traceback" not in response.text
        case.validate_response(response, checks=CHECKS)

    one()


def _is_html(response: Any) -> bool:
    # schemathesis' Response keeps every value of a header, as a list
    values = response.headers.get("content-type") or [""]
    return any(value.startswith("text/html") for value in values)


async def _fuzzed(running: InProcess, key: str) -> None:
    await wait_ready(running.url)
    problems = await asyncio.to_thread(fuzz, running.url, key)
    assert not problems, "\n".join(problems)


async def test_fuzz_registry(settings: Any, store: Any, org: tuple[str, str]) -> None:
    from services.registry.app import create_app

    # no write limit here: a 429 would stop the cases short of the handlers
    unlimited = settings.model_copy(update={"write_rate_per_s": 1e6, "write_burst": 10**6})
    async with InProcess(create_app(unlimited), unlimited) as registry:
        await _fuzzed(registry, org[1])


async def test_fuzz_matcher(registry: InProcess, client: Any, matcher_settings: Any,
                            org: tuple[str, str]) -> None:
    # something indexed, so that the queries have matches and near misses to render
    key = {"Authorization": f"Bearer {org[1]}", "Content-Type": "application/json"}
    await client.post("/v1/facilities?id=lab", content=facility_doc("Lab", ["3D printing"]),
                      headers=key)
    await client.post("/v1/designs?id=part", headers=key, content=design_doc("Part", ["3DP"]))
    async with InProcessMatcher(matcher_settings) as matcher:
        await _fuzzed(matcher, org[1])


async def test_fuzz_notifier(notifier_settings: Any, store: Any, org: tuple[str, str]) -> None:
    from services.notifier.app import create_app

    unlimited = notifier_settings.model_copy(update={"write_rate_per_s": 1e6,
                                                     "write_burst": 10**6})
    async with InProcess(create_app(unlimited), unlimited) as notifier:
        await _fuzzed(notifier, org[1])
