"""The chaos run (tests/support/chaos.py) as a test: a minute of steady changes while the registry,
its relay, the matcher, the notifier, PostgreSQL and NATS are killed in turn with SIGKILL
and started again; nothing acknowledged may be lost and nothing delivered twice under
different identities. `python -m tests.support.chaos --minutes 3` runs it longer and prints the
report."""

from __future__ import annotations

import os
from pathlib import Path

from tests.support.chaos import PARTS, run


async def test_killing_every_part_in_turn_loses_and_repeats_nothing(tmp_path: Path) -> None:
    minutes = float(os.environ.get("MAKELOCAL_CHAOS_MINUTES", "0.5"))
    report = await run(minutes, seed=1, work=tmp_path, say=print)
    text = "\n".join(report.lines)
    assert not report.failures, text
    assert all(f"{part} (down" in text for part in PARTS), text
