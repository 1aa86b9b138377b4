"""A registry or relay whose partition count differs from the one REGISTRY already routes
design events by refuses to start and says why, and leaves the stream as it is (updating
it would re-route design events under the matchers' feet)."""

from __future__ import annotations

from pathlib import Path

import nats

from contracts.events import REGISTRY_STREAM, REGISTRY_SUBJECTS, design_partition_transform
from services.common import nats as nats_util
from tests.support.helpers import ServiceProcess


async def _registry_stream(url: str, partitions: int) -> None:
    nc = await nats.connect(url)
    try:  # as a registry with MAKELOCAL_PARTITIONS=2 creates it
        await nats_util.ensure_stream(nc, nats_util.compacted_stream(
            REGISTRY_STREAM, [REGISTRY_SUBJECTS], 60, 1, design_partition_transform(partitions)))
    finally:
        await nc.close()


async def _partitions(url: str) -> int:
    from contracts.events import partitions_of

    nc = await nats.connect(url)
    try:
        transform = (await nc.jetstream().stream_info(REGISTRY_STREAM)).config.subject_transform
        return partitions_of(transform.dest if transform else None)
    finally:
        await nc.close()


async def test_a_registry_or_relay_of_another_partition_count_refuses_to_start(
        nats_server, registry_env: dict[str, str], clean_streams: None,
        tmp_path: Path) -> None:
    await _registry_stream(nats_server.url, 2)
    for command in ("registry", "registry-relay"):
        log = tmp_path / f"{command}.log"
        proc = ServiceProcess(registry_env | {"MAKELOCAL_PARTITIONS": "1"}, log,
                              command).start(wait=False)
        assert await proc.wait_dead(30) == 2, log.read_text()[-2000:]
        text = log.read_text()
        assert f"{command} refuses to start" in text
        assert "spreads designs over 2 partition(s): set it to 2" in text
    assert await _partitions(nats_server.url) == 2  # nobody re-routed it
