"""OTP-style supervision for trio tasks: child specs, one_for_one restarts, restart intensity.

A :class:`Supervisor` owns a set of children, each described by a :class:`ChildSpec`. It starts
them in order (each fully started before the next), restarts the ones that end according to
their :class:`Restart` policy, and stops them in reverse start order. If more than
``intensity`` restarts happen within ``period`` seconds it stops every child and fails upward
with :class:`SupervisorEscalation` — Erlang's "more than MaxR restarts in MaxT seconds → the
supervisor terminates its children and then itself".

Terms:

* A **crash** is an :class:`Exception` escaping the child (``trio.Cancelled`` never is one).
  Every crash is logged at ERROR with its traceback and structured ``extra`` fields
  (``supervisor``, ``child``, ``restart_policy``, ``action``).
* A child that returns normally is **done**: a ``PERMANENT`` child is restarted anyway (its
  cause is a :class:`ChildExited`), ``TRANSIENT`` and ``TEMPORARY`` children are not.
* A child stopped on purpose (:meth:`ChildHandle.cancel`, or the supervisor shutting down) is
  neither a crash nor restarted.
* Restarts happen at once, without sleeping: the intensity limit is what stops a crash loop.

Who owns what: each child runs in a task of its own, inside a cancel scope only the
supervisor cancels, so the supervisor alone decides the order in which children stop. The
children run as trio *system tasks* (``trio.lowlevel.spawn_system_task``) rather than in a
nursery of the supervisor, because trio cannot kill a task: a child that ignores cancellation
for longer than its ``shutdown_s`` would otherwise hold the supervisor's nursery — and so the
whole node — open forever. Instead the supervisor waits at most ``shutdown_s`` for it, logs
that it abandons it, and moves on; the abandoned task keeps running detached until it ends by
itself or ``trio.run`` finishes (which cancels all system tasks). Whatever it raises later is
caught and logged, never propagated, because an exception escaping a system task would take
down the whole run. Children get a copy of the supervisor's context variables.

Cancellation: cancelling :meth:`Supervisor.run` stops the children in reverse start order,
each under a shielded, ``shutdown_s``-bounded wait, then lets ``Cancelled`` propagate. While
the supervisor stops, crashing children are not restarted.
"""

from __future__ import annotations

import collections
import contextvars
import enum
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import attrs
import trio

__all__ = [
    "ChildExited",
    "ChildHandle",
    "ChildSpec",
    "Restart",
    "Supervisor",
    "SupervisorEscalation",
]

_log = logging.getLogger(__name__)


class Restart(enum.Enum):
    """When a child is restarted after it ends (OTP restart types)."""

    #: always restarted, whether it crashed or returned
    PERMANENT = "permanent"
    #: restarted only after a crash
    TRANSIENT = "transient"
    #: never restarted
    TEMPORARY = "temporary"


@attrs.frozen(kw_only=True)
class ChildSpec:
    """How to run one child.

    ``start`` is called as ``await start(task_status=status)``, exactly like a function handed
    to ``nursery.start``: the child is *started* once it calls ``task_status.started()``, and
    whatever it needs after a restart it must rebuild there (e.g. from the Store). A child that
    returns or crashes before calling ``started()`` failed to start.

    ``shutdown_s`` bounds how long the supervisor waits for the child to finish after
    cancelling it.
    """

    name: str
    start: Callable[..., Awaitable[object]]
    restart: Restart = Restart.PERMANENT
    shutdown_s: float = attrs.field(default=5.0)

    @shutdown_s.validator
    def _check_shutdown(self, _attribute: attrs.Attribute[float], value: float) -> None:
        if not value >= 0:
            raise ValueError(f"shutdown_s must be >= 0, got {value!r}")


class ChildExited(Exception):
    """The cause recorded when a ``PERMANENT`` child returned normally and was restarted."""


class SupervisorEscalation(Exception):
    """A supervisor exceeded its restart intensity; it stopped its children and failed.

    ``cause`` (also the ``__cause__``) is the last crash, ``child`` the child that caused it.
    """

    def __init__(self, supervisor: str, child: str, cause: BaseException) -> None:
        super().__init__(
            f"supervisor {supervisor!r}: restart intensity exceeded; last crash of {child!r}: "
            f"{cause!r}"
        )
        self.supervisor = supervisor
        self.child = child
        self.cause = cause


@attrs.define(eq=False)
class _StartStatus:
    """The ``task_status`` handed to a child; ``started()`` wakes whoever waits for it."""

    ready: trio.Event = attrs.field(factory=trio.Event)
    on_started: Callable[[object], None] | None = None

    def started(self, value: object = None) -> None:
        if self.ready.is_set():
            raise RuntimeError("called 'started' twice on the same task status")
        if self.on_started is not None:
            self.on_started(value)
        self.ready.set()


@attrs.define(eq=False, repr=False)
class ChildHandle:
    """A live child of a :class:`Supervisor`; returned by :meth:`Supervisor.start_child`.

    ``finished`` is set once the child's task has ended for good: it was stopped, it ended
    and its policy says not to restart it, or the supervisor gave up on it. ``value`` is what
    the child passed to ``task_status.started()`` at its latest start.
    """

    spec: ChildSpec
    finished: trio.Event = attrs.field(factory=trio.Event)
    value: object = None
    restarts: int = 0
    # Set by cancel() or by the supervisor's shutdown: the child ends without a restart.
    _stop_requested: bool = False
    _scope: trio.CancelScope | None = None
    _first_start: _StartStatus = attrs.field(factory=_StartStatus)
    _start_error: Exception | None = None

    def __attrs_post_init__(self) -> None:
        self._first_start.on_started = self._set_value

    @property
    def name(self) -> str:
        return self.spec.name

    def _set_value(self, value: object) -> None:
        self.value = value

    def cancel(self) -> None:
        """Stop this child: it is cancelled, not counted as a crash and not restarted.

        Returns at once; await ``finished.wait()`` to know it has ended.
        """
        self._stop_requested = True
        if self._scope is not None:
            self._scope.cancel()

    def __repr__(self) -> str:
        state = "finished" if self.finished.is_set() else "live"
        return f"<ChildHandle {self.name!r} {state} restarts={self.restarts}>"


class Supervisor:
    """Supervises children one_for_one; see the module docstring for the semantics.

    ``intensity`` and ``period``: more than ``intensity`` restarts within ``period`` seconds
    (of trio's clock) escalate. ``on_restart(child_name, cause)`` is called before each
    restart (metrics); it must not block.

    Child names are unique among the live children of a supervisor, static and dynamic
    alike: starting a second live child with the same name raises :class:`ValueError`; the
    name is free again once the previous holder's ``finished`` is set.

    :meth:`run` may be called again after it returned (e.g. when this supervisor is itself
    restarted by a parent supervisor); each run starts from its static children only.
    """

    def __init__(
        self,
        name: str,
        *,
        intensity: int = 3,
        period: float = 5.0,
        logger: logging.Logger | None = None,
        on_restart: Callable[[str, BaseException], None] | None = None,
    ) -> None:
        if intensity < 0:
            raise ValueError(f"intensity must be >= 0, got {intensity}")
        if not period > 0:
            raise ValueError(f"period must be > 0, got {period}")
        self.name = name
        self.intensity = intensity
        self.period = period
        self._log = logger if logger is not None else _log
        self._on_restart = on_restart
        # Live children by name, in start order (a restarted child keeps its place), so
        # shutdown can walk them in reverse.
        self._children: dict[str, ChildHandle] = {}
        self._restart_times: collections.deque[float] = collections.deque()
        self._running = False
        self._stopping = False
        self._escalated = trio.Event()
        self._escalation: SupervisorEscalation | None = None

    # -- public API ---------------------------------------------------------------------

    async def run(
        self,
        children: Sequence[ChildSpec] = (),
        *,
        task_status: trio.TaskStatus[Supervisor] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Start ``children`` in order, report ``started(self)``, then supervise until cancelled.

        If a static child fails its first start, the children started so far are stopped
        and the child's exception propagates (as with ``nursery.start``). On escalation the
        children are stopped and :class:`SupervisorEscalation` is raised. When cancelled, the
        children are stopped in reverse start order and ``Cancelled`` propagates.
        """
        if self._running:
            raise RuntimeError(f"supervisor {self.name!r} is already running")
        self._running = True
        self._stopping = False
        self._children = {}
        self._restart_times.clear()
        self._escalated = trio.Event()
        self._escalation = None
        try:
            for spec in children:
                await self._start(spec)
            task_status.started(self)
            await self._escalated.wait()
        finally:
            self._stopping = True
            # Shielded so that a cancelled supervisor still stops its children in order;
            # each wait inside is bounded by the child's shutdown_s.
            with trio.CancelScope(shield=True):
                await self._stop_all()
            self._running = False
        assert self._escalation is not None
        raise self._escalation from self._escalation.cause

    async def start_child(self, spec: ChildSpec) -> ChildHandle:
        """Start a dynamic child under this supervisor's supervision; return once it started.

        Raises :class:`ValueError` if a live child has the same name, :class:`RuntimeError`
        if the supervisor is not running, and the child's own exception if its first start
        fails (it is then not kept). If the caller is cancelled while the child is starting,
        the child is stopped too.
        """
        if not self._running or self._stopping:
            raise RuntimeError(f"supervisor {self.name!r} is not running")
        return await self._start(spec)

    @property
    def children(self) -> list[ChildHandle]:
        """The live children, in start order."""
        return list(self._children.values())

    # -- starting -----------------------------------------------------------------------

    async def _start(self, spec: ChildSpec) -> ChildHandle:
        if spec.name in self._children:
            raise ValueError(
                f"supervisor {self.name!r} already has a live child named {spec.name!r}"
            )
        child = ChildHandle(spec=spec)
        self._children[spec.name] = child
        trio.lowlevel.spawn_system_task(
            self._supervise,
            child,
            name=f"{self.name}/{spec.name}",
            context=contextvars.copy_context(),
        )
        try:
            await child._first_start.ready.wait()
        except BaseException:
            # Our caller gave up waiting (cancelled): like nursery.start, the half-started
            # child goes with it.
            child.cancel()
            raise
        if child._start_error is not None:
            raise child._start_error
        return child

    # -- the per-child task -------------------------------------------------------------

    async def _supervise(self, child: ChildHandle) -> None:
        """Body of the child's system task: run, restart per policy, report the end.

        Must never raise anything but ``Cancelled`` (see the module docstring).
        """
        try:
            await self._restart_loop(child)
        except Exception:
            # A bug in the supervisor itself; logged rather than crashing the trio run.
            self._log.critical(
                "supervisor %s: internal error supervising %s",
                self.name,
                child.name,
                exc_info=True,
                extra=self._extra(child, action="give_up"),
            )
        finally:
            if self._children.get(child.name) is child:
                del self._children[child.name]
            # Whoever still waits for the first start must not hang.
            child._first_start.ready.set()
            child.finished.set()

    async def _restart_loop(self, child: ChildHandle) -> None:
        while True:
            first = not child._first_start.ready.is_set()
            cause = await self._run_once(child)
            if child._stop_requested:
                if cause is not None:
                    self._log_crash(child, cause, action="stopped")
                return
            if first and not child._first_start.ready.is_set():
                # Failed its very first start: report to whoever is starting it.
                child._start_error = cause if cause is not None else _never_started(child)
                self._log_crash(child, child._start_error, action="start_failed")
                return
            if not self._should_restart(child.spec.restart, cause):
                if cause is not None:
                    self._log_crash(child, cause, action="give_up")
                else:
                    self._log.info(
                        "supervisor %s: child %s finished",
                        self.name,
                        child.name,
                        extra=self._extra(child, action="finished"),
                    )
                return
            reason = cause if cause is not None else ChildExited(f"{child.name} returned")
            if self._stopping:
                self._log_crash(child, reason, action="stopped")
                return
            if not self._note_restart():
                self._log_crash(child, reason, action="escalate")
                self._escalate(child, reason)
                return
            self._log_crash(child, reason, action="restart")
            child.restarts += 1
            if self._on_restart is not None:
                self._on_restart(child.name, reason)

    async def _run_once(self, child: ChildHandle) -> Exception | None:
        """Run one incarnation of ``child``; return its crash, or None if it returned/stopped."""
        status = child._first_start
        if status.ready.is_set():
            status = _StartStatus(on_started=child._set_value)
        with trio.CancelScope() as scope:
            child._scope = scope
            if child._stop_requested:
                scope.cancel()
            try:
                await child.spec.start(task_status=status)
            except Exception as exc:
                return exc
            finally:
                child._scope = None
            if not status.ready.is_set():
                return _never_started(child)
        return None

    @staticmethod
    def _should_restart(policy: Restart, cause: Exception | None) -> bool:
        match policy:
            case Restart.PERMANENT:
                return True
            case Restart.TRANSIENT:
                return cause is not None
            case Restart.TEMPORARY:
                return False

    def _note_restart(self) -> bool:
        """Record a restart now; False if that makes more than ``intensity`` in ``period``."""
        now = trio.current_time()
        times = self._restart_times
        times.append(now)
        while times and now - times[0] >= self.period:
            times.popleft()
        return len(times) <= self.intensity

    def _escalate(self, child: ChildHandle, cause: BaseException) -> None:
        if self._escalation is None:
            self._escalation = SupervisorEscalation(self.name, child.name, cause)
        self._stopping = True
        self._escalated.set()

    # -- stopping -----------------------------------------------------------------------

    async def _stop_all(self) -> None:
        for child in reversed(list(self._children.values())):
            await self._stop(child)

    async def _stop(self, child: ChildHandle) -> None:
        """Cancel ``child`` and wait up to its ``shutdown_s``; abandon it after that."""
        child.cancel()
        with trio.move_on_after(child.spec.shutdown_s):
            await child.finished.wait()
            return
        self._log.error(
            "supervisor %s: child %s ignored cancellation for %ss; abandoning it",
            self.name,
            child.name,
            child.spec.shutdown_s,
            extra=self._extra(child, action="abandon"),
        )
        # It keeps running detached; forget it so its name is free for the next run.
        if self._children.get(child.name) is child:
            del self._children[child.name]

    # -- logging ------------------------------------------------------------------------

    def _extra(self, child: ChildHandle, *, action: str) -> dict[str, Any]:
        return {
            "supervisor": self.name,
            "child": child.name,
            "restart_policy": child.spec.restart.value,
            "restarts": child.restarts,
            "action": action,
        }

    def _log_crash(self, child: ChildHandle, cause: BaseException, *, action: str) -> None:
        if isinstance(cause, ChildExited):
            # A permanent child that returned is restarted, but it did not crash.
            self._log.warning(
                "supervisor %s: permanent child %s returned; %s",
                self.name,
                child.name,
                action,
                extra=self._extra(child, action=action),
            )
            return
        self._log.error(
            "supervisor %s: child %s crashed with %r; %s",
            self.name,
            child.name,
            cause,
            action,
            exc_info=(type(cause), cause, cause.__traceback__),
            extra=self._extra(child, action=action),
        )


def _never_started(child: ChildHandle) -> RuntimeError:
    return RuntimeError(f"child {child.name!r} returned without calling task_status.started()")
