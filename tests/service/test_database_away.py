"""A request that meets PostgreSQL gone (killed, restarting, a pooled connection lost
mid-use) gets 503 with Retry-After, not 500: nothing was written and trying again is
right. (The chaos run found 500s while PostgreSQL was down.)"""

from __future__ import annotations

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from services.common.errors import install_error_handlers

FAULTS = {
    "refused": ConnectionRefusedError(111, "Connection refused"),
    "lost mid-use": asyncpg.exceptions.InternalClientError(
        "cannot switch to state 15; another operation (2) is in progress"),
    "closed": asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed"),
    "shutting down": asyncpg.exceptions.AdminShutdownError("terminating connection"),
    "starting": asyncpg.exceptions.CannotConnectNowError("the database system is starting"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_database_away_is_503_and_our_bugs_stay_500(fault: str) -> None:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/write")
    async def write() -> None:
        raise FAULTS[fault]

    @app.post("/bug")
    async def bug() -> None:
        raise KeyError("ours")

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app, raise_app_exceptions=False),
                                 base_url="http://t") as http:
        away = await http.post("/write")
        assert away.status_code == 503, away.text
        assert away.headers["retry-after"] == "1"
        assert away.json()["error"]["code"] == "unavailable"
        assert "Traceback" not in away.text
        ours = await http.post("/bug")
        assert ours.status_code == 500 and "KeyError" not in ours.text
