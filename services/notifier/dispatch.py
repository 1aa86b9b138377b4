"""Deliveries out: gather waiting items into batches, claim due deliveries, attempt them,
record each attempt and what follows from it (its outcome: outcomes.py).

What a crash at each step leaves: items not yet gathered wait for the next process;
a gathered delivery is recorded with its body before any attempt; a claimed delivery whose
process dies mid-attempt becomes due again when its lease (its pushed next attempt time)
passes, and goes out with the same webhook-id. So every delivery is sent at least once,
and a receiver that deduplicates by webhook-id sees it once. When traced, each attempt is a
span in the trace of the change its delivery carries, and a webhook's `traceparent` names
it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Generic, TypeVar

import orjson

from services.common import db, tracing
from services.common.faults import crash_point
from services.common.tasks import restarting
from services.notifier import messages, outcomes, signing
from services.notifier.delivery import Channel, Delivery
from services.notifier.guard import Guard
from services.notifier.metrics import NotifierMetrics
from services.notifier.outcomes import CANCELLED, Outcome, OutcomeKind
from services.notifier.settings import NotifierSettings
from services.notifier.shares import Room, Shares
from services.notifier.store import Batching, Store
from services.notifier.transport import Result, SmtpServer, post, send_mail
from services.notifier.webhook_client import WebhookClient, tls_context

log = logging.getLogger(__name__)
# Kept match messages whose pairs all went out are dropped this often, this long after.
PRUNE_EVERY_S = 60.0


class Dispatcher:
    def __init__(self, store: Store, settings: NotifierSettings, guard: Guard,
                 metrics: NotifierMetrics, rng: random.Random | None = None) -> None:
        self.store, self.settings, self.guard, self.metrics = store, settings, guard, metrics
        self.rng = rng or random.Random()
        s = settings
        self.batching = Batching(s.notifier_batch_max, s.notifier_batch_max_wait_s,
                                 s.notifier_batch_in_flight,
                                 s.notifier_email_linger_s, s.notifier_email_max_wait_s,
                                 s.notifier_digest_hourly_s, s.notifier_digest_daily_s)
        self.smtp = SmtpServer(s.smtp_host, s.smtp_port, s.smtp_starttls, s.smtp_username,
                               s.smtp_password.get_secret_value() if s.smtp_password else None,
                               s.smtp_timeout_s)
        # past the longest an attempt can take: only then may another process retry it
        self.lease_s = max(s.notifier_timeout_s, s.smtp_timeout_s) + s.notifier_lease_margin_s
        self.slots = asyncio.Semaphore(s.notifier_concurrency)
        self.in_flight: set[asyncio.Task] = set()
        self._reserved = 0  # slots a claim under way may fill (two loops claim)
        # Attempts for failing subscriptions (their peers may hang until the timeout) take
        # at most half the slots, so that healthy subscriptions always have the rest.
        self.failing_lane = max(1, s.notifier_concurrency // 2)
        self.failing_in_flight: set[asyncio.Task] = set()
        self.shares = Shares(min(s.notifier_slots_per_org, s.notifier_concurrency))
        self._items = asyncio.Event()  # items arrived: batches may be due
        self._deliveries = asyncio.Event()  # deliveries made or slots freed: claim
        self.successes = Batcher(store.delivered)
        # attempts (tasks) that reached recording their outcome: an error past that
        # point is not the attempt's
        self._recording: set[asyncio.Task | None] = set()
        self.http = WebhookClient(guard, tls_context(s.notifier_ca_file))

    async def run(self) -> None:
        """Forever; after an error (database gone), start over."""
        try:
            await restarting(self._run_once, "dispatcher", self.settings.notifier_sweep_s)
        finally:
            for task in self.in_flight:
                task.cancel()
            if self.in_flight:  # their connections back to the pool before it closes
                await asyncio.wait(set(self.in_flight), timeout=5)
            await self.http.close()

    async def _run_once(self) -> None:
        conn = await db.connect(self.settings.database_url, self.settings.notifier_db_schema)
        try:
            await conn.add_listener(f"{self.settings.notifier_db_schema}_work", self._notified)
            # one failing cancels the other: restarting() starts both again, never a
            # second claim loop beside one left running
            async with asyncio.TaskGroup() as group:
                group.create_task(self._assemble_loop())
                group.create_task(self._claim_loop())
        finally:
            await conn.close()

    async def _assemble_loop(self) -> None:
        """Waiting items into deliveries: when items arrive, when an attempt ends (the
        next batch of its subscription may go), and every sweep (digests, max wait).
        Webhook batches are claimed as they are made, up to the free slots. Digests, which
        linger for seconds anyway, are looked at once a sweep, not on every arrival: under
        load this loop runs a hundred times a second, and a match waits for it."""
        emails_due = prune_due = 0.0
        while True:
            with self.metrics.assemble_seconds.time():
                async with self._free_slots() as (free, room):
                    made, claimed = await self.store.assemble_webhooks(
                        self.batching, free, self.lease_s, room, traced=tracing.enabled())
                    self._start(claimed)
                if made > len(claimed):
                    self._deliveries.set()
                if time.monotonic() >= emails_due:
                    emails_due = time.monotonic() + self.settings.notifier_sweep_s
                    if await self.store.assemble_emails(self.batching,
                                                        traced=tracing.enabled()):
                        self._deliveries.set()
                if time.monotonic() >= prune_due:
                    prune_due = time.monotonic() + PRUNE_EVERY_S
                    await self.store.prune_messages(PRUNE_EVERY_S)
            await _wait(self._items, self.settings.notifier_sweep_s)

    async def _claim_loop(self) -> None:
        """Due deliveries into attempts, as many as there are free slots. Slots freed one
        by one are gathered for a moment, so that a claim takes many at once."""
        while True:
            async with self._free_slots() as (free, room):
                lane = max(0, self.failing_lane - len(self.failing_in_flight))
                claimed = await self.store.claim(free, self.lease_s, lane, room) if free else []
                self._start(claimed)
            # Short of the free slots: nothing more is due, or its owners are at their
            # share; either way only a new delivery or an ended attempt changes that.
            await _wait(self._deliveries, self.settings.notifier_sweep_s)
            if self.in_flight:
                await asyncio.sleep(0.002)

    @contextlib.asynccontextmanager
    async def _free_slots(self) -> AsyncIterator[tuple[int, Room]]:
        """The slots free now and each owner's room, reserved while a claim is under way,
        so that the two loops never claim more than there are (a claimed delivery waiting
        for a slot could outlive its lease) nor give an owner more than its share. Start
        the claimed attempts within (they take the slots)."""
        free = max(0, self.settings.notifier_concurrency - len(self.in_flight) - self._reserved)
        room = self.shares.room()
        self._reserved += free
        self.shares.claiming += free
        try:
            yield free, room
        finally:
            self._reserved -= free
            self.shares.claiming -= free

    def _start(self, claimed: list[Delivery]) -> None:
        for delivery in claimed:
            task = asyncio.create_task(self._attempt(delivery))
            self.in_flight.add(task)
            if delivery.failing:
                self.failing_in_flight.add(task)
            self.shares.started(delivery.owner)
            task.add_done_callback(lambda _, owner=delivery.owner: self.shares.ended(owner))
            task.add_done_callback(self._done)

    def _notified(self, _conn: object, _pid: object, _channel: object, table: object) -> None:
        (self._items if table == "items" else self._deliveries).set()

    def _done(self, task: asyncio.Task) -> None:
        self.in_flight.discard(task)
        self.failing_in_flight.discard(task)
        self._deliveries.set()
        self._items.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("delivery attempt failed to record", exc_info=task.exception())

    # one attempt

    async def _attempt(self, d: Delivery) -> None:
        async with self.slots:
            started = time.perf_counter()
            try:
                await self._send(d)
            except Exception as exc:
                if asyncio.current_task() in self._recording:
                    raise  # recording failed (the database): the lease brings it back
                await self._failed_inside(d, exc, started)
            finally:
                self._recording.discard(asyncio.current_task())

    async def _send(self, d: Delivery) -> None:
        cancel = d.cancel_reason
        if cancel is not None:
            await self._finish(d, Result(0, 0.0, cancel), CANCELLED)
            return
        crash_point("notifier.before_attempt")
        if d.sent_by == "webhook":
            await self._webhook(d)
        else:
            await self._email(d)

    async def _failed_inside(self, d: Delivery, exc: Exception, started: float) -> None:
        """An attempt that raised (a bug of ours, a stored value that cannot be read, an
        answer we did not foresee) ends like any failed attempt: recorded, retried on the
        schedule, at last failed and its subscription disabled. Unrecorded, it would come
        back with every lease, forever, and its owner would see nothing."""
        self.metrics.attempt_errors.inc()
        # The exception's type and place only: its text may hold the URL (a receiver's
        # token in the query) or a secret.
        frames = traceback.extract_tb(exc.__traceback__)
        place = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
        log.error("a delivery attempt failed inside the notifier",
                  extra={"entity_id": d.subscription_id,
                         "error": f"{type(exc).__name__}{place}"})
        await self._finish(d, Result(
            0, (time.perf_counter() - started) * 1000,
            f"the notifier could not make this attempt ({type(exc).__name__}); "
            "the details are in its log"),
            outcomes.again(d.attempts, self.settings.schedule, rng=self.rng))

    async def _webhook(self, d: Delivery) -> None:
        keyring = self.settings.keyring
        secrets = [keyring.unseal(s) for s in (d.secret, d.previous_secret) if s]
        headers = signing.headers(secrets, d.webhook_id, int(time.time()), d.body)
        with _attempt_span("webhook", d) as span:
            # the receiver's work continues our trace (signatures cover the body alone)
            headers |= tracing.headers_of(span)
            # (never None: migration 001 gives every webhook subscription a url)
            result = await post(self.http, d.url or "", headers, d.body,
                                self.settings.notifier_timeout_s)
            _outcome(span, result)
        crash_point("notifier.after_send")
        await self._finish(d, result, outcomes.of_webhook(
            result.status, d.attempts, self.settings.schedule, result.retry_after, self.rng))

    async def _email(self, d: Delivery) -> None:
        to = d.recipient
        if not to:
            await self._finish(d, Result(0, 0.0, "no address to tell"), CANCELLED)
            return
        # Only a confirmed address hears from us unasked: a contact address was typed by
        # the subscription's owner, and may be anyone's.
        if d.kind == "notice" and not await self.store.contact_verified(d.subscription_id):
            await self._finish(d, Result(0, 0.0, "contact address not verified"), CANCELLED)
            return
        if await self.store.suppressed(to):
            await self._finish(d, Result(0, 0.0, "address suppressed"), CANCELLED)
            return
        unsubscribe = (f"{self.settings.notifier_public_url}/v1/email/unsubscribe"
                       f"?token={d.unsubscribe_token}" if d.channel == "email" else None)
        message = messages.email(d.id, d.kind, orjson.loads(d.body),
                                 sender=self.settings.smtp_from, to=to, unsubscribe=unsubscribe,
                                 pages=self.settings.notifier_pages_url)
        with _attempt_span("email", d) as span:
            result = await send_mail(self.smtp, message)
            _outcome(span, result)
        await self._finish(d, result, outcomes.of_email(
            result.status, result.fault, d.attempts, self.settings.schedule, self.rng))

    async def _finish(self, d: Delivery, result: Result, outcome: Outcome) -> None:
        """Act on an attempt's outcome: record it, count it, and what follows from it
        (an address suppressed, the operator alerted, the subscription disabled)."""
        channel = d.sent_by
        # Before the recording proper: a failure here is still the attempt's (retried on
        # the schedule by _failed_inside).
        if outcome.suppress and d.recipient:
            await self.store.suppress(d.recipient, result.error or f"SMTP {result.status}",
                                      self.settings.notifier_suppression_days)
        if outcome.ours:  # only a mail server says we are at fault
            self.metrics.smtp_config_errors.inc()
            log.error("the mail server refused our configuration",
                      extra={"entity_id": d.subscription_id, "error": result.error})
        self._recording.add(asyncio.current_task())
        disabled = False
        if outcome.kind is OutcomeKind.DELIVERED:
            await self.successes.add((d.id, d.subscription_id, result.status,
                                      result.duration_ms, result.response))
        else:
            tell = d.contact_email and d.channel == "webhook"
            disabled = await self.store.finish(
                d.id, d.subscription_id, status=result.status,
                duration_ms=result.duration_ms, error=result.error, response=result.response,
                outcome=outcome, disable_after_s=self.settings.notifier_disable_after_s,
                notice=partial(messages.notice_body, d.subscription_id) if tell else None)
        self.metrics.deliveries.labels(channel, outcome.kind.value).inc()
        if outcome.kind is not OutcomeKind.CANCELLED:
            self.metrics.attempt_seconds.labels(channel).observe(result.duration_ms / 1000)
        if outcome.kind is OutcomeKind.DELIVERED and d.oldest_change_at is not None:
            age = (datetime.now(UTC) - d.oldest_change_at).total_seconds()
            self.metrics.end_to_end.labels(channel).observe(max(age, 0.0))
        if disabled:
            log.warning("subscription disabled", extra={
                "entity_id": d.subscription_id, "error": outcome.disable_reason or "failing"})


def _attempt_span(channel: Channel, d: Delivery) -> contextlib.AbstractContextManager[
        tracing.Span | None]:
    """An attempt's span: a child of the first change its delivery carries, linked to the
    others (a batch gathers several changes' matches)."""
    if not tracing.enabled():
        return contextlib.nullcontext()
    parent, links = tracing.parent_and_links(d.trace_contexts)
    return tracing.span(channel, parent, tracing.CLIENT,
                        {"makelocal.delivery": str(d.id),
                         "makelocal.subscription": d.subscription_id}, links)


def _outcome(span: tracing.Span | None, result: Result) -> None:
    """What the peer answered (a status or reply code, 0 for none), never its text."""
    if span is not None:
        span.set_attribute("makelocal.status", result.status)


async def _wait(event: asyncio.Event, timeout: float) -> None:
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except TimeoutError:
        pass
    event.clear()


T = TypeVar("T")


class Batcher(Generic[T]):
    """Gathers what concurrent callers add for a moment and writes it with one call;
    each caller returns once its item is written (or raises what the write raised)."""

    def __init__(self, write: Callable[[list[T]], Awaitable[None]],
                 gather_s: float = 0.002) -> None:
        self.write, self.gather_s = write, gather_s
        self.waiting: list[tuple[T, asyncio.Future[None]]] = []
        self.flushing: asyncio.Task | None = None

    async def add(self, item: T) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiting.append((item, done))
        if self.flushing is None:
            self.flushing = asyncio.create_task(self._flush())
        await done

    async def _flush(self) -> None:
        await asyncio.sleep(self.gather_s)
        batch, self.waiting, self.flushing = self.waiting, [], None
        try:
            await self.write([item for item, _ in batch])
        except Exception as exc:
            for _, done in batch:
                if not done.done():
                    done.set_exception(exc)
            return
        for _, done in batch:
            if not done.done():
                done.set_result(None)
