"""When to try a failed delivery again. Pure.

The schedule (seconds after each failed attempt) follows Svix's: 5 s, 5 min, 30 min, 2 h,
5 h, 10 h, 10 h, each with +-20 % jitter so that an endpoint that failed for everyone is
not hit by every retry at the same moment. A receiver's Retry-After is honoured within
[scheduled delay, 2 x scheduled delay]: it may slow us down, not hold a delivery forever
or make us retry faster than the schedule."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

DEFAULT_SCHEDULE = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
JITTER = 0.2
OUR_FAULT_MAX_DELAY_S = 300.0
RETRY_AFTER_DIGITS = 10  # longest delta-seconds read (over 300 years)


def next_delay(failed_attempts: int, schedule: tuple[float, ...],
               retry_after: float | None = None, rng: random.Random | None = None
               ) -> float | None:
    """Seconds until the next attempt after `failed_attempts` failures (>= 1), or None
    when the schedule is exhausted."""
    if failed_attempts > len(schedule):
        return None
    base = schedule[failed_attempts - 1]
    delay = base * (1 + (rng or random).uniform(-JITTER, JITTER))
    if retry_after is not None:
        delay = min(max(retry_after, base), 2 * base)
    return delay


def our_fault_delay(failed_attempts: int, schedule: tuple[float, ...],
                    rng: random.Random | None = None) -> float:
    """Seconds until the next attempt when our side is at fault (the mail server refuses
    our login or our sender): the schedule, but never exhausted and at most
    OUR_FAULT_MAX_DELAY_S apart, so a subscriber loses nothing to an outage of ours of any
    length, and mail flows again within minutes once the operator (alerted) fixes it."""
    step = next_delay(min(failed_attempts, len(schedule)), schedule, rng=rng)
    return min(step if step is not None else schedule[-1], OUR_FAULT_MAX_DELAY_S)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date; None if absent
    or unreadable."""
    if not value:
        return None
    value = value.strip()
    # RFC 9110's delta-seconds are ASCII digits: str.isdigit() also takes "²" (which
    # float() refuses) and other scripts' digits. Past 10 digits it is no answer we honour
    # anyway (next_delay caps it at twice the step).
    if value.isascii() and value.isdigit():
        return float(value) if len(value) <= RETRY_AFTER_DIGITS else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def parse_schedule(text: str) -> tuple[float, ...]:
    """`5,300,1800` (seconds) -> (5.0, 300.0, 1800.0); at least one positive step."""
    steps = tuple(float(s) for s in text.replace(" ", "").split(",") if s)
    if not steps or any(s <= 0 for s in steps):
        raise ValueError("a retry schedule is one or more positive numbers of seconds")
    return steps
