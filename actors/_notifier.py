"""The notifier actor: drains the Store's offline-notification outbox into a pluggable sink (G8).

The Store records one job per user per offline period (``Store.notify_offline``; coalescing is
the Store's job). The :class:`Notifier` leases jobs with ``Store.claim_notifications``, hands
each to a :class:`Sink`, and marks it done with ``Store.complete_notification`` only after the
sink reported success. Delivery is therefore **at least once**:

* a notifier that crashes or is cancelled mid-delivery leaves the job leased; once the lease
  expires any notifier (this node's restarted one, or another node's) claims it again, so
  nothing is lost — but the webhook may already have received it;
* a delivery that succeeded but whose completion could not be recorded is repeated later.

Webhook receivers deduplicate with the ``Idempotency-Key`` header (the job id).

Failures are retried with exponential backoff and equal jitter from the injected RNG: the
n-th consecutive failure waits between half and all of ``min(max_delay_s, base_delay_s *
2**(n-1))``. A job is never dropped: from ``max_attempts`` failures on it is logged at ERROR as
stuck on every further failure and retried every ``max_delay_s`` (jittered) for as long as it
fails. While a job waits for its retry the notifier keeps its lease; a wait that would outlast
the lease is not slept through — the job is let go and claimed again after the lease expired
(the retry time is remembered, so backoff survives that round trip).

Time: waits use trio's clock; lease times given to the Store are wall-clock milliseconds from
the injected ``wall_clock_ms`` (the simulator derives both from its virtual clock).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from typing import Protocol

import attrs
import orjson
import trio

from persistence import NotificationJob, Store, StoreError
from protocol import jittered_backoff

from ._http import HttpUrl, parse_http_url, request

__all__ = [
    "LogSink",
    "Notifier",
    "Sink",
    "WebhookError",
    "WebhookSink",
    "notification_payload",
]

_log = logging.getLogger(__name__)


class Sink(Protocol):
    """Where notifications go. ``deliver`` returns once the job is delivered, raises if not.

    It may be cancelled at any point (shutdown, lease expiry); the job is then retried.
    """

    async def deliver(self, job: NotificationJob) -> None: ...


def notification_payload(job: NotificationJob) -> dict[str, object]:
    """What a notification says: who, the latest (conv, seq), how many messages, when (ms)."""
    return {
        "user": job.user,
        "conv": job.conv,
        "seq": job.seq,
        "count": job.count,
        "ts": job.last_ts,
    }


class LogSink:
    """The default sink: one structured INFO log line per notification."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._log = logger if logger is not None else _log

    async def deliver(self, job: NotificationJob) -> None:
        payload = notification_payload(job)
        self._log.info(
            "notify %s: %d new message(s), latest %s seq %d",
            job.user,
            job.count,
            job.conv,
            job.seq,
            extra={"event": "notification", "job": job.id, **payload},
        )


class WebhookError(Exception):
    """The webhook answered with a status other than 2xx."""

    def __init__(self, status: int) -> None:
        super().__init__(f"webhook answered HTTP {status}")
        self.status = status


class WebhookSink:
    """POSTs ``notification_payload(job)`` as JSON to ``url``; any 2xx counts as delivered.

    Anything else — another status, a timeout after ``timeout_s``, a connection error —
    raises (:class:`WebhookError` or :class:`actors._http.HttpError`). The URL is checked
    here, so a bad ``--notify-webhook`` fails at startup with :class:`ValueError`.
    """

    def __init__(
        self, url: str, *, timeout_s: float = 10.0, headers: Sequence[tuple[str, str]] = ()
    ) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        self.url = url
        self._target: HttpUrl = parse_http_url(url)
        self._timeout_s = timeout_s
        self._headers = tuple(headers)

    async def deliver(self, job: NotificationJob) -> None:
        body = orjson.dumps(notification_payload(job))
        response = await request(
            "POST",
            self._target,
            body=body,
            headers=[
                ("Content-Type", "application/json"),
                ("Idempotency-Key", job.id),
                *self._headers,
            ],
            timeout_s=self._timeout_s,
        )
        if not 200 <= response.status < 300:
            raise WebhookError(response.status)


class LeaseExpired(Exception):
    """A delivery was cut short because this notifier's lease on the job ran out."""


@attrs.define(eq=False)
class _Backoff:
    """Consecutive failures of one job on this notifier, and when to try it next (trio time)."""

    attempts: int = 0
    retry_at: float = 0.0


@attrs.define(eq=False)
class _Held:
    """A job this notifier holds a lease on; ``lease_end`` is in trio time, with a margin."""

    job: NotificationJob
    lease_end: float
    scope: trio.CancelScope | None = None


class Notifier:
    """An actor that delivers the outbox's jobs to ``sink``; see the module docstring.

    Owns its in-memory retry schedule only; the jobs belong to the Store. ``owner`` names this
    notifier in leases (unique per node). At most ``max_in_flight`` jobs are held at once,
    each worked on by a task of the notifier's own nursery; the outbox is polled every
    ``poll_s`` seconds, or at once after :meth:`wake`.

    Cancellation: :meth:`run` cancels every delivery in flight and returns by raising
    ``Cancelled``; the interrupted jobs stay leased until their lease expires and are then
    claimed again — by this notifier after a restart, or by any other.
    """

    def __init__(
        self,
        store: Store,
        sink: Sink,
        *,
        owner: str,
        wall_clock_ms: Callable[[], int],
        rng: random.Random,
        lease_s: float = 30.0,
        poll_s: float = 1.0,
        max_attempts: int = 8,
        base_delay_s: float = 0.5,
        max_delay_s: float = 60.0,
        max_in_flight: int = 16,
        logger: logging.Logger | None = None,
    ) -> None:
        if not (lease_s > 0 and poll_s > 0 and base_delay_s > 0):
            raise ValueError("lease_s, poll_s and base_delay_s must be positive")
        if max_delay_s < base_delay_s:
            raise ValueError("max_delay_s must be at least base_delay_s")
        if max_attempts < 1 or max_in_flight < 1:
            raise ValueError("max_attempts and max_in_flight must be at least 1")
        self.store = store
        self.sink = sink
        self.owner = owner
        self.lease_s = lease_s
        self.poll_s = poll_s
        self.max_attempts = max_attempts
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s
        self.max_in_flight = max_in_flight
        self._wall_clock_ms = wall_clock_ms
        self._rng = rng
        self._log = logger if logger is not None else _log
        # Stop trusting a lease a little before it ends: another node's clock may run ahead.
        self._lease_margin_s = min(1.0, lease_s / 10)
        self._held: dict[str, _Held] = {}
        self._backoff: dict[str, _Backoff] = {}
        self._wakeup = trio.Event()
        self._more_pending = False

    def wake(self) -> None:
        """Poll the outbox now rather than at the next ``poll_s`` tick (a job was recorded)."""
        self._wakeup.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Claim, deliver and complete jobs until cancelled. Store outages are waited out.

        Anything but a :class:`StoreError` or a sink failure is a crash (for the supervisor).
        """
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                # A fresh event before claiming, so a wake() during the claim is not lost.
                self._wakeup = trio.Event()
                await self._claim(nursery)
                with trio.move_on_after(self.poll_s):
                    await self._wakeup.wait()

    # -- claiming -----------------------------------------------------------------------

    async def _claim(self, nursery: trio.Nursery) -> None:
        free = self.max_in_flight - len(self._held)
        if free <= 0:
            self._more_pending = True
            return
        now_ms = self._wall_clock_ms()
        claimed_at = trio.current_time()
        try:
            jobs = await self.store.claim_notifications(
                self.owner, now_ms, round(self.lease_s * 1000), free
            )
        except StoreError as exc:
            self._log.warning(
                "notifier %s: cannot claim notifications: %s",
                self.owner,
                exc,
                extra={"event": "notifier_store_error", "owner": self.owner},
            )
            return
        self._more_pending = len(jobs) >= free
        self._forget_stale_backoffs(claimed_at)
        for job in jobs:
            lease_s = (
                (job.lease_until - now_ms) / 1000 if job.lease_until is not None else self.lease_s
            )
            lease_end = claimed_at + lease_s - self._lease_margin_s
            held = self._held.get(job.id)
            if held is not None:
                # Our worker's old lease lapsed while it was finishing; it holds a new one now.
                held.job, held.lease_end = job, lease_end
                if held.scope is not None:
                    held.scope.deadline = lease_end
                continue
            held = _Held(job=job, lease_end=lease_end)
            self._held[job.id] = held
            nursery.start_soon(self._work, held, name=f"notify:{job.id}")

    def _forget_stale_backoffs(self, now: float) -> None:
        # A job we failed on and let go may since have been delivered by another notifier;
        # its retry schedule is only worth keeping while we could still reclaim it.
        horizon = now - self.lease_s - self.max_delay_s
        for job_id in [j for j, b in self._backoff.items() if b.retry_at < horizon]:
            if job_id not in self._held:
                del self._backoff[job_id]

    # -- one job ------------------------------------------------------------------------

    async def _work(self, held: _Held) -> None:
        """Deliver one held job, retrying while the lease lasts; complete it on success."""
        job_id = held.job.id
        try:
            while True:
                backoff = self._backoff.get(job_id)
                if backoff is not None and backoff.retry_at > trio.current_time():
                    if backoff.retry_at >= held.lease_end:
                        return  # let the lease lapse; the job is claimed again later
                    await trio.sleep_until(backoff.retry_at)
                if trio.current_time() >= held.lease_end:
                    return
                error = await self._deliver(held)
                if error is None:
                    await self._complete(held)
                    return
                self._failed(held.job, error)
        finally:
            if self._held.get(job_id) is held:
                del self._held[job_id]
            if self._more_pending:
                self.wake()

    async def _deliver(self, held: _Held) -> Exception | None:
        """One attempt, cut short at the end of the lease; returns the failure if any."""
        with trio.CancelScope(deadline=held.lease_end) as scope:
            held.scope = scope
            try:
                await self.sink.deliver(held.job)
            except Exception as exc:
                return exc
            finally:
                held.scope = None
        if scope.cancelled_caught:
            return LeaseExpired(f"lease on {held.job.id} expired during delivery")
        return None

    async def _complete(self, held: _Held) -> None:
        """Record the delivery; retried briefly, as a job left pending is delivered again."""
        job = held.job
        delay = self.base_delay_s
        while True:
            try:
                await self.store.complete_notification(job.id)
            except StoreError as exc:
                if trio.current_time() + delay >= held.lease_end:
                    self._log.warning(
                        "notifier %s: job %s delivered but not completed (%s); "
                        "it will be delivered again",
                        self.owner,
                        job.id,
                        exc,
                        extra={"event": "notification_uncompleted", "job": job.id},
                    )
                    return
                await trio.sleep(delay)
                delay = min(delay * 2, self.max_delay_s)
                continue
            self._backoff.pop(job.id, None)
            self._log.debug(
                "notifier %s: job %s delivered",
                self.owner,
                job.id,
                extra={"event": "notification_delivered", "job": job.id, "user": job.user},
            )
            return

    def _failed(self, job: NotificationJob, error: Exception) -> None:
        backoff = self._backoff.setdefault(job.id, _Backoff())
        backoff.attempts += 1
        delay = self.retry_delay(backoff.attempts)
        backoff.retry_at = trio.current_time() + delay
        stuck = backoff.attempts >= self.max_attempts
        self._log.log(
            logging.ERROR if stuck else logging.WARNING,
            "notifier %s: job %s for %s failed (attempt %d%s): %r; retrying in %.2fs",
            self.owner,
            job.id,
            job.user,
            backoff.attempts,
            ", stuck" if stuck else "",
            error,
            delay,
            extra={
                "event": "notification_failed",
                "job": job.id,
                "user": job.user,
                "attempt": backoff.attempts,
                "retry_in_s": delay,
                "stuck": stuck,
            },
        )

    def retry_delay(self, attempts: int) -> float:
        """Seconds to wait after ``attempts`` consecutive failures (consumes the RNG)."""
        if attempts >= self.max_attempts:  # stuck: every max_delay_s, jittered
            return jittered_backoff(
                1, base_s=self.max_delay_s, max_s=self.max_delay_s, rng=self._rng
            )
        return jittered_backoff(
            attempts, base_s=self.base_delay_s, max_s=self.max_delay_s, rng=self._rng
        )
