"""What every page answer carries and what every form post must show: security headers
(the browser runs only this site's scripts, no one frames the confirm buttons) and posts
from this site only (another site's hidden form must not sign its visitors up)."""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self';"
                               " img-src 'self' data:; connect-src 'self'; object-src 'none';"
                               " base-uri 'self'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}
REFUSED = (b"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Not sent"
           b"</title></head><body><h1>Not sent</h1><p>This form can only be sent from this"
           b" site's own pages.</p><p><a href=\"/\">Go to the site</a></p></body></html>")


def cross_site(method: str, headers: Headers) -> bool:
    """A form post another site made a browser send. Browsers say so (Sec-Fetch-Site; or an
    Origin other than this host); a request with neither (curl, a script) is no one's
    visitor and is let through."""
    if method not in ("POST", "PUT", "PATCH", "DELETE"):
        return False
    fetch_site = headers.get("sec-fetch-site")
    if fetch_site is not None:
        return fetch_site not in ("same-origin", "none")
    origin = headers.get("origin")
    if origin is None:
        return False
    return origin == "null" or urlsplit(origin).netloc != headers.get("host", "")


class PageGuards:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if cross_site(scope["method"], Headers(scope=scope)):
            await send({"type": "http.response.start", "status": 403, "headers": [
                (b"content-type", b"text/html; charset=utf-8"),
                (b"content-length", str(len(REFUSED)).encode()),
                *((k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items())]})
            await send({"type": "http.response.body", "body": REFUSED})
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, with_headers)
