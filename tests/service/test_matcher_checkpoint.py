"""The matcher's checkpoint against real JetStream: snapshot object plus batch records."""

from __future__ import annotations

import uuid
from dataclasses import replace

import nats
import orjson
import pytest

from services.matcher.checkpoint import Change, Checkpoint
from tests.support.builders import facility


@pytest.fixture
async def js(nats_server):
    nc = await nats.connect(nats_server.url)
    yield nc.jetstream()
    await nc.close()


@pytest.fixture
def bucket() -> str:
    return f"ck{uuid.uuid4().hex[:8]}"


async def keys(js, bucket: str) -> list[str]:
    """The bucket's keys, from the stream's subjects (nats-py's kv.keys() can come back
    empty while its consumer starts)."""
    info = await js.stream_info(f"KV_{bucket}", subjects_filter=">")
    return sorted(s.removeprefix(f"$KV.{bucket}.") for s in (info.state.subjects or {}))


def change(seq: int, new, old=None) -> Change:
    return Change(seq, "facility", new.id, new.version, old, new, None, None)


async def test_a_restart_reads_the_snapshot_and_the_deltas_after_it(js, bucket: str) -> None:
    checkpoint = Checkpoint(js, bucket, snapshot_every=3)
    await checkpoint.open()
    assert await checkpoint.load() is None  # a first start

    a1, b1 = facility(["fdm"], id_="a", version=1), facility(["sla"], id_="b", version=1)
    await checkpoint.reset(2, [("facility", "a", 1, a1), ("facility", "b", 1, b1)])
    a2 = facility(["cnc-milling"], id_="a", version=2)
    c1 = facility(["welding"], id_="c", version=1)
    batch = [change(3, a2, a1), change(4, c1)]
    await checkpoint.begin(batch)
    # written ahead, not committed: the batch is pending, the entities as they were
    loaded = await checkpoint.load()
    assert loaded is not None and loaded.position == 2
    assert loaded.pending == batch
    assert {e[1]: e[3] for e in loaded.entities} == {"a": a1, "b": b1}

    await checkpoint.commit(4)
    assert not checkpoint.due
    loaded = await checkpoint.load()
    assert loaded is not None and loaded.position == 4 and not loaded.pending
    assert {e[1]: e[3] for e in loaded.entities} == {"a": a2, "b": b1, "c": c1}

    # past snapshot_every changes: a new snapshot holds everything, the records go
    await checkpoint.begin([Change(5, "facility", "b", 2, b1, None, None, None)])
    await checkpoint.commit(5)
    assert checkpoint.due
    await checkpoint.snapshot(5, [("facility", "a", 2, a2), ("facility", "b", 2, None),
                                  ("facility", "c", 1, c1)])
    kv = await js.key_value(bucket)
    assert await keys(js, bucket) == ["position", "snapshot"]
    store = await js.object_store(f"{bucket}-snap")
    assert len([o for o in await store.list() if not o.deleted]) == 1

    # a crash between pointing at the snapshot and purging leaves older records: the
    # higher version wins, so they change nothing
    await kv.put("b.3", orjson.dumps([change(3, a1).dump()]))
    loaded = await Checkpoint(js, bucket).load()
    assert loaded is not None and loaded.position == 5
    assert sorted((e[1], e[2], e[3]) for e in loaded.entities) == [
        ("a", 2, a2), ("b", 2, None), ("c", 1, c1)]


async def test_a_checkpoint_in_the_layout_before_batch_records_still_loads(js, bucket: str) -> None:
    """Per-entity deltas (`e.<kind>.<id>`) and one `pending` record: what a matcher of the
    previous release left. The next snapshot purges both."""
    checkpoint = Checkpoint(js, bucket, snapshot_every=100)
    await checkpoint.open()
    a1, a2 = facility(["fdm"], id_="a", version=1), facility(["sla"], id_="a", version=2)
    b1 = facility(["welding"], id_="b", version=1)
    await checkpoint.reset(1, [("facility", "a", 1, a1)])
    kv = await js.key_value(bucket)
    await kv.put("e.f.a", orjson.dumps(["facility", "a", 2, change(2, a2).dump()[5]]))
    await kv.put("position", b"2")
    await kv.put("pending", orjson.dumps([change(3, b1).dump()]))
    loaded = await checkpoint.load()
    assert loaded is not None and loaded.position == 2
    assert {e[1]: e[3] for e in loaded.entities} == {"a": a2}
    assert loaded.pending == [change(3, b1)]

    await checkpoint.snapshot(3, [("facility", "a", 2, a2), ("facility", "b", 1, b1)])
    assert await keys(js, bucket) == ["position", "snapshot"]
    loaded = await checkpoint.load()
    assert loaded is not None and not loaded.pending and len(loaded.entities) == 2


def test_a_change_matching_cannot_see_records_its_old_profile_compactly() -> None:
    """A rename or a move: the old profile is the new one at another version and place,
    and comes back exactly from the record; a real change keeps the full old profile."""
    a1 = facility(["fdm"], id_="a", version=1)
    moved = replace(a1, version=2, lat=10.0, lon=20.0)
    for new, old in ((moved, a1), (facility(["sla"], id_="a", version=2), a1)):
        record = orjson.loads(orjson.dumps(change(7, new, old).dump()))
        assert Change.load(record) == change(7, new, old)
    assert len(orjson.dumps(change(7, moved, a1).dump())) < len(
        orjson.dumps(change(7, facility(["sla"], id_="a", version=2), a1).dump()))


async def test_a_batch_larger_than_a_message_is_recorded_in_pieces(js, bucket: str) -> None:
    """The write-ahead record of 2,000 changes is several KV values, each under NATS's
    message limit; all of them come back as the pending batch."""
    checkpoint = Checkpoint(js, bucket)
    await checkpoint.open()
    await checkpoint.reset(0, [])
    processes = ["fdm", "sla", "laser-cutting", "cnc-milling", "welding", "sewing"]
    batch = [change(seq, facility(processes, id_=f"facility-with-a-long-id-{seq:06d}"))
             for seq in range(1, 2001)]
    await (await checkpoint.begin(batch))
    kv = await js.key_value(bucket)
    pieces = [k for k in await keys(js, bucket) if k.startswith("b.")]
    assert len(pieces) > 1
    for key in pieces:
        assert len((await kv.get(key)).value) <= 256 * 1024
    loaded = await checkpoint.load()
    assert loaded is not None and sorted(c.seq for c in loaded.pending) == list(
        range(1, 2001))
