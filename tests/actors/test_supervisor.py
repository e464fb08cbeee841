"""Supervisor: OTP restart policies, intensity escalation, ordered start/stop, dynamic children."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

from actors._supervisor import (
    ChildExited,
    ChildSpec,
    Restart,
    Supervisor,
    SupervisorEscalation,
)

ChildFn = Callable[..., Awaitable[object]]


class Boom(Exception):
    """The crash the test children raise on purpose."""


async def _crash_after_start(
    *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    task_status.started()
    await trio.lowlevel.checkpoint()
    raise Boom("always")


async def _forever(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    task_status.started()
    await trio.sleep_forever()


def _recorder(log: list[str], name: str) -> ChildFn:
    """A child that records its start and its stop in ``log``."""

    async def child(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        log.append(f"start {name}")
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            log.append(f"stop {name}")

    return child


async def test_crashed_child_is_restarted_and_recovers_its_state(
    caplog: pytest.LogCaptureFixture,
) -> None:
    durable = {"count": 0}  # stands in for the Store a real actor reloads from
    seen: list[int] = []
    second_start = trio.Event()
    restarts: list[tuple[str, BaseException]] = []

    async def counter(*, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        state = durable["count"]  # recovered on every (re)start
        seen.append(state)
        task_status.started(state)
        if state == 0:
            durable["count"] = 41
            raise Boom("first incarnation dies")
        second_start.set()
        await trio.sleep_forever()

    caplog.set_level(logging.INFO)
    sup = Supervisor("s", on_restart=lambda name, cause: restarts.append((name, cause)))
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run, [ChildSpec(name="counter", start=counter)])
        await second_start.wait()
        [handle] = sup.children
        assert handle.restarts == 1
        assert handle.value == 41
        nursery.cancel_scope.cancel()

    assert seen == [0, 41]
    assert [(n, type(c)) for n, c in restarts] == [("counter", Boom)]
    [crash] = [r for r in caplog.records if getattr(r, "action", None) == "restart"]
    assert crash.levelno == logging.ERROR
    assert crash.exc_info is not None and isinstance(crash.exc_info[1], Boom)
    assert (crash.supervisor, crash.child, crash.restart_policy) == ("s", "counter", "permanent")  # type: ignore[attr-defined]
    assert "first incarnation dies" in caplog.text  # the cause, with its traceback


async def test_transient_child_that_returns_is_not_restarted() -> None:
    runs: list[int] = []

    async def once(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        runs.append(1)
        task_status.started()

    sup = Supervisor("s")
    async with trio.open_nursery() as nursery:
        await nursery.start(
            sup.run, [ChildSpec(name="once", start=once, restart=Restart.TRANSIENT)]
        )
        handle = await sup.start_child(ChildSpec(name="dyn", start=once, restart=Restart.TRANSIENT))
        await handle.finished.wait()
        await trio.testing.wait_all_tasks_blocked()
        assert runs == [1, 1]
        assert sup.children == []
        nursery.cancel_scope.cancel()


async def test_transient_child_is_restarted_after_a_crash() -> None:
    attempts: list[int] = []
    done = trio.Event()

    async def flaky(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        attempts.append(1)
        task_status.started()
        if len(attempts) < 3:
            raise Boom("again")
        done.set()

    sup = Supervisor("s")
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        handle = await sup.start_child(
            ChildSpec(name="flaky", start=flaky, restart=Restart.TRANSIENT)
        )
        await handle.finished.wait()
        assert done.is_set()
        assert handle.restarts == 2
        nursery.cancel_scope.cancel()


async def test_temporary_child_that_crashes_is_not_restarted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sup = Supervisor("s")
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        handle = await sup.start_child(
            ChildSpec(name="temp", start=_crash_after_start, restart=Restart.TEMPORARY)
        )
        await handle.finished.wait()
        assert handle.restarts == 0
        assert sup.children == []
        nursery.cancel_scope.cancel()
    [record] = [r for r in caplog.records if getattr(r, "child", None) == "temp"]
    assert record.action == "give_up"  # type: ignore[attr-defined]
    assert record.exc_info is not None and isinstance(record.exc_info[1], Boom)


async def test_permanent_child_that_returns_is_restarted() -> None:
    runs: list[int] = []
    causes: list[BaseException] = []

    async def short(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        runs.append(1)
        task_status.started()
        if len(runs) >= 3:
            await trio.sleep_forever()

    sup = Supervisor("s", on_restart=lambda _name, cause: causes.append(cause))
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run, [ChildSpec(name="short", start=short)])
        await trio.testing.wait_all_tasks_blocked()
        assert len(runs) == 3
        assert all(isinstance(c, ChildExited) for c in causes) and len(causes) == 2
        nursery.cancel_scope.cancel()


async def test_too_many_crashes_within_the_period_escalate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []
    crashes: list[float] = []

    async def crasher(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.sleep(1)  # 1 s apart: four restarts fall inside one 5 s period
        crashes.append(trio.current_time())
        raise Boom(f"crash {len(crashes)}")

    sup = Supervisor("s", intensity=3, period=5.0)
    specs = [
        ChildSpec(name="a", start=_recorder(log, "a")),
        ChildSpec(name="crasher", start=crasher),
        ChildSpec(name="c", start=_recorder(log, "c")),
    ]
    with pytest.raises(SupervisorEscalation) as info:
        await sup.run(specs)

    # Restarts 1, 2, 3 are allowed; the 4th within 5 s escalates.
    assert crashes == [1.0, 2.0, 3.0, 4.0]
    assert info.value.child == "crasher"
    assert isinstance(info.value.cause, Boom) and str(info.value.cause) == "crash 4"
    assert info.value.__cause__ is info.value.cause
    assert log == ["start a", "start c", "stop c", "stop a"]
    assert sup.children == []


async def test_crashes_spaced_beyond_the_period_do_not_escalate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    crashes: list[float] = []

    async def slow_crasher(
        *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        await trio.sleep(2.5)  # two restarts per 5 s period at most
        crashes.append(trio.current_time())
        raise Boom("slow")

    sup = Supervisor("s", intensity=2, period=5.0)
    with trio.move_on_after(99):
        await sup.run([ChildSpec(name="slow", start=slow_crasher)])
    assert crashes == [2.5 * i for i in range(1, 40)]
    assert sup.children == []


async def test_escalation_with_zero_intensity_is_immediate() -> None:
    sup = Supervisor("s", intensity=0)
    with pytest.raises(SupervisorEscalation):
        await sup.run([ChildSpec(name="x", start=_crash_after_start)])


async def test_children_start_in_order_and_stop_in_reverse(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []

    def slow_to_start(name: str) -> ChildFn:
        async def child(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            log.append(f"start {name}")
            await trio.sleep(1)  # setup takes time: the next child must wait for it
            log.append(f"ready {name}")
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                log.append(f"stop {name}")

        return child

    sup = Supervisor("s")
    async with trio.open_nursery() as nursery:
        started = await nursery.start(
            sup.run, [ChildSpec(name=n, start=slow_to_start(n)) for n in "abc"]
        )
        assert started is sup
        assert trio.current_time() == 3.0
        dyn = await sup.start_child(ChildSpec(name="d", start=_recorder(log, "d")))
        assert [c.name for c in sup.children] == ["a", "b", "c", "d"]
        nursery.cancel_scope.cancel()

    assert log == [
        "start a",
        "ready a",
        "start b",
        "ready b",
        "start c",
        "ready c",
        "start d",
        "stop d",
        "stop c",
        "stop b",
        "stop a",
    ]
    assert dyn.finished.is_set()


async def test_a_child_ignoring_cancellation_is_abandoned_after_shutdown_s(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    log: list[str] = []

    async def stubborn(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await trio.sleep(100)  # refuses to stop for 100 s
            log.append("stubborn finally done")

    sup = Supervisor("s")
    specs = [
        ChildSpec(name="first", start=_recorder(log, "first")),
        ChildSpec(name="stubborn", start=stubborn, shutdown_s=2.0),
    ]
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run, specs)
        [_, handle] = sup.children
        nursery.cancel_scope.cancel()

    # The supervisor gave up after 2 s and still stopped the others in order.
    assert trio.current_time() == 2.0
    assert log == ["start first", "stop first"]
    assert not handle.finished.is_set()
    [record] = [r for r in caplog.records if getattr(r, "action", None) == "abandon"]
    assert record.child == "stubborn"  # type: ignore[attr-defined]

    # Detached, it ends by itself later; nothing is restarted or raised.
    await handle.finished.wait()
    assert trio.current_time() == 100.0
    assert log == ["start first", "stop first", "stubborn finally done"]
    assert handle.restarts == 0


async def test_dynamic_children(caplog: pytest.LogCaptureFixture) -> None:
    sup = Supervisor("s")
    with pytest.raises(RuntimeError, match="not running"):
        await sup.start_child(ChildSpec(name="early", start=_forever))

    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        conv = await sup.start_child(ChildSpec(name="conv:1", start=_forever))
        with pytest.raises(ValueError, match="conv:1"):
            await sup.start_child(ChildSpec(name="conv:1", start=_forever))

        # cancel() stops it without a restart, and frees the name.
        conv.cancel()
        await conv.finished.wait()
        assert conv.restarts == 0
        assert sup.children == []
        again = await sup.start_child(ChildSpec(name="conv:1", start=_forever))
        assert again is not conv

        # A dynamic child that fails its first start is not kept; the caller gets the error.
        async def broken(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            raise Boom("cannot start")

        with pytest.raises(Boom, match="cannot start"):
            await sup.start_child(ChildSpec(name="broken", start=broken))

        async def returns_early(
            *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
        ) -> None:
            return

        with pytest.raises(RuntimeError, match=r"without calling task_status\.started"):
            await sup.start_child(ChildSpec(name="early", start=returns_early))
        assert [c.name for c in sup.children] == ["conv:1"]

        # Dynamic children are restarted like static ones.
        flaky_runs: list[int] = []

        async def flaky(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            flaky_runs.append(1)
            task_status.started()
            if len(flaky_runs) == 1:
                raise Boom("once")
            await trio.sleep_forever()

        handle = await sup.start_child(ChildSpec(name="flaky", start=flaky))
        await trio.testing.wait_all_tasks_blocked()
        assert handle.restarts == 1 and len(flaky_runs) == 2
        nursery.cancel_scope.cancel()
    assert again.finished.is_set() and handle.finished.is_set()
    assert [r.action for r in caplog.records if hasattr(r, "action")].count("start_failed") == 2


async def test_dynamic_child_crash_loop_escalates_the_supervisor() -> None:
    log: list[str] = []
    sup = Supervisor("s", intensity=2)
    with pytest.RaisesGroup(SupervisorEscalation) as info:
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run, [ChildSpec(name="static", start=_recorder(log, "static"))])
            await sup.start_child(ChildSpec(name="dyn", start=_crash_after_start))
    [escalation] = info.value.exceptions
    assert isinstance(escalation, SupervisorEscalation) and escalation.child == "dyn"
    assert log == ["start static", "stop static"]


async def test_static_child_failing_its_first_start_stops_the_started_ones() -> None:
    log: list[str] = []

    async def broken(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        raise Boom("no store")

    sup = Supervisor("s")
    with pytest.raises(Boom, match="no store"):
        await sup.run(
            [
                ChildSpec(name="a", start=_recorder(log, "a")),
                ChildSpec(name="b", start=broken),
                ChildSpec(name="c", start=_recorder(log, "c")),
            ]
        )
    assert log == ["start a", "stop a"]


async def test_nested_supervisor_escalation_is_a_crash_for_its_parent() -> None:
    inner_runs: list[int] = []

    async def inner(*, task_status: trio.TaskStatus[Supervisor] = trio.TASK_STATUS_IGNORED) -> None:
        inner_runs.append(1)
        children = [ChildSpec(name="bad", start=_crash_after_start)]
        if len(inner_runs) > 1:
            children = [ChildSpec(name="good", start=_forever)]
        await Supervisor("inner", intensity=1).run(children, task_status=task_status)

    outer = Supervisor("outer")
    async with trio.open_nursery() as nursery:
        await nursery.start(outer.run, [ChildSpec(name="inner", start=inner)])
        await trio.testing.wait_all_tasks_blocked()
        [handle] = outer.children
        assert handle.restarts == 1
        assert isinstance(handle.value, Supervisor)
        assert [c.name for c in handle.value.children] == ["good"]
        nursery.cancel_scope.cancel()


async def test_supervisor_can_run_again_after_it_stopped() -> None:
    log: list[str] = []
    sup = Supervisor("s")
    for _ in range(2):
        with trio.CancelScope() as scope:
            await sup.run(
                [ChildSpec(name="a", start=_recorder(log, "a"))], task_status=_Canceller(scope)
            )
    assert log == ["start a", "stop a", "start a", "stop a"]


class _Canceller:
    """A task_status that cancels a scope as soon as the supervisor reports it started."""

    def __init__(self, scope: trio.CancelScope) -> None:
        self._scope = scope

    def started(self, value: object = None) -> None:
        self._scope.cancel()


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="intensity must be >= 0"):
        Supervisor("s", intensity=-1)
    with pytest.raises(ValueError, match="period must be > 0"):
        Supervisor("s", period=0)
    with pytest.raises(ValueError, match="shutdown_s must be >= 0"):
        ChildSpec(name="x", start=functools.partial(_forever), shutdown_s=-1)


async def test_cancelling_start_child_stops_the_half_started_child(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []

    async def slow_start(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        log.append("starting")
        try:
            await trio.sleep(10)
            task_status.started()
            await trio.sleep_forever()
        finally:
            log.append("stopped")

    sup = Supervisor("s")
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        with trio.move_on_after(1):
            await sup.start_child(ChildSpec(name="slow", start=slow_start))
        await trio.testing.wait_all_tasks_blocked()
        assert log == ["starting", "stopped"]
        assert sup.children == []
        nursery.cancel_scope.cancel()
