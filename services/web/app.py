"""Wiring: settings -> API clients, templates, pages. Nothing else."""

from __future__ import annotations

import asyncio
import functools
import logging
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from prometheus_client import CollectorRegistry
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware import Middleware
from starlette.routing import Mount

from services.common import logs, shell, tracing
from services.common.ratelimit import TokenBuckets
from services.web import places, routes
from services.web.clients import Api, Directory, Matchers, Refused, Unavailable
from services.web.guards import PageGuards
from services.web.settings import WebSettings

log = logging.getLogger(__name__)
HERE = Path(__file__).parent
FORM_BODY_BYTES = 64 * 1024  # the alert form is a few fields: nothing larger is read


def create_app(settings: WebSettings | None = None) -> FastAPI:
    settings = settings or WebSettings()
    timeout = settings.web_upstream_timeout_s
    key = settings.web_api_key.get_secret_value() if settings.web_api_key else None
    registry_api = Api("registry", settings.registry_url, timeout)
    up = routes.Upstream(
        registry=registry_api,
        matchers=Matchers([Api("matcher", url, timeout) for url in settings.matcher_urls]),
        notifier=Api("notifier", settings.notifier_url, timeout,
                     {"Authorization": f"Bearer {key}"} if key else None),
        directory=Directory(registry_api, settings.web_directory_s),
        signups=TokenBuckets(rate=settings.web_signups_per_hour / 3600,
                             burst=settings.web_signups_per_hour),
        recipients=TokenBuckets(rate=settings.web_signups_per_address_per_day / 86_400,
                                burst=settings.web_signups_per_address_per_day),
        alerts_enabled=key is not None)
    templates = Jinja2Templates(directory=HERE / "templates")

    async def gazetteer() -> None:
        # the gazetteer takes a second to load: before the first person types a place
        await asyncio.to_thread(places.find, "Paris")

    async def close_clients() -> None:
        for api in (up.registry, up.notifier):
            await api.close()
        await up.matchers.close()

    async def answers(api: Api) -> None:
        response = await api.http.get("/healthz")
        response.raise_for_status()

    async def every_matcher() -> None:
        await asyncio.gather(*(answers(m) for m in up.matchers.partitions))

    return shell.build(shell.Service(
        name="web", metrics=CollectorRegistry(), max_body_bytes=FORM_BODY_BYTES,
        openapi=False, errors=functools.partial(install_page_errors, templates=templates),
        mounts=[Mount("/static", StaticFiles(directory=HERE / "static"), name="static")],
        routers=[routes.router(templates, up)],
        checks={"registry": lambda: answers(up.registry), "matcher": every_matcher,
                "notifier": lambda: answers(up.notifier)},
        starting=[gazetteer], stopping=[close_clients],
        # pages and Leaflet are text: compressed they are a fifth (a phone on a slow link)
        middleware=[Middleware(PageGuards), Middleware(GZipMiddleware, minimum_size=1024)]))


def install_page_errors(app: FastAPI, templates: Jinja2Templates) -> None:
    """Every failure answers a page (never JSON, never a traceback)."""

    def message(request: Request, status: int, title: str, text: str) -> HTMLResponse:
        return templates.TemplateResponse(request, "message.html",
                                          {"title": title, "text": text}, status_code=status)

    @app.exception_handler(Unavailable)
    async def _unavailable(request: Request, exc: Unavailable) -> HTMLResponse:
        log.warning("upstream unavailable", extra={"service": exc.service, "error": str(exc)})
        response = message(request, 503, "Not available just now",
                           f"The {exc.service} does not answer. Try again in a minute.")
        response.headers["Retry-After"] = "30"
        return response

    @app.exception_handler(Refused)
    async def _refused(request: Request, exc: Refused) -> HTMLResponse:
        where = f" ({exc.field})" if exc.field else ""
        return message(request, 422, "This cannot be shown", f"{exc.message}{where}")

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> HTMLResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ())[1:])
        return message(request, 422, "This address is not right",
                       f"{where}: {first.get('msg', 'invalid')}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> HTMLResponse:
        if exc.status_code == 404:
            return message(request, 404, "Not found", "There is no page at this address.")
        return message(request, exc.status_code, "Not possible", str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> HTMLResponse:
        # logged in full here; the person gets a page, never a traceback
        log.exception("page failed", extra={"path": request.url.path})
        return message(request, 500, "Something went wrong",
                       "This page could not be made. Try again, or go back.")


def main() -> None:
    import uvicorn

    settings = WebSettings()
    logs.configure("web", settings.log_level)
    tracing.configure("makelocal-web")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.web_port,
                log_config=None, access_log=False, proxy_headers=True,
                forwarded_allow_ips=settings.web_forwarded_allow_ips)
