"""The long-running loops every service runs: a piece of work restarted after any failure,
and a periodic refresh that never stops the process for one failed round."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


async def restarting(step: Callable[[], Awaitable[None]], what: str, delay: float,
                     on_error: Callable[[], None] = lambda: None) -> None:
    """Run `step` again and again: after it fails, log why, call `on_error`, wait `delay`.
    Only cancellation ends it."""
    while True:
        try:
            await step()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning(f"{what} restarting after error", extra={"error": repr(exc)})
            on_error()
            await asyncio.sleep(delay)


async def every(seconds: float, step: Callable[[], Awaitable[None]]) -> None:
    """Run `step` every `seconds`; a failed round (database away) is logged and skipped."""
    while True:
        try:
            await step()
        except Exception as exc:
            log.debug("periodic refresh failed", extra={"error": repr(exc)})
        await asyncio.sleep(seconds)
