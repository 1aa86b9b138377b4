"""Attacks on the web page: hostile documents, misbehaving APIs (wrong JSON, 5xx, away,
drip-fed answers, endless cursors), the alert form as a mail cannon, the API key. The
APIs here are tiny fakes served on loopback, so each answers exactly as a test needs."""

from __future__ import annotations

import asyncio
import html
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from services.web.app import create_app
from services.web.settings import WebSettings
from tests.support.helpers import InProcess, free_port
from tests.support.paths import ROOT

pytestmark = pytest.mark.asyncio(loop_scope="session")
KEY = "mlk_0123456789abcdef_s3cr3t-page-key-do-not-show"
STATIC = ROOT / "services" / "web" / "static"
Handler = Callable[[Request], Any]


class Fake:
    """An API on loopback: `handler(request)` answers every request; all are recorded."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.seen: list[Request] = []

        async def any_path(request: Request) -> Response:
            self.seen.append(request)
            if request.url.path == "/healthz":
                return Response("ok")
            answer = self.handler(request)
            if asyncio.iscoroutine(answer):
                answer = await answer
            return answer

        self.app = Starlette(routes=[Route("/{path:path}", any_path,
                                           methods=["GET", "POST", "DELETE"])])
        self.server = InProcess(self.app, None)

    @property
    def url(self) -> str:
        return self.server.url

    def paths(self, path: str) -> list[Request]:
        return [r for r in self.seen if r.url.path == path]


DESIGN = {"id": "d1", "design": {"id": "d1", "name": "A design", "okh_format": "OKH v1",
                                 "processes": [], "materials": [], "parts": [], "links": {}}}
FACILITY = {"id": "f1", "name": "A lab", "status": "active",
            "location": {"lat": 45.76, "lon": 4.84, "address": {"city": "Lyon"}},
            "processes": [], "materials": [], "equipment": [], "links": {}}


def registry_handler(designs: Any = None, facilities: Any = None,
                     design: Any = None, facility: Any = None) -> Handler:
    """A registry answering well unless told otherwise."""

    def handle(request: Request) -> Response:
        path = request.url.path
        if path == "/v1/designs":
            return JSONResponse(designs if designs is not None else {"items": [DESIGN]})
        if path.startswith("/v1/designs/"):
            return JSONResponse(design if design is not None else DESIGN)
        if path == "/v1/facilities":
            return JSONResponse(facilities if facilities is not None else {
                "items": [{"id": "f1", "facility": FACILITY}]})
        if path.startswith("/v1/facilities/"):
            return JSONResponse({"id": "f1", "facility": facility or FACILITY})
        return JSONResponse({"error": {"message": "no"}}, status_code=404)

    return handle


def matcher_handler(answer: Any = None) -> Handler:
    def handle(request: Request) -> Response:
        if request.url.path.endswith("/facilities"):
            return JSONResponse(answer if answer is not None else {
                "status": "ok", "matches": [{"facility": "f1", "score": 0.9,
                                             "summary": "fits", "explanation": []}],
                "near_misses": []})
        return JSONResponse(answer if answer is not None else {"matches": []})

    return handle


def notifier_handler(status: int = 201, body: Any = None) -> Handler:
    def handle(request: Request) -> Response:
        return JSONResponse(body if body is not None else {"id": "s1"}, status_code=status)

    return handle


def settings(registry: str, matcher: str, notifier: str, **extra: Any) -> WebSettings:
    return WebSettings(registry_url=registry, matcher_url=matcher, notifier_url=notifier,
                       web_api_key=SecretStr(KEY),
                       web_directory_s=extra.pop("web_directory_s", 60),
                       web_upstream_timeout_s=extra.pop("timeout", 2.0), **extra)


class Site:
    """The web page in front of three fakes (or addresses), and a client of it."""

    def __init__(self, registry: Handler | str | None = None,
                 matcher: Handler | str | None = None,
                 notifier: Handler | str | None = None, **extra: Any) -> None:
        self.fakes: dict[str, Fake | str] = {}
        for name, given, default in (("registry", registry, registry_handler()),
                                     ("matcher", matcher, matcher_handler()),
                                     ("notifier", notifier, notifier_handler())):
            self.fakes[name] = given if isinstance(given, str) else Fake(given or default)
        self.extra = extra

    def fake(self, name: str) -> Fake:
        fake = self.fakes[name]
        assert isinstance(fake, Fake)
        return fake

    async def __aenter__(self) -> httpx.AsyncClient:
        # the servers start (and stop) together: one at a time cost a second a test
        await asyncio.gather(*(f.server.__aenter__() for f in self.fakes.values()
                               if isinstance(f, Fake)))
        urls = {name: fake.url if isinstance(fake, Fake) else fake
                for name, fake in self.fakes.items()}
        self.web = InProcess(create_app(settings(urls["registry"], urls["matcher"],
                                                 urls["notifier"], **self.extra)), None)
        await self.web.__aenter__()
        self.http = httpx.AsyncClient(base_url=self.web.url, timeout=10)
        return self.http

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()
        await asyncio.gather(self.web.__aexit__(*exc), *(
            f.server.__aexit__(*exc) for f in self.fakes.values() if isinstance(f, Fake)))


def no_crash(page: httpx.Response) -> None:
    assert page.status_code != 500, page.text
    assert "Traceback" not in page.text and "Something went wrong" not in page.text


def markers_of(text: str) -> list[list[Any]]:
    found = re.search(r'data-markers="([^"]*)"', text)
    assert found is not None
    return json.loads(html.unescape(found.group(1)))


# --- hostile documents ----------------------------------------------------------------

XSS = '<img src=x onerror=alert(1)>"\'</div><script>alert(2)</script>'


async def test_the_map_never_hands_a_facility_name_to_leaflet_as_html() -> None:
    # Was broken: map.js calls .bindTooltip(m[1]) with the facility's name, a string;
    # Leaflet's DivOverlay._updateContent sets innerHTML for a string, so a facility
    # named '<img src=x onerror=alert(1)>' runs script on /map, a design page and its
    # own page as soon as anyone hovers its marker (the popup is safe: a DOM node)
    script = (STATIC / "map.js").read_text()
    leaflet = (STATIC / "vendor" / "leaflet" / "leaflet.js").read_text()
    assert '"string"==typeof e)t.innerHTML=e' in leaflet  # how Leaflet treats a string
    for call in re.findall(r"\.(?:bindTooltip|bindPopup|setContent)\(([^)]*)\)", script):
        assert call.strip() != "m[1]", f"a name given to Leaflet as HTML: {call}"


async def test_a_hostile_facility_reaches_the_map_only_as_escaped_data() -> None:
    hostile = FACILITY | {"name": XSS, "location": {
        "lat": 1.0, "lon": 2.0, "address": {"city": XSS, "country": XSS}},
        # (in the shapes the registry's own models allow: a facility it stores)
        "access_type": XSS, "processes": [{"id": XSS, "label": XSS}],
        "materials": [{"id": XSS, "label": XSS}],
        "equipment": [{"equipment_type": XSS, "make": XSS, "model": XSS,
                       "quantity": 1, "working_volume": {"x_mm": 100, "y_mm": 0}}],
        "links": {"link0": "javascript:alert(1)", "link1": " JaVaScRiPt:alert(1)",
                  "link2": "data:text/html,<script>alert(1)</script>",
                  "link3": "java\tscript:alert(1)", "link4": "https://ok.example/a?b=\"x"}}
    site = Site(registry=registry_handler(
        facilities={"items": [{"id": "f1", "facility": hostile}]}, facility=hostile))
    async with site as http:
        for path in ("/map", "/facilities/f1", "/designs/d1"):
            page = await http.get(path)
            assert page.status_code == 200, (path, page.text)
            assert "<img src=x" not in page.text and "<script>alert" not in page.text
            assert "javascript:" not in page.text.lower() and "data:text" not in page.text
            assert markers_of(page.text)[0][1] == XSS  # the name is data, not markup
        assert 'href="https://ok.example/a?b=&#34;x"' in (await http.get("/facilities/f1")).text


@pytest.mark.parametrize("path", ["/designs/d1%0A", "/facilities/f1%0A"])
async def test_an_id_with_a_trailing_newline_is_a_404_not_a_500(path: str) -> None:
    # Was broken: ID_PATTERN ends in `$`, which matches before a final "\n": "d1\n" passes
    # _ID.match, then httpx refuses the registry URL with InvalidURL, which is not an
    # httpx.HTTPError, so Api.call lets it out -> 500 "Something went wrong"
    site = Site()
    async with site as http:
        page = await http.get(path)
        no_crash(page)
        assert page.status_code == 404


async def test_pages_say_what_a_browser_may_run_and_frame() -> None:
    # Was broken: no Content-Security-Policy, X-Content-Type-Options or frame-ancestors /
    # X-Frame-Options on any page: nothing limits what an injected script (see the map
    # tooltip above) may do, and the confirm/unsubscribe buttons can be framed
    async with Site() as http:
        for path in ("/", "/map", "/designs/d1", "/alerts", "/v1/email/verify?token=abc"):
            page = await http.get(path)
            assert page.status_code == 200
            csp = page.headers.get("content-security-policy", "")
            assert "script-src" in csp or "default-src" in csp, path
            assert page.headers.get("x-content-type-options") == "nosniff", path
            assert "frame-ancestors" in csp or page.headers.get("x-frame-options"), path


async def test_static_files_stay_in_their_folder() -> None:
    async with Site() as http:
        for path in ("/static/../app.py", "/static/%2e%2e/app.py", "/static/..%2fapp.py",
                     "/static/vendor/../../settings.py"):
            page = await http.get(path)
            assert page.status_code == 404 and "web_api_key" not in page.text


# --- places and numbers ---------------------------------------------------------------

@pytest.mark.parametrize("place", ["90,180", "-90,-180", "-0,-0", "1e3,2", "91,0", "0,181",
                                   "٤٥,٤", "\U0001d7d2\U0001d7d3,\U0001d7d2", "Lyon, FR, FR",
                                   "," * 200, "\u0000",
                                   "paris\u0301", "é" * 200, "NaN,NaN", "inf,0"])
async def test_odd_places_are_an_answer_not_a_crash(place: str) -> None:
    async with Site() as http:
        page = await http.get("/designs/d1", params={"place": place, "radius_km": 20_000})
        no_crash(page)
        assert page.status_code in (200, 422)
        form = await http.post("/alerts", data={"email": "a@example.org", "place": place,
                                                "radius_km": "nan"})
        no_crash(form)


# --- APIs that answer wrongly ---------------------------------------------------------

@pytest.mark.parametrize("answer", [{"status": "ok"},                      # no matches
                                    {"matches": [{"facility": "f1"}], "near_misses": []},
                                    {"matches": "all", "near_misses": []},
                                    ["not", "an", "object"]])
async def test_a_matcher_answering_json_of_the_wrong_shape_is_a_503(answer: Any) -> None:
    # Was broken: answer["matches"] / row["score"] / row["summary"] raise KeyError or
    # TypeError -> the catch-all handler's 500 "Something went wrong"
    async with Site(matcher=matcher_handler(answer)) as http:
        page = await http.get("/designs/d1")
        no_crash(page)
        assert page.status_code == 503 and "matcher" in page.text
        facility = await http.get("/facilities/f1")
        no_crash(facility)


@pytest.mark.parametrize("path", ["/", "/designs/d1", "/map", "/facilities/f1"])
async def test_a_registry_answering_json_of_the_wrong_shape_is_a_503(path: str) -> None:
    # Was broken: found["items"], found["design"], page["items"] on a list / an object
    # without them -> 500
    wrong = registry_handler(designs=[], facilities={"things": []}, design={"id": "d1"},
                             facility=None)
    async with Site(registry=wrong, matcher=matcher_handler({"matches": [
            {"design": "d1", "score": 1}], "status": "ok", "near_misses": []})) as http:
        page = await http.get(path)
        no_crash(page)
        assert page.status_code == 503


async def test_a_registry_answering_a_redirect_or_a_5xx_is_a_503() -> None:
    for status in (302, 500, 502):
        def handle(request: Request, status: int = status) -> Response:
            return Response("<html>oops</html>", status_code=status,
                            headers={"Location": "http://169.254.169.254/"})
        async with Site(registry=handle) as http:
            page = await http.get("/")
            assert page.status_code == 503 and "registry does not answer" in page.text


async def test_a_registry_that_repeats_its_cursor_does_not_loop_forever() -> None:
    # Was broken: Directory._load follows next_cursor with no bound and no check that it
    # moves: a registry that answers the same cursor again (a bug, a proxy's cached page)
    # makes /map read it forever (here the fake gives up with a 500 after 300 pages)
    def handle(request: Request) -> Response:
        if request.url.path == "/v1/facilities":
            if len(site.fake("registry").paths("/v1/facilities")) > 300:
                return Response("tired", status_code=500)
            return JSONResponse({"items": [{"id": "f1", "facility": FACILITY}],
                                 "next_cursor": "same"})
        return registry_handler()(request)

    site = Site(registry=handle)
    async with site as http:
        page = await http.get("/map")
        no_crash(page)
        assert len(site.fake("registry").paths("/v1/facilities")) <= 10


def drip(seconds: float) -> StreamingResponse:
    """200, JSON headers, then one space every 0.2 s: each read is quick, the whole never."""

    async def spaces() -> AsyncIterator[bytes]:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            yield b" "
            await asyncio.sleep(0.2)
        yield b"{}"

    return StreamingResponse(spaces(), media_type="application/json")


async def test_a_drip_fed_matcher_does_not_hold_a_page_past_the_timeout() -> None:
    # Was broken: httpx's timeout=web_upstream_timeout_s bounds each read, not the whole
    # answer: a matcher (or any API) that trickles a byte every 0.2 s holds the page,
    # a worker's connection and the person, for as long as it likes (here 6 s, a 1 s
    # timeout)
    def handle(request: Request) -> Response:
        return drip(6)

    async with Site(matcher=handle, timeout=1.0) as http:
        started = time.monotonic()
        page = await http.get("/designs/d1")
        took = time.monotonic() - started
        no_crash(page)
        assert took < 3.5, f"the page took {took:.1f} s with a 1 s upstream timeout"


async def test_a_matcher_answering_far_more_rows_than_asked_does_not_make_a_huge_page(
        ) -> None:
    # Was broken: the page asks for limit=50 and renders whatever comes back: a matcher
    # (a bug, an old version ignoring `limit`) answering 20,000 rows makes a page of
    # megabytes, every row named, reasoned and put in the map's data attribute
    rows = [{"facility": f"f{i}", "score": 0.5, "summary": "fits", "explanation": [
        {"kind": "process", "need": "3d-printing", "outcome": "met"}]} for i in range(20_000)]
    answer = {"status": "ok", "matches": rows, "near_misses": rows}
    async with Site(matcher=matcher_handler(answer)) as http:
        page = await http.get("/designs/d1")
        no_crash(page)
        assert page.text.count('href="/facilities/') <= 100, len(page.content)


async def test_one_matcher_partition_away_does_not_stall_a_design_page() -> None:
    async def slow(request: Request) -> Response:
        await asyncio.sleep(3)  # past the page's 1 s timeout; a longer one holds shutdown
        return JSONResponse({})

    slow_matcher = Fake(slow)
    good = Fake(matcher_handler())
    async with slow_matcher.server, good.server:
        async with Site(matcher=f"{slow_matcher.url},{good.url}", timeout=1.0) as http:
            started = time.monotonic()
            page = await http.get("/designs/d1")
            assert page.status_code == 200 and "A lab" in page.text
            assert time.monotonic() - started < 3


# --- the notifier: email links, the manage page, the API key ---------------------------

@pytest.mark.parametrize("path", ["/v1/email/verify", "/v1/email/unsubscribe"])
async def test_an_email_link_when_the_notifier_is_away_is_a_503(path: str) -> None:
    # Was broken: act() calls up.notifier.http.post directly, outside Api.call: the
    # httpx.ConnectError is no Unavailable -> 500 "Something went wrong"
    away = f"http://127.0.0.1:{free_port()}"
    async with Site(notifier=away) as http:
        page = await http.post(path, params={"token": "abc_DEF-123"})
        no_crash(page)
        assert page.status_code == 503 and page.headers.get("retry-after")


@pytest.mark.parametrize("status", [500, 502, 503, 301])
async def test_an_email_link_when_the_notifier_fails_is_not_called_used_or_invalid(
        status: int) -> None:
    # Was broken: any answer but 200 is shown as 404 "This link was used already or is not
    # valid": a person whose confirmation failed on a 5xx is told their good link is bad
    # (and does not try again); a 5xx/3xx should be 503 "try again"
    async with Site(notifier=notifier_handler(status, {"error": {"message": "down"}})) as http:
        page = await http.post("/v1/email/verify", params={"token": "abc_DEF-123"})
        no_crash(page)
        assert page.status_code == 503 and "not valid" not in page.text


@pytest.mark.parametrize("token", ["a" * 101, "a" * 5000, "../../v1/subscriptions",
                                   "abc\r\nX-Injected: 1", "abc def", "%00", "é", "<svg>",
                                   "abc&token=other", "abc\n"])
async def test_odd_email_link_tokens_never_reach_the_notifier(token: str) -> None:
    # Was broken for "abc\n": _TOKEN ends in `$`, which re.match lets match before a final
    # newline, so "abc%0A" passes as a token and is forwarded to the notifier
    site = Site(notifier=notifier_handler(404, {"error": {"message": "no such token"}}))
    async with site as http:
        for path in ("/v1/email/verify", "/v1/email/unsubscribe"):
            shown = await http.get(path, params={"token": token})
            no_crash(shown)
            assert "<svg>" not in shown.text and "X-Injected" not in shown.headers
            done = await http.post(path, params={"token": token})
            no_crash(done)
            assert done.status_code in (404, 422)
        manage = await http.get("/alerts/manage", params={"token": token})
        no_crash(manage)
        assert manage.status_code in (404, 422)
    assert [r.url.path for r in site.fake("notifier").seen
            if r.url.path != "/healthz"] == []


@pytest.mark.parametrize("alert", [{"address": "a@example.org"},                # no filter
                                   {"address": "a@example.org", "enabled": True,
                                    "filter": {"region": {"lat": 1}}},            # half a region
                                   {"address": "a@example.org", "filter": []},
                                   []])
async def test_a_manage_page_from_a_notifier_answer_of_the_wrong_shape_is_a_503(
        alert: Any) -> None:
    # Was broken: found["filter"], region["lon"], filter_.get on a list -> 500
    async with Site(notifier=notifier_handler(200, alert)) as http:
        page = await http.get("/alerts/manage", params={"token": "abc_DEF-123"})
        no_crash(page)
        assert page.status_code == 503


async def test_a_hostile_alert_address_on_the_manage_page_is_text() -> None:
    alert = {"address": XSS, "enabled": False, "verified": False, "disabled_reason": XSS,
             "filter": {"design_ids": ['x" onmouseover="alert(1)'],
                        "processes": [XSS]}}
    async with Site(notifier=notifier_handler(200, alert)) as http:
        page = await http.get("/alerts/manage", params={"token": "abc_DEF-123"})
        assert page.status_code == 200
        assert "<img src=x" not in page.text and "<script>alert" not in page.text
        assert 'onmouseover="alert' not in page.text


async def test_a_notifier_that_refuses_the_page_key_is_not_the_person_s_fault(
        caplog: pytest.LogCaptureFixture) -> None:
    # Was broken: a 401/403 from the notifier (the page's key revoked or wrong) is a
    # Refused, shown to the person as a 422 form error with the notifier's words ("the API
    # key is not valid", field Authorization); and a notifier (or a proxy before it) that
    # echoes the Authorization header in its error puts the page's own key in the page
    caplog.set_level(logging.DEBUG)

    def refuse(request: Request) -> Response:
        return JSONResponse({"error": {
            "code": "unauthorized", "field": "Authorization",
            "message": f"the API key is not valid: {request.headers.get('authorization')}"}},
            status_code=401)

    async with Site(notifier=refuse) as http:
        page = await http.post("/alerts", data={"email": "a@example.org", "place": "Lyon"})
        no_crash(page)
        assert "s3cr3t" not in page.text and "s3cr3t" not in caplog.text
        assert page.status_code == 503 and "API key" not in page.text


async def test_the_key_never_shows_on_any_page_or_log(caplog: pytest.LogCaptureFixture
                                                      ) -> None:
    caplog.set_level(logging.DEBUG)
    away = f"http://127.0.0.1:{free_port()}"
    async with Site(notifier=away) as http:
        pages = [await http.post("/alerts", data={"email": "a@example.org",
                                                  "process": ["3d-printing"]}),
                 await http.get("/alerts/manage", params={"token": "abc"}),
                 await http.get("/readyz"), await http.get("/metrics")]
    for page in pages:
        assert "s3cr3t" not in page.text
    assert "s3cr3t" not in caplog.text


# --- the alert form as a mail cannon -------------------------------------------------

async def test_one_email_address_cannot_be_mailed_from_many_client_addresses() -> None:
    # Was broken: the only sign-up limit is per client address; each POST becomes a
    # subscription and so a verification email. From 20 addresses (a botnet, IPv6
    # /64s) one victim gets 20 emails an hour, 100 with the default of 5 each, and the
    # page's organization fills its subscription quota with them (then nobody can sign
    # up). The same target address should be limited too.
    site = Site(web_signups_per_hour=5)
    async with site as http:
        for i in range(20):
            page = await http.post("/alerts", headers={"X-Forwarded-For": f"10.0.0.{i}"},
                                   data={"email": "victim@example.org",
                                         "process": ["3d-printing"]})
            no_crash(page)
    sent = site.fake("notifier").paths("/v1/subscriptions")
    assert len(sent) <= 5, f"{len(sent)} verification emails to one address"


async def test_another_site_cannot_post_the_alert_form_through_its_visitors() -> None:
    # Was broken: POST /alerts has no CSRF token and no Origin/Sec-Fetch-Site check: a
    # page elsewhere with a hidden self-submitting form makes each visitor's browser sign
    # the victim up from the visitor's own address, so the per-address limit does nothing
    # and one victim gets a verification email per visitor
    site = Site()
    async with site as http:
        page = await http.post("/alerts", data={"email": "victim@example.org",
                                                "process": ["3d-printing"]},
                               headers={"Origin": "https://evil.example",
                                        "Sec-Fetch-Site": "cross-site"})
        no_crash(page)
        assert page.status_code in (400, 403)
    assert site.fake("notifier").paths("/v1/subscriptions") == []


async def test_repeated_and_unknown_process_fields_are_a_clear_error() -> None:
    site = Site()
    async with site as http:
        many = await http.post("/alerts", data={"email": "a@example.org",
                                                "process": ["3d-printing"] * 2000})
        no_crash(many)
        odd = await http.post("/alerts", data={"email": "a@example.org",
                                               "process": ["<script>", "3d-printing"]})
        assert odd.status_code == 422 and "<script>" not in odd.text
        huge = await http.post("/alerts", content=b"email=" + b"a" * 200_000,
                               headers={"Content-Type": "application/x-www-form-urlencoded"})
        no_crash(huge)
        assert huge.status_code in (413, 422)


async def test_search_cursor_tampering_is_not_a_crash() -> None:
    site = Site()
    async with site as http:
        for cursor in ("../../etc", "a" * 501, "x" * 500, "<script>", "%00"):
            page = await http.get("/", params={"cursor": cursor, "q": "x" * 200})
            no_crash(page)
            assert "<script>" not in page.text
        long = await http.get("/", params={"q": "x" * 201})
        assert long.status_code == 422 and "Traceback" not in long.text


async def test_concurrent_pages_after_the_directory_expires_reload_it_once() -> None:
    site = Site(web_directory_s=0.2)
    async with site as http:
        await http.get("/map")
        await asyncio.sleep(0.3)
        pages = await asyncio.gather(*(http.get("/map") for _ in range(30)))
        assert all(p.status_code == 200 for p in pages)
        await asyncio.sleep(0.2)
    assert len(site.fake("registry").paths("/v1/facilities")) <= 3


async def test_a_directory_reload_of_the_wrong_shape_does_not_reload_on_every_page() -> None:
    # Was broken: Directory._reload_locked catches Unavailable only: a KeyError from a page
    # of the wrong shape escapes the background task (an unretrieved task exception),
    # loaded_at is not moved, so every later page starts another full registry read
    calls = {"n": 0}

    def handle(request: Request) -> Response:
        if request.url.path == "/v1/facilities":
            calls["n"] += 1
            if calls["n"] > 1:
                return JSONResponse({"elements": []})
        return registry_handler()(request)

    site = Site(registry=handle, web_directory_s=0.2)
    async with site as http:
        await http.get("/map")
        await asyncio.sleep(0.3)
        for _ in range(20):
            page = await http.get("/map")
            assert page.status_code == 200
            await asyncio.sleep(0.01)
    assert calls["n"] <= 3, f"{calls['n']} reloads of the whole facility list"
