"""Notifier: outbox → sink with leases, backoff, at-least-once delivery; the HTTP webhook sink."""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import logging
import random
import socket
from collections.abc import AsyncIterator
from typing import Self

import attrs
import h11
import pytest
import trio
import trio.testing

from actors._http import HttpError, parse_http_url, request
from actors._notifier import LogSink, Notifier, WebhookError, WebhookSink
from persistence import NotificationJob, Store
from persistence._memory import MemoryStore
from sim._store import FaultyStore, StoreFaults

EPOCH_MS = 1_700_000_000_000


def wall_clock_ms() -> int:
    """Wall-clock milliseconds derived from trio's (mock) clock, as the simulator does."""
    return EPOCH_MS + int(trio.current_time() * 1000)


def make_notifier(store: Store, sink: object, **kwargs: object) -> Notifier:
    options: dict[str, object] = {
        "owner": "node-1",
        "wall_clock_ms": wall_clock_ms,
        "rng": random.Random(7),
    }
    options.update(kwargs)
    return Notifier(store, sink, **options)  # type: ignore[arg-type]


@attrs.define
class RecordingSink:
    """Delivers into a list; fails the first ``failures`` attempts."""

    failures: int = 0
    attempts: list[float] = attrs.Factory(list)
    delivered: list[NotificationJob] = attrs.Factory(list)
    arrived: trio.Event = attrs.Factory(trio.Event)

    async def deliver(self, job: NotificationJob) -> None:
        self.attempts.append(trio.current_time())
        await trio.lowlevel.checkpoint()
        if len(self.attempts) <= self.failures:
            raise RuntimeError(f"sink down (attempt {len(self.attempts)})")
        self.delivered.append(job)
        self.arrived.set()


class WatchedStore(MemoryStore):
    """A MemoryStore that lets a test wait until ``n`` jobs were completed."""

    def __init__(self) -> None:
        super().__init__()
        self.completed: list[str] = []
        self._changed = trio.Event()

    async def complete_notification(self, job_id: str) -> None:
        await super().complete_notification(job_id)
        self.completed.append(job_id)
        self._changed.set()
        self._changed = trio.Event()

    async def wait_completed(self, n: int) -> None:
        while len(self.completed) < n:
            await self._changed.wait()


async def test_log_sink_delivers_and_completes(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="actors._notifier")
    store = WatchedStore()
    await store.notify_offline("bob", "d:alice:bob", 1, EPOCH_MS)
    async with trio.open_nursery() as nursery:
        await nursery.start(make_notifier(store, LogSink()).run)
        await store.wait_completed(1)
        nursery.cancel_scope.cancel()
    [line] = [r for r in caplog.records if getattr(r, "event", None) == "notification"]
    assert line.levelno == logging.INFO
    fields = {k: getattr(line, k) for k in ("user", "conv", "seq", "count", "ts")}
    assert fields == {"user": "bob", "conv": "d:alice:bob", "seq": 1, "count": 1, "ts": EPOCH_MS}
    assert line.getMessage() == "notify bob: 1 new message(s), latest d:alice:bob seq 1"


async def test_one_job_per_offline_period_end_to_end(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = WatchedStore()
    sink = RecordingSink()
    notifier = make_notifier(store, sink, poll_s=3600)
    async with trio.open_nursery() as nursery:
        await nursery.start(notifier.run)
        # Offline period 1: three messages in two conversations, one job.
        for seq, conv in [(1, "d:a:bob"), (2, "d:a:bob"), (1, "g:1")]:
            await store.notify_offline("bob", conv, seq, EPOCH_MS + seq)
        notifier.wake()
        await sink.arrived.wait()
        # Still offline: more messages update the delivered job, no second notification.
        await store.notify_offline("bob", "g:1", 2, EPOCH_MS + 10)
        notifier.wake()
        await trio.testing.wait_all_tasks_blocked()
        # Back online, then offline again: a new period, a new job.
        await store.user_online("bob")
        sink.arrived = trio.Event()
        await store.notify_offline("bob", "d:a:bob", 3, EPOCH_MS + 20)
        notifier.wake()
        await sink.arrived.wait()
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert [(j.user, j.conv, j.seq, j.count) for j in sink.delivered] == [
        ("bob", "g:1", 1, 3),
        ("bob", "d:a:bob", 3, 1),
    ]
    assert trio.current_time() == 0  # wake() made it immediate: no poll interval passed
    assert await store.pending_notifications() == 0


async def test_failures_are_retried_with_growing_backoff_and_never_completed_early(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = WatchedStore()
    sink = RecordingSink(failures=4)
    await store.notify_offline("bob", "d:a:bob", 1, EPOCH_MS)
    notifier = make_notifier(store, sink, base_delay_s=0.5, max_delay_s=60)
    async with trio.open_nursery() as nursery:
        await nursery.start(notifier.run)
        await store.wait_completed(1)
        nursery.cancel_scope.cancel()
    gaps = [b - a for a, b in itertools.pairwise(sink.attempts)]
    expected = random.Random(7)
    for attempt, gap in enumerate(gaps, start=1):
        ceiling = 0.5 * 2 ** (attempt - 1)
        assert gap == pytest.approx(ceiling * (0.5 + 0.5 * expected.random()))
    assert gaps == sorted(gaps)
    assert len(sink.delivered) == 1
    assert await store.pending_notifications() == 0


async def test_a_job_that_keeps_failing_stays_pending_and_is_retried_at_max_delay(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    store = WatchedStore()
    sink = RecordingSink(failures=10**9)
    await store.notify_offline("bob", "d:a:bob", 1, EPOCH_MS)
    # Delays beyond the lease: the job is let go and reclaimed between attempts.
    notifier = make_notifier(store, sink, lease_s=5, max_attempts=4, max_delay_s=20)
    with trio.move_on_after(600):
        await notifier.run()
    assert sink.delivered == []
    assert await store.pending_notifications() == 1
    gaps = [b - a for a, b in itertools.pairwise(sink.attempts)]
    late = gaps[4:]
    # After max_attempts the delay is max_delay_s with jitter (10..20 s); the reclaim after
    # the lease adds at most one poll interval.
    assert late and all(10 <= gap <= 21 for gap in late)
    stuck = [r for r in caplog.records if getattr(r, "stuck", False)]
    assert stuck and all(r.levelno == logging.ERROR for r in stuck)
    assert stuck[0].attempt == 4  # type: ignore[attr-defined]


async def test_a_crashed_notifier_loses_nothing(autojump_clock: trio.testing.MockClock) -> None:
    store = WatchedStore()
    await store.notify_offline("bob", "d:a:bob", 1, EPOCH_MS)

    class HangingSink:
        def __init__(self) -> None:
            self.entered = trio.Event()

        async def deliver(self, job: NotificationJob) -> None:
            self.entered.set()
            await trio.sleep_forever()

    hanging = HangingSink()
    async with trio.open_nursery() as nursery:
        await nursery.start(make_notifier(store, hanging, lease_s=30).run)
        await hanging.entered.wait()
        nursery.cancel_scope.cancel()  # the "crash": cancelled mid-delivery
    crashed_at = trio.current_time()
    assert await store.pending_notifications() == 1

    sink = RecordingSink()
    async with trio.open_nursery() as nursery:
        # Same owner, as after a node restart: its old lease must expire first.
        await nursery.start(make_notifier(store, sink, lease_s=30).run)
        await store.wait_completed(1)
        nursery.cancel_scope.cancel()
    assert 30 <= trio.current_time() - crashed_at <= 31
    assert [j.id for j in sink.delivered] == ["n1"]
    assert await store.pending_notifications() == 0


async def test_store_outage_is_waited_out(autojump_clock: trio.testing.MockClock) -> None:
    store = WatchedStore()
    await store.notify_offline("bob", "d:a:bob", 1, EPOCH_MS)
    faults = StoreFaults()
    faults.fail_next(3)  # the first claims fail
    sink = RecordingSink()
    async with trio.open_nursery() as nursery:
        await nursery.start(make_notifier(FaultyStore(store, faults).as_store(), sink).run)
        await store.wait_completed(1)
        nursery.cancel_scope.cancel()
    assert trio.current_time() == pytest.approx(3.0)
    assert await store.pending_notifications() == 0


async def test_many_jobs_are_delivered_with_bounded_concurrency(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = WatchedStore()
    for i in range(50):
        await store.notify_offline(f"user{i}", "g:1", i + 1, EPOCH_MS)
    in_flight = 0
    peak = 0
    delivered: list[str] = []

    class SlowSink:
        async def deliver(self, job: NotificationJob) -> None:
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            await trio.sleep(1)
            in_flight -= 1
            delivered.append(job.user)

    async with trio.open_nursery() as nursery:
        await nursery.start(make_notifier(store, SlowSink(), max_in_flight=8, poll_s=3600).run)
        await store.wait_completed(50)
        nursery.cancel_scope.cancel()
    assert sorted(delivered) == sorted(f"user{i}" for i in range(50))
    assert peak == 8
    assert trio.current_time() < 8  # freed slots are refilled at once, not at the next poll


# -- the webhook sink against a real HTTP server ------------------------------------------


@attrs.define
class WebhookServer:
    """A tiny HTTP server (trio + h11) that answers 500 to the first ``failures`` requests."""

    failures: int = 0
    respond: bool = True
    requests: list[tuple[float, dict[str, str], bytes, int]] = attrs.Factory(list)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/notify?src=test"

    @contextlib.asynccontextmanager
    async def listening(self) -> AsyncIterator[Self]:
        """Serve on a free port of 127.0.0.1 (``port``) while inside."""
        async with trio.open_nursery() as nursery:
            [listener] = await nursery.start(
                functools.partial(trio.serve_tcp, self.handle, 0, host="127.0.0.1")
            )
            self.port = listener.socket.getsockname()[1]
            yield self
            nursery.cancel_scope.cancel()

    async def handle(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        body = b""
        headers: dict[str, str] = {}
        async with stream:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                elif isinstance(event, h11.Request):
                    headers = {k.decode(): v.decode() for k, v in event.headers}
                    headers[":target"] = event.target.decode()
                    headers[":method"] = event.method.decode()
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
            if not self.respond:
                await trio.sleep_forever()
            status = 500 if len(self.requests) < self.failures else 200
            self.requests.append((trio.current_time(), headers, body, status))
            reply = conn.send(h11.Response(status_code=status, headers=[("Content-Length", "2")]))
            await stream.send_all(
                reply + conn.send(h11.Data(data=b"ok")) + conn.send(h11.EndOfMessage())
            )


@pytest.fixture
def io_clock() -> trio.testing.MockClock:
    """A mock clock that jumps only after 20 ms of real idleness; tests must request it.

    The webhook tests do real socket I/O; with an autojump threshold of 0 the clock would
    jump to the next deadline (a timeout) while a loopback packet is still on its way.
    (pytest-trio only uses a clock requested by the test function itself.)
    """
    return trio.testing.MockClock(autojump_threshold=0.02)


@pytest.fixture
async def webhook_server() -> AsyncIterator[WebhookServer]:
    async with WebhookServer().listening() as server:
        yield server


async def test_webhook_is_retried_with_growing_delays_and_delivered_once(
    io_clock: trio.testing.MockClock,
    webhook_server: WebhookServer,
) -> None:
    webhook_server.failures = 3
    store = WatchedStore()
    await store.notify_offline("bob", "d:alice:bob", 4, EPOCH_MS + 5)
    sink = WebhookSink(webhook_server.url, timeout_s=10)
    async with trio.open_nursery() as nursery:
        await nursery.start(make_notifier(store, sink).run)
        await store.wait_completed(1)
        nursery.cancel_scope.cancel()

    statuses = [status for _, _, _, status in webhook_server.requests]
    assert statuses == [500, 500, 500, 200]  # delivered exactly once in the end
    times = [t for t, _, _, _ in webhook_server.requests]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps == sorted(gaps) and gaps[0] >= 0.25
    for _, headers, body, _ in webhook_server.requests:
        assert json.loads(body) == {
            "user": "bob",
            "conv": "d:alice:bob",
            "seq": 4,
            "count": 1,
            "ts": EPOCH_MS + 5,
        }
        assert headers[":method"] == "POST"
        assert headers[":target"] == "/hooks/notify?src=test"
        assert headers["content-type"] == "application/json"
        assert headers["idempotency-key"] == "n1"
        assert headers["host"] == f"127.0.0.1:{webhook_server.port}"


async def test_webhook_failures_raise(
    io_clock: trio.testing.MockClock, webhook_server: WebhookServer
) -> None:
    job = NotificationJob(
        id="n1", user="bob", conv="c", seq=1, count=1, first_ts=EPOCH_MS, last_ts=EPOCH_MS
    )
    webhook_server.failures = 1
    with pytest.raises(WebhookError, match="HTTP 500") as info:
        await WebhookSink(webhook_server.url).deliver(job)
    assert info.value.status == 500

    webhook_server.respond = False
    start = trio.current_time()
    with pytest.raises(HttpError, match="within 3"):
        await WebhookSink(webhook_server.url, timeout_s=3).deliver(job)
    assert trio.current_time() - start == pytest.approx(3, abs=0.1)

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    with pytest.raises(HttpError, match=r"connection to 127\.0\.0\.1"):
        await WebhookSink(f"http://127.0.0.1:{closed_port}/").deliver(job)


async def test_http_client_reads_a_response(
    io_clock: trio.testing.MockClock, webhook_server: WebhookServer
) -> None:
    response = await request("GET", parse_http_url(webhook_server.url), timeout_s=5)
    assert response.status == 200
    assert response.body == b"ok"
    assert ("content-length", "2") in response.headers


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("https://example.com/hook", "only http://"),
        ("ftp://example.com/", "only http://"),
        ("http:///path", "no host"),
        ("http://user:pw@example.com/", "credentials"),
        ("http://example.com:99999/", "invalid port"),
    ],
)
def test_bad_webhook_urls_are_refused_up_front(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        WebhookSink(url)


def test_url_parsing() -> None:
    plain = parse_http_url("http://hooks.example")
    assert (plain.host, plain.port, plain.target, plain.host_header) == (
        "hooks.example",
        80,
        "/",
        "hooks.example",
    )
    v6 = parse_http_url("http://[::1]:8080/a?b=c")
    assert (v6.host, v6.port, v6.target, v6.host_header) == ("::1", 8080, "/a?b=c", "[::1]:8080")
