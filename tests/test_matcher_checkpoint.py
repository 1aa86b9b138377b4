"""The matcher's checkpoint against real JetStream: snapshot object plus KV deltas."""

from __future__ import annotations

import uuid

import nats
import orjson

from contracts.models import Facility
from services.matcher.checkpoint import Change, Checkpoint, entity_key
from services.matcher.profiles import dump_facility, facility_profile


def lab(id_: str, version: int, processes: list[str]):
    return facility_profile(Facility(id=id_, name=id_, processes=[
        {"id": p, "label": p} for p in processes]), version)


def change(seq: int, new, old=None) -> Change:
    return Change(seq, "facility", new.id, new.version, old, new, None, None)


async def test_a_restart_reads_the_snapshot_and_the_deltas_after_it(nats_server) -> None:
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    bucket = f"ck{uuid.uuid4().hex[:8]}"
    try:
        checkpoint = Checkpoint(js, bucket, snapshot_every=3)
        await checkpoint.open()
        assert await checkpoint.load() is None  # a first start

        a1, b1 = lab("a", 1, ["fdm"]), lab("b", 1, ["sla"])
        await checkpoint.reset(2, [("facility", "a", 1, a1), ("facility", "b", 1, b1)])
        a2, c1 = lab("a", 2, ["cnc-milling"]), lab("c", 1, ["welding"])
        await checkpoint.commit([change(3, a2, a1), change(4, c1)], 4)
        assert not checkpoint.due
        loaded = await checkpoint.load()
        assert loaded is not None and loaded.position == 4 and not loaded.pending
        assert {e[1]: e[3] for e in loaded.entities} == {"a": a2, "b": b1, "c": c1}

        # past snapshot_every deltas: a new snapshot holds everything, the deltas go
        await checkpoint.commit([Change(5, "facility", "b", 2, b1, None, None, None)], 5)
        assert checkpoint.due
        await checkpoint.snapshot(5, [("facility", "a", 2, a2), ("facility", "b", 2, None),
                                      ("facility", "c", 1, c1)])
        kv = await js.key_value(bucket)
        assert [k for k in await kv.keys() if k.startswith("e.")] == []
        store = await js.object_store(f"{bucket}-snap")
        assert len([o for o in await store.list() if not o.deleted]) == 1

        # a crash between pointing at the snapshot and purging leaves older deltas: the
        # higher version wins, so they change nothing
        await kv.put(entity_key("facility", "a"),
                     orjson.dumps(["facility", "a", 1, dump_facility(a1)]))
        loaded = await Checkpoint(js, bucket).load()
        assert loaded is not None and loaded.position == 5
        assert sorted((e[1], e[2], e[3]) for e in loaded.entities) == [
            ("a", 2, a2), ("b", 2, None), ("c", 1, c1)]
    finally:
        await nc.close()
