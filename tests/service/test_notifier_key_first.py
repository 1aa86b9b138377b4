"""The notifier checks the API key before it reads a write's body: a made-up key gets 401
for a body FastAPI would otherwise have read and refused as 422, and a valid key's
request is answered as before (verified once)."""

from __future__ import annotations

import httpx

from tests.conftest import auth
from tests.support.helpers import InProcess, wait_ready

MADE_UP = {"Authorization": "Bearer mlk_0123456789abcdef_" + "A" * 43}


async def test_a_made_up_key_is_refused_before_the_body_is_read(
        notifier: InProcess, org: tuple[str, str]) -> None:
    await wait_ready(notifier.url)
    async with httpx.AsyncClient(base_url=notifier.url, timeout=10) as http:
        for method, path in (("POST", "/v1/subscriptions"),
                             ("PATCH", "/v1/subscriptions/sub_0123456789abcdef")):
            refused = await http.request(method, path, content=b"{not json",
                                         headers=MADE_UP | {"Content-Type": "application/json"})
            assert refused.status_code == 401, refused.text
            assert refused.json()["error"]["field"] == "Authorization"
            assert refused.headers["connection"] == "close"
        # a valid key: the body is read and judged as before
        bad_body = await http.post("/v1/subscriptions", content=b"{not json",
                                   headers=auth(org[1]) | {"Content-Type": "application/json"})
        assert bad_body.status_code == 422
        made = await http.post("/v1/subscriptions", headers=auth(org[1]), json={
            "channel": "webhook", "url": "http://127.0.0.1:9/hook"})
        assert made.status_code == 201, made.text
