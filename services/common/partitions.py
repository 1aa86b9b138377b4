"""Before a service that routes or consumes design events starts: refuse, saying why, when
REGISTRY already spreads designs over another partition count. Asks only; a crash here
leaves nothing behind."""

from __future__ import annotations

import asyncio
import logging
import sys

from services.common import nats as nats_util

log = logging.getLogger(__name__)
CHECK_S = 10.0  # never hold a start up for long


def refuse_other_partitions(nats_url: str, partitions: int, who: str) -> None:
    """Exit 2, saying why, when REGISTRY routes designs by another partition count; NATS
    or JetStream not answering now: the service checks again before it publishes or
    consumes (it must start while a NATS node is down)."""
    reason = asyncio.run(_bounded(nats_url, partitions, who))
    if reason is not None:
        log.error(f"{who} refuses to start", extra={"error": reason})
        sys.exit(2)


async def _bounded(nats_url: str, partitions: int, who: str) -> str | None:
    try:
        async with asyncio.timeout(CHECK_S):
            return await _mismatch(nats_url, partitions, who)
    except TimeoutError:
        log.warning("partition check deferred", extra={"error": "timed out"})
        return None


async def _mismatch(nats_url: str, partitions: int, who: str) -> str | None:
    try:
        nc = await nats_util.connect(nats_url, f"{who}-check")
    except Exception as exc:
        log.warning("partition check deferred", extra={"error": repr(exc)})
        return None
    try:
        await nats_util.check_partitions(nc.jetstream(), partitions, who)
    except nats_util.PartitionMismatch as exc:
        return str(exc)
    except Exception as exc:  # JetStream not answering (a node down): later, then
        log.warning("partition check deferred", extra={"error": repr(exc)})
    finally:
        await nc.close()
    return None
