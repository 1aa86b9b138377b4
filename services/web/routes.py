"""The pages: find a design, a design's page (what it needs, who near a place can make it),
a facility's page, the map, the alert form and the pages the alert emails link to.
Server-rendered HTML that works without JavaScript; the map is the one script."""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.templating import Jinja2Templates

from contracts.models import ID_PATTERN
from contracts.vocabulary import processes as process_vocabulary
from services.common.ratelimit import TokenBuckets, retry_after
from services.web import answers, clients, places, views
from services.web.clients import Api, Directory, Matchers, Refused, Unavailable

log = logging.getLogger(__name__)
PAGE_SIZE = 20
RADII_KM = (10, 25, 50, 100, 250, 1000)
_ID = re.compile(ID_PATTERN)
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,100}$")
_CURSOR = re.compile(r"^[A-Za-z0-9_=-]{1,500}$")
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,255}\.[^@\s]{1,63}$")


@dataclass
class Upstream:
    registry: Api
    matchers: Matchers
    notifier: Api
    directory: Directory
    signups: TokenBuckets  # per client address
    recipients: TokenBuckets  # per address mailed
    alerts_enabled: bool


def router(templates: Jinja2Templates, up: Upstream) -> APIRouter:
    pages = APIRouter(include_in_schema=False)

    def page(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        return templates.TemplateResponse(request, name, context, status_code=status)

    @pages.get("/", response_class=HTMLResponse)
    async def search(request: Request,
                     q: Annotated[str, Query(max_length=200)] = "",
                     process: Annotated[str, Query(max_length=100)] = "",
                     material: Annotated[str, Query(max_length=100)] = "",
                     cursor: Annotated[str, Query(max_length=500)] = "") -> HTMLResponse:
        params: dict[str, Any] = {"limit": PAGE_SIZE}
        for key, value in (("q", q), ("process", process), ("material", material)):
            if value.strip():
                params[key] = value.strip()
        if cursor and _CURSOR.fullmatch(cursor):
            params["cursor"] = cursor
        found = await up.registry.call("GET", "/v1/designs", params=params,
                                       model=answers.DesignList)
        results = [{"id": i["id"], "name": i["design"]["name"],
                    "description": (i["design"].get("description") or "")[:240],
                    "processes": [t["label"] for t in i["design"].get("processes", [])],
                    "inferred": any(t.get("inferred") for t in i["design"].get("processes", []))}
                   for i in found["items"]]
        return page(request, "search.html", q=q, process=process, material=material,
                    results=results, next_cursor=found.get("next_cursor"),
                    processes=_process_choices())

    @pages.get("/designs/{design_id}", response_class=HTMLResponse)
    async def design(request: Request, design_id: str,
                     place: Annotated[str, Query(max_length=places.MAX_QUERY)] = "",
                     radius_km: Annotated[int, Query(ge=1, le=20_000)] = 100) -> HTMLResponse:
        if not _ID.fullmatch(design_id):
            return _missing(request, page, "design")
        found = await up.registry.call("GET", f"/v1/designs/{design_id}", missing_ok=True,
                                       model=answers.DesignItem)
        if found is None:
            return _missing(request, page, "design")
        origin = places.find(place) if place else None
        params: dict[str, Any] = {"limit": 50}
        if origin is not None:
            params |= {"near": f"{origin.lat},{origin.lon}", "radius_km": radius_km}
        answer = await up.matchers.facilities_for(design_id, params) or {
            "status": "not_indexed", "matches": [], "near_misses": []}
        directory = await up.directory.all()
        matches = views.ranked(answer["matches"], directory, origin is not None)
        misses = views.ranked(answer["near_misses"], directory, origin is not None)
        data = found["design"]
        return page(request, "design.html", design=data, needs=views.needs(data),
                    links=views.safe_links(data.get("links", {})),
                    match_status=answer.get("status"),
                    needs_information=answer.get("needs"), matches=matches, misses=misses,
                    place=place, origin=origin, unknown_place=bool(place) and origin is None,
                    radius_km=radius_km, radii=RADII_KM,
                    map_data=json.dumps(views.markers([m["facility"] for m in matches])))

    @pages.get("/facilities/{facility_id}", response_class=HTMLResponse)
    async def facility(request: Request, facility_id: str) -> HTMLResponse:
        if not _ID.fullmatch(facility_id):
            return _missing(request, page, "facility")
        found = await up.registry.call("GET", f"/v1/facilities/{facility_id}",
                                       missing_ok=True, model=answers.FacilityItem)
        if found is None:
            return _missing(request, page, "facility")
        can = await up.matchers.designs_for(facility_id, 50) or {"matches": []}
        names: dict[str, str] = {}
        if can["matches"]:  # one request names them all
            named = await up.registry.call("GET", "/v1/designs", params={
                "id": [m["design"] for m in can["matches"]], "limit": 200},
                model=answers.DesignList)
            names = {i["id"]: i["design"]["name"] for i in named["items"]}
        data = found["facility"]
        summary = views.markers([clients.summary(data)])
        return page(request, "facility.html", facility=data, designs=can["matches"],
                    names=names,
                    links=views.safe_links(data.get("links", {})),
                    map_data=json.dumps(summary))

    @pages.get("/map", response_class=HTMLResponse)
    async def map_(request: Request) -> HTMLResponse:
        directory = await up.directory.all()
        return page(request, "map.html", count=len(directory),
                    map_data=json.dumps(views.markers(list(directory.values()))))

    @pages.get("/alerts", response_class=HTMLResponse)
    async def alert_form(request: Request,
                         design: Annotated[str, Query(max_length=64)] = "",
                         facility: Annotated[str, Query(max_length=64)] = "",
                         place: Annotated[str, Query(max_length=places.MAX_QUERY)] = "",
                         ) -> HTMLResponse:
        return page(request, "alert.html", form={"design": design, "facility": facility,
                                                 "place": place, "radius_km": 50,
                                                 "processes": []},
                    **_alert_context(up))

    @pages.post("/alerts", response_class=HTMLResponse)
    async def alert_create(request: Request,
                           email: Annotated[str, Form(max_length=320)] = "",
                           place: Annotated[str, Form(max_length=places.MAX_QUERY)] = "",
                           radius_km: Annotated[str, Form(max_length=10)] = "50",
                           process: Annotated[list[str] | None, Form()] = None,
                           design: Annotated[str, Form(max_length=64)] = "",
                           facility: Annotated[str, Form(max_length=64)] = "",
                           ) -> HTMLResponse:
        form = {"email": email, "place": place, "radius_km": radius_km,
                "processes": process or [], "design": design, "facility": facility}
        problem, filter_ = _alert_filter(form)
        if not up.alerts_enabled:
            problem = ("", "email alerts are not set up on this server")
        if problem is None:
            now = time.monotonic()
            # per client address, and per address mailed: each sign-up sends a mail, and
            # many clients (or other sites' visitors) must not flood one inbox
            client, recipient = (request.client.host if request.client else "?",
                                 email.strip().lower())
            wait = max(up.signups.wait(client, now), up.recipients.wait(recipient, now))
            if wait:
                return page(request, "alert.html", 429, form=form,
                            error=("", "too many sign-ups from here or for this address;"
                                   f" try again in {retry_after(wait)} s"),
                            **_alert_context(up))
            up.signups.take(client, now)
            up.recipients.take(recipient, now)
            try:
                await up.notifier.call("POST", "/v1/subscriptions", json={
                    "channel": "email", "address": email.strip(), "filter": filter_})
            except Refused as exc:
                if exc.status in (401, 403, 429):  # the page's own key or organization:
                    # no fault of the person's, and not theirs to read
                    log.error("the notifier refuses the page's alerts",
                              extra={"status": exc.status})
                    raise Unavailable("alert service", f"HTTP {exc.status}") from None
                problem = (_form_field(exc.field), exc.message)
        if problem is not None:
            return page(request, "alert.html", 422, form=form, error=problem,
                        **_alert_context(up))
        return page(request, "alert_sent.html", email=email.strip())

    @pages.get("/alerts/manage", response_class=HTMLResponse)
    async def manage(request: Request, token: Annotated[str, Query(max_length=100)] = ""
                     ) -> HTMLResponse:
        found = await up.notifier.call("GET", "/v1/email/subscription",
                                       params={"token": token}, missing_ok=True,
                                       model=answers.Alert) if (
            _TOKEN.fullmatch(token)) else None
        if found is None:
            return page(request, "message.html", 404, title="Link not valid",
                        text="This alert link is not valid.")
        return page(request, "manage.html", alert=found, token=token,
                    asks=views.alert_terms(found["filter"], _labels()))

    for path, what in (("/v1/email/verify", "confirm"), ("/v1/email/unsubscribe",
                                                         "unsubscribe")):
        _email_link(pages, page, up, path, what)

    @pages.get("/map/facilities.json")
    async def facilities_json() -> JSONResponse:
        directory = await up.directory.all()
        return JSONResponse(views.markers(list(directory.values())),
                            headers={"Cache-Control": "max-age=30"})

    return pages


def _email_link(pages: APIRouter, page: Any, up: Upstream, path: str, what: str) -> None:
    """A link in an alert email: GET shows a button, only the POST acts (mail scanners
    open every link), and the POST is the notifier's, forwarded."""

    @pages.get(path, response_class=HTMLResponse, name=f"{what}_page")
    async def ask(request: Request, token: Annotated[str, Query(max_length=100)] = ""
                  ) -> HTMLResponse:
        return page(request, "email_link.html", what=what, token=token,
                    valid=bool(_TOKEN.fullmatch(token)))

    @pages.post(path, response_class=HTMLResponse, name=what)
    async def act(request: Request, token: Annotated[str, Query(max_length=100)] = ""
                  ) -> Response:
        if not _TOKEN.fullmatch(token):
            return page(request, "email_link.html", 404, what=what, token="", valid=False)
        status, _ = await up.notifier.send("POST", path, params={"token": token})
        if status not in (200, 404):  # the notifier's trouble: the link may be good
            raise Unavailable(up.notifier.name, f"HTTP {status}")
        done = status == 200
        return page(request, "email_link.html", 200 if done else 404, what=what,
                    token=token, valid=done, done=done)


def _alert_filter(form: dict[str, Any]) -> tuple[tuple[str, str] | None, dict[str, Any]]:
    """The notifier's filter from the form, or (field, what is wrong)."""
    if not _EMAIL.fullmatch(form["email"].strip()):
        return ("email", "enter an email address like name@example.org"), {}
    filter_: dict[str, Any] = {}
    if form["place"].strip():
        where = places.find(form["place"])
        if where is None:
            return ("place", "this place is not known here: type a city (Lyon, or Lyon, FR)"
                             " or coordinates (45.76, 4.84)"), {}
        try:
            radius = float(form["radius_km"])
        except ValueError:
            radius = -1
        if not 1 <= radius <= 20_000:
            return ("radius_km", "the distance is a number of kilometres, 1 to 20,000"), {}
        filter_["region"] = {"lat": where.lat, "lon": where.lon, "radius_km": radius}
    known = process_vocabulary().entries
    chosen = [p for p in form["processes"] if p in known]
    if len(chosen) != len(form["processes"]):
        return ("process", "choose processes from the list"), {}
    if chosen:
        filter_["processes"] = chosen
    for key, field in (("design", "design_ids"), ("facility", "facility_ids")):
        value = form[key].strip()
        if value:
            if not _ID.fullmatch(value):
                return (key, f"not a {key} id"), {}
            filter_[field] = [value]
    if not filter_:
        return ("place", "say what to be told about: a place, processes, a design or a"
                         " facility"), {}
    return None, filter_


def _form_field(api_field: str | None) -> str:
    """The form field an API error names (the notifier's `address` is our `email`)."""
    if not api_field:
        return ""
    head = api_field.split(".")[-1]
    return {"address": "email", "region": "place", "lat": "place", "lon": "place",
            "processes": "process", "design_ids": "design", "facility_ids": "facility"}.get(
                head, head)


def _alert_context(up: Upstream) -> dict[str, Any]:
    return {"processes": _process_choices(), "radii": RADII_KM,
            "alerts_enabled": up.alerts_enabled}


def _labels() -> dict[str, str]:
    return {e.id: e.label for e in process_vocabulary().entries.values()}


def _process_choices() -> list[tuple[str, str]]:
    vocab = process_vocabulary()
    return sorted(((e.id, e.label) for e in vocab.entries.values() if e.requirement),
                  key=lambda c: c[1].lower())


def _missing(request: Request, page: Any, what: str) -> HTMLResponse:
    return page(request, "message.html", 404, title=f"No such {what}",
                text=f"There is no {what} with this address. It may have been removed.")
