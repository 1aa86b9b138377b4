"""The web page against a real registry, matcher and notifier (PostgreSQL, NATS, SMTP):
search, a design's page (needs and their origins, who near a place can make it), a
facility's page, the map's data, the alert form and the email links; and what it does
when an API is away or a document is hostile. The browser journey is test_web_browser."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest
import pytest_asyncio
from pydantic import SecretStr

from services.matcher.settings import MatcherSettings
from services.notifier.settings import NotifierSettings
from services.web.app import create_app
from services.web.settings import WebSettings
from tests.conftest import auth
from tests.support.builders import facility_doc
from tests.support.helpers import (
    JSON,
    TOML,
    YAML,
    InProcess,
    InProcessMatcher,
    eventually,
    free_port,
    has_mail,
    wait_ready,
)
from tests.support.receivers import MailServer, text_of

pytestmark = pytest.mark.asyncio(loop_scope="session")
MATCHER: dict[str, str] = {}  # the running site's matcher (one per partition may hold it)


def web_settings(registry: str, matcher: str, notifier: str, key: str | None,
                 **extra: object) -> WebSettings:
    return WebSettings(registry_url=registry, matcher_url=matcher, notifier_url=notifier,
                       web_api_key=SecretStr(key) if key else None, web_directory_s=0.5,
                       **extra)


@pytest_asyncio.fixture(loop_scope="session")
async def site(client: httpx.AsyncClient, org: tuple[str, str], registry: InProcess,
               notifier: InProcess, matcher_settings: MatcherSettings,
               data_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    """Shared designs and three labs (Paris, Lyon, a closed one in Paris), all indexed;
    the web page in front of the three APIs."""
    key = auth(org[1])
    for name, status, lat, lon in (("paris-lab", "Active", 48.86, 2.35),
                                   ("lyon-lab", "Active", 45.76, 4.84),
                                   ("paris-closed", "Closed", 48.85, 2.34)):
        await client.post(f"/v1/facilities?id={name}", headers=key | JSON,
                          content=facility_doc(name.replace("-", " ").title(), ["3D printing"],
                                      status=status, lat=lat, lon=lon))
    plate = (data_dir / "okh" / "switch-mounting-plate-gopro.okh.yml").read_bytes()
    await client.post("/v1/designs?id=plate", headers=key | YAML, content=plate)
    await client.post("/v1/designs?id=plankton", headers=key | TOML,
                      content=(data_dir / "okh" / "planktoscope.okh.toml").read_bytes())
    await client.post("/v1/designs?id=lamp", headers=key | YAML,
                      content=b"title: A lamp\ndescription: A lamp for the living room.\n")
    async with InProcessMatcher(matcher_settings) as matcher:
        await wait_ready(matcher.url)
        MATCHER["url"] = matcher.url
        async with httpx.AsyncClient(base_url=matcher.url) as query:
            async def indexed() -> bool:
                answer = (await query.get("/v1/designs/plate/facilities")).json()
                return len(answer.get("matches", [])) == 2
            await eventually(indexed, timeout=30)
        app = create_app(web_settings(registry.url, matcher.url, notifier.url, org[1]))
        async with InProcess(app, None) as web, httpx.AsyncClient(
                base_url=web.url, timeout=10) as http:
            yield http


async def test_search_finds_designs_by_words_and_process(site: httpx.AsyncClient) -> None:
    page = await site.get("/", params={"q": "mounting plate"})
    assert page.status_code == 200 and 'href="/designs/plate"' in page.text
    assert "(partly inferred)" in page.text
    by_process = await site.get("/", params={"process": "pcb-fabrication"})
    assert 'href="/designs/plankton"' in by_process.text
    assert 'href="/designs/plate"' not in by_process.text
    nothing = await site.get("/", params={"q": "zzzzqqq"})
    assert nothing.status_code == 200 and "No design matches" in nothing.text


async def test_a_design_page_says_what_it_needs_and_who_near_can_make_it(
        site: httpx.AsyncClient) -> None:
    page = await site.get("/designs/plate", params={"place": "Lyon", "radius_km": 1000})
    assert page.status_code == 200
    assert "inferred from description" in page.text and "3D printable" in page.text
    near = page.text[page.text.index("Who can make this near you"):]
    assert near.index("Lyon Lab") < near.index("Paris Lab")  # the closest first
    assert re.search(r"\d+\.\d km", near)
    markers = json.loads(re.search(r'data-markers="([^"]*)"', page.text).group(1)
                         .replace("&#34;", '"').replace("&quot;", '"'))
    assert {m[0] for m in markers} == {"lyon-lab", "paris-lab"}
    misses = page.text[page.text.index("Almost: one thing missing"):]
    assert "Paris Closed" in misses and "status active" in misses

    unknown = await site.get("/designs/plate", params={"place": "Nowhereville"})
    assert 'aria-invalid="true"' in unknown.text and "not known here" in unknown.text
    lamp = await site.get("/designs/lamp")
    assert "Needs information" in lamp.text and "manufacturing-processes" in lamp.text
    missing = await site.get("/designs/no-such-design")
    assert missing.status_code == 404 and "No such design" in missing.text
    bad = await site.get("/designs/plate", params={"radius_km": "far"})
    assert bad.status_code == 422 and "Traceback" not in bad.text


async def test_a_facility_page_and_the_map(site: httpx.AsyncClient) -> None:
    page = await site.get("/facilities/lyon-lab")
    assert page.status_code == 200 and "Lyon Lab" in page.text
    assert 'href="/designs/plate">Switch Plate - GoPro Compatible</a>' in page.text
    everything = (await site.get("/map/facilities.json")).json()
    assert {"paris-lab", "lyon-lab", "paris-closed"} <= {m[0] for m in everything}
    assert (await site.get("/map")).status_code == 200
    asset = await site.get("/static/vendor/leaflet/leaflet.js")
    assert asset.status_code == 200 and len(asset.content) > 100_000


async def test_an_alert_is_asked_for_confirmed_by_email_and_can_be_stopped(
        site: httpx.AsyncClient, mail_server: MailServer,
        notifier_settings: NotifierSettings) -> None:
    refused = await site.post("/alerts", data={"email": "not-an-address", "place": "Lyon"})
    assert refused.status_code == 422 and "email address" in refused.text
    nowhere = await site.post("/alerts", data={"email": "a@example.org", "place": "Qqqzz"})
    assert nowhere.status_code == 422 and "not known here" in nowhere.text
    empty = await site.post("/alerts", data={"email": "a@example.org"})
    assert empty.status_code == 422 and "say what to be told about" in empty.text
    made = await site.post("/alerts", data={"email": "maker@example.org", "place": "Lyon",
                                            "radius_km": "30", "process": ["3d-printing"],
                                            "design": "plate"})
    assert made.status_code == 200 and "Check your email" in made.text
    await eventually(lambda: has_mail(mail_server, "maker@example.org", 1), timeout=20)
    token = re.search(r"/v1/email/verify\?token=([\w-]+)",
                      text_of(mail_server.to("maker@example.org")[0])).group(1)
    ask = await site.get("/v1/email/verify", params={"token": token})
    assert ask.status_code == 200 and "<button" in ask.text  # a GET only asks
    done = await site.post(f"/v1/email/verify?token={token}")
    assert done.status_code == 200 and "confirmed" in done.text
    again = await site.post(f"/v1/email/verify?token={token}")
    assert again.status_code == 404 and "not valid" in again.text

    # an alert email's manage link: what the alert is about, and a button to stop it
    conn = await asyncpg.connect(notifier_settings.database_url)
    try:
        unsubscribe = await conn.fetchval(
            f"SELECT unsubscribe_token FROM {notifier_settings.notifier_db_schema}"
            ".subscriptions WHERE address = 'maker@example.org'")
    finally:
        await conn.close()
    manage = await site.get("/alerts/manage", params={"token": unsubscribe})
    assert manage.status_code == 200 and "maker@example.org" in manage.text
    assert "on." in manage.text and 'href="/designs/plate"' in manage.text
    assert "3D printing" in manage.text and "within 30 km" in manage.text
    stopped = await site.post(f"/v1/email/unsubscribe?token={unsubscribe}")
    assert stopped.status_code == 200 and "unsubscribed" in stopped.text
    after = await site.get("/alerts/manage", params={"token": unsubscribe})
    assert "stopped (unsubscribed)" in after.text and "Stop this alert" not in after.text
    assert (await site.get("/alerts/manage", params={"token": "nope"})).status_code == 404
    forged = await site.post("/v1/email/unsubscribe?token=<script>")
    assert forged.status_code == 404 and "<script>" not in forged.text


async def test_sign_ups_from_one_address_are_limited(
        registry: InProcess, notifier: InProcess, org: tuple[str, str]) -> None:
    app = create_app(web_settings(registry.url, registry.url, notifier.url, org[1],
                                  web_signups_per_hour=2))
    async with InProcess(app, None) as web, httpx.AsyncClient(base_url=web.url) as http:
        answers = [(await http.post("/alerts", data={"email": f"m{i}@example.org",
                                                     "process": ["3d-printing"]})).status_code
                   for i in range(3)]
    assert answers == [200, 200, 429]


async def test_the_page_asks_every_matcher_partition(
        registry: InProcess, notifier: InProcess, org: tuple[str, str],
        site: httpx.AsyncClient) -> None:
    """A design is held by one partition's matcher: with another partition listed (here
    one that is away), its page still shows who can make it; a facility's designs need
    every partition, so one away is said, not silently half-shown."""
    away = f"http://127.0.0.1:{free_port()}"
    app = create_app(web_settings(registry.url, f"{away},{MATCHER['url']}", notifier.url,
                                  org[1]))
    async with InProcess(app, None) as web, httpx.AsyncClient(base_url=web.url,
                                                              timeout=10) as http:
        page = await http.get("/designs/plate")
        assert page.status_code == 200 and "Lyon Lab" in page.text
        facility = await http.get("/facilities/lyon-lab")
        assert facility.status_code == 503 and "matcher does not answer" in facility.text


async def test_an_api_away_is_a_page_that_says_so(org: tuple[str, str]) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    app = create_app(web_settings(nowhere, nowhere, nowhere, org[1]))
    async with InProcess(app, None) as web, httpx.AsyncClient(base_url=web.url) as http:
        page = await http.get("/")
        assert page.status_code == 503 and page.headers["retry-after"] == "30"
        assert "registry does not answer" in page.text and "Traceback" not in page.text
        assert (await http.get("/readyz")).status_code == 503
        assert (await http.get("/healthz")).status_code == 200


async def test_a_hostile_design_is_shown_as_text(
        site: httpx.AsyncClient, client: httpx.AsyncClient, org: tuple[str, str]) -> None:
    doc = {"okh-manifest-version": "1.0", "title": "<script>alert(1)</script> Plate",
           "description": "<img src=x onerror=alert(1)>", "manufacturing-processes":
           ["3D printing"], "project-link": "javascript:alert(1)",
           "documentation-home": "https://example.org/docs"}
    made = await client.post("/v1/designs?id=hostile", headers=auth(org[1]) | JSON,
                             content=json.dumps(doc).encode())
    assert made.status_code == 201, made.text
    page = await site.get("/designs/hostile")
    assert "<script>alert(1)</script>" not in page.text and "&lt;script&gt;" in page.text
    assert "<img src=x" not in page.text
    assert "javascript:" not in page.text and 'href="https://example.org/docs"' in page.text
