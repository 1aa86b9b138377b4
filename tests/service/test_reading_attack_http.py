"""POST /v1/validate and writes answer 4xx with code, field and message, never a 500, for
documents the readers once accepted but the report or storage could not represent."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import auth
from tests.support.helpers import YAML

pytestmark = pytest.mark.asyncio(loop_scope="session")

HUGE_HEX = b"title: Big\nokh-manifest-version: '1.0'\nx: 0x" + b"f" * 5000 + b"\n"
DEEP = (b"title: Deep\nokh-manifest-version: '1.0'\nx-extra: " + b"[" * 300 + b"x"
        + b"]" * 300 + b"\n")
DEEP_LICENSOR = b"title: Deep\nlicensor: " + b"[" * 900 + b"x" + b"]" * 900 + b"\n"


# Was broken: (each) a document that parses and reads but whose report cannot be encoded
# (5000-digit hex int; 300-deep unknown field) or whose reading recurses (900-deep
# licensor) gives 500 instead of a 4xx with code, field and message.
@pytest.mark.parametrize("body", [HUGE_HEX, DEEP, DEEP_LICENSOR],
                         ids=["huge-hex-int", "deep-extra", "deep-licensor"])
async def test_validate_never_answers_500(client: httpx.AsyncClient, org: tuple[str, str],
                                          body: bytes) -> None:
    answer = await client.post("/v1/validate", content=body, headers=auth(org[1]) | YAML)
    assert answer.status_code in (200, 413, 422), answer.text[:300]
    if answer.status_code != 200:
        error = answer.json()["error"]
        assert error["code"] and error["message"]


# Was broken: (deep-extra, deep-licensor) the same documents written to the registry give
# 500 (RuntimeError "document reader failed"); huge-hex-int is stored (a guard).
@pytest.mark.parametrize("body", [HUGE_HEX, DEEP, DEEP_LICENSOR],
                         ids=["huge-hex-int", "deep-extra", "deep-licensor"])
async def test_write_never_answers_500(client: httpx.AsyncClient, org: tuple[str, str],
                                       body: bytes) -> None:
    answer = await client.post("/v1/designs", content=body, headers=auth(org[1]) | YAML)
    assert answer.status_code < 500, answer.text[:300]
