"""What one delivery attempt means, webhook or email alike: delivered, tried again after a
delay, failed (disabling the subscription, or suppressing an address that does not exist)
or cancelled before it was made. Pure: the dispatcher acts on it (dispatch._finish).

A webhook: 2xx delivers; 410 Gone fails and disables the subscription; anything else (3xx
is not followed, 0 is no answer: a timeout, a refused or failed connection) is retried on
the schedule, a 429's or 503's Retry-After honoured within its bounds (schedule.py), and
fails once the schedule is done. An email: 250 delivers; a refusal that says the mailbox
does not exist fails and suppresses the address; one that says our configuration is wrong
is retried for ever (schedule.our_fault_delay); anything else is retried like a
webhook's (refusals.py says which is which)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import StrEnum

from services.notifier.refusals import Fault
from services.notifier.schedule import next_delay, our_fault_delay, parse_retry_after

GONE = "the endpoint answered 410 Gone"


class OutcomeKind(StrEnum):
    """Each value is the `result` label of makelocal_notifier_deliveries_total, and but
    for RETRY the status a delivery ends in: dashboards, alerts and the API read them."""

    DELIVERED = "delivered"
    RETRY = "retry"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: OutcomeKind
    delay: float | None = None  # RETRY: seconds until the next attempt
    disable_reason: str | None = None  # FAILED: the subscription is disabled for this
    suppress: bool = False  # FAILED: the address does not exist; no mail to it for a while
    # Our own configuration failed (the mail server refused us): not counted against the
    # subscription (failing, then disabled), and the operator is alerted.
    ours: bool = False


DELIVERED = Outcome(OutcomeKind.DELIVERED)
CANCELLED = Outcome(OutcomeKind.CANCELLED)


def again(failed_attempts: int, schedule: tuple[float, ...], *,
          retry_after: float | None = None, ours: bool = False,
          rng: random.Random | None = None) -> Outcome:
    """A failed attempt: the next one on the schedule, FAILED once the schedule is done
    (never when the fault is ours). `failed_attempts` counts this one."""
    if ours:
        return Outcome(OutcomeKind.RETRY, our_fault_delay(failed_attempts, schedule, rng),
                       ours=True)
    delay = next_delay(failed_attempts, schedule, retry_after, rng)
    return Outcome(OutcomeKind.FAILED) if delay is None else Outcome(OutcomeKind.RETRY, delay)


def of_webhook(status: int, failed_attempts: int, schedule: tuple[float, ...],
               retry_after: str | None = None, rng: random.Random | None = None) -> Outcome:
    """An attempt answered with HTTP `status` (0: no answer) and the Retry-After header."""
    if 200 <= status < 300:
        return DELIVERED
    if status == 410:
        return Outcome(OutcomeKind.FAILED, disable_reason=GONE)
    after = parse_retry_after(retry_after) if status in (429, 503) else None
    return again(failed_attempts, schedule, retry_after=after, rng=rng)


def of_email(status: int, fault: Fault | None, failed_attempts: int,
             schedule: tuple[float, ...], rng: random.Random | None = None) -> Outcome:
    """An attempt answered with SMTP reply `status` (0: none) and what its refusal means
    (refusals.explain)."""
    if status == 250:
        return DELIVERED
    if fault is Fault.MAILBOX:
        return Outcome(OutcomeKind.FAILED, suppress=True)
    return again(failed_attempts, schedule, ours=fault is Fault.CONFIG, rng=rng)
