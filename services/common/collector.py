"""How often Python's cycle collector runs in a service that handles fan-outs."""

from __future__ import annotations

import gc

# A fan-out makes about ten objects per pair and holds thousands: at the default threshold
# (700 allocations) the young generation was collected every few dozen pairs, a quarter of
# a fan-out's time (bench/matcher at 20,000 entities: 25 %, now under 5 %); in the
# notifier, decoding a change of 1,300 pairs set off collections that walked every
# decoded change it keeps.
THRESHOLD = (50_000, 20, 10)


def collect_less_often() -> None:
    gc.set_threshold(*THRESHOLD)
