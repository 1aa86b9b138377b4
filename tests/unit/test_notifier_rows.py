"""The rows the notifier's store hands out: typed once at its edge, and never a secret in
their repr() or str() (a row in a log line or a traceback's locals)."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from services.notifier.delivery import Delivery
from services.notifier.rows import (
    Attempt,
    DeliveryRecord,
    LinkedSubscription,
    Replayed,
    Subscription,
)
from services.notifier.store import _delivery_record_from_row

SECRET = "whsec_c2VjcmV0LXRoYXQtbXVzdC1uZXZlci1sZWFr"
SEALED = "v1:k1:c2VhbGVkLXNlY3JldC10aGF0LW11c3Qtbm90LWxlYWs"
PREVIOUS = "v1:k1:cHJldmlvdXMtc2VjcmV0LXRoYXQtbXVzdC1ub3QtbGVhaw"
TOKEN = "unsubscribe-token-that-must-not-leak"
NOW = datetime(2026, 12, 1, 1, 40, tzinfo=UTC)
FILTER = {"facility_ids": [], "design_ids": [], "processes": ["3d-printing"],
          "region": None, "event_types": ["match.found", "match.lost"]}


def _delivery(secret: str | None = SEALED) -> Delivery:
    return Delivery(
        id=uuid.uuid4(), kind="matches", body=b"{}", attempts=1, item_count=1,
        oldest_change_at=NOW, trace_contexts=None, subscription_id="sub_0123456789abcdef",
        channel="webhook", url="https://hooks.example/in", address=None,
        contact_email="ops@example.org", enabled=True, verified=False,
        unsubscribe_token=TOKEN, digest="immediate", secret=secret,
        previous_secret=PREVIOUS, failing=False, owner="org_1")


def _subscription() -> Subscription:
    return Subscription(
        id="sub_0123456789abcdef", owner="org_1", channel="webhook",
        url="https://hooks.example/in", address=None, filter=FILTER, digest="immediate",
        verified=False, enabled=True, disabled_reason=None, contact_email="ops@example.org",
        failing_since=None, last_success_at=None, created_at=NOW, updated_at=NOW,
        previous_until=NOW + timedelta(hours=1), suppressed_until=None)


def _record() -> DeliveryRecord:
    return DeliveryRecord(
        id=uuid.uuid4(), kind="matches", status="failed", item_count=3, attempts=1,
        created_at=NOW, finished_at=NOW, next_attempt_at=NOW, last_status=500,
        last_error="server error", attempt_log=(Attempt(
            at=NOW.isoformat(), status_code=500, duration_ms=12.5, error="server error",
            response_body="oops"),))


ROWS = [_delivery(), _delivery(secret=SECRET), _subscription(),
        LinkedSubscription(address="a@example.org", filter=FILTER, enabled=True,
                           verified=True, disabled_reason=None),
        _record(), _record().attempt_log[0], Replayed(id=uuid.uuid4(), status="pending")]


@pytest.mark.parametrize("row", ROWS, ids=lambda r: type(r).__name__)
def test_no_row_shows_a_secret_in_its_repr_or_str(row: object) -> None:
    for shown in (repr(row), str(row)):
        for secret in (SECRET, SEALED, PREVIOUS, TOKEN):
            assert secret not in shown


def test_a_delivery_still_carries_its_secrets_for_signing() -> None:
    d = _delivery()
    assert (d.secret, d.previous_secret, d.unsubscribe_token) == (SEALED, PREVIOUS, TOKEN)
    assert "subscription_id='sub_0123456789abcdef'" in repr(d)


@pytest.mark.parametrize("row", ROWS, ids=lambda r: type(r).__name__)
def test_rows_are_frozen_snapshots(row: object) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(row, dataclasses.fields(row)[0].name, "other")  # type: ignore[arg-type]
    assert not hasattr(row, "__dict__")  # slotted: thousands are made a second


def test_a_pending_delivery_answers_when_it_is_due_and_a_finished_one_does_not() -> None:
    finished = _record()
    pending = dataclasses.replace(finished, status="pending", finished_at=None)
    assert finished.due_at is None and pending.due_at == NOW
    assert finished.webhook_id == f"msg_{finished.id.hex}"


def test_a_delivery_row_keeps_its_attempts_as_postgresql_wrote_them() -> None:
    # json_agg writes a time in the session's time zone, without a fraction's trailing
    # zeros: the answer has always given it so
    written = "2026-12-01T02:40:00.5+01:00"
    log = orjson.dumps([{"at": written, "status_code": 503, "duration_ms": 7,
                         "error": None, "response_body": "busy"}]).decode()
    record = _delivery_record_from_row({
        "id": uuid.uuid4(), "kind": "test", "status": "pending", "item_count": 0,
        "attempts": 1, "created_at": NOW, "finished_at": None, "next_attempt_at": NOW,
        "last_status": 503, "last_error": None, "attempt_log": log})
    assert record.attempt_log == (Attempt(at=written, status_code=503, duration_ms=7,
                                          error=None, response_body="busy"),)
    assert record.due_at == NOW
