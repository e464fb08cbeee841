"""The chat node: the wiring of the router, the actors, the supervisor and the gateway.

A :class:`Node` is built from its seams — a :class:`persistence.Store`, a token verifier, a
seeded ``random.Random``, an epoch-milliseconds wall clock and a :class:`NodeConfig` — and run
inside a nursery the caller owns (``await nursery.start(node.run)``). Clients are handed to it
as a :class:`~actors._transport.Transport` (:meth:`Node.attach`), as a raw byte stream that
speaks HTTP/WebSocket (:meth:`Node.attach_stream`), or through TCP listeners
(:meth:`Node.serve_listeners`).

Ownership: the node's nursery holds every connection actor and stream handler; its
supervisor holds the presence registry, the conversation manager (which holds the
conversation actors), the cluster link (lease, session writer, change feed: see
:mod:`actors._cluster`) and, when given, the notifier. :meth:`Node.crash` cancels all of it at
once (memory lost, the Store keeps what was acknowledged; a fresh ``Node`` on the same Store
recovers). :meth:`Node.shutdown` is graceful: stop accepting, let conversation actors finish
the writes queued to them and write their watermarks, close every connection with 1001,
then stop the rest; it is bounded by ``shutdown_timeout_s``.
"""

from __future__ import annotations

import functools
import itertools
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import orjson
import trio

from persistence import Store
from protocol import CloseCode

from ._admission import Gate, Ticket
from ._cluster import ClusterLink
from ._config import NodeConfig
from ._connection import ConnectionActor, TokenVerifier
from ._context import NodeContext
from ._conversations import ConversationManager
from ._gateway import HttpRoute, handle_stream
from ._metrics import NodeMetrics
from ._presence import PresenceRegistry
from ._router import Router
from ._supervisor import ChildSpec, Restart, Supervisor
from ._transport import Transport
from ._web import web_routes

log = logging.getLogger("actors.node")


class NotifierLike(Protocol):
    """What the node needs of a notifier (``actors.Notifier``)."""

    async def run(self, *, task_status: trio.TaskStatus[None] = ...) -> None: ...

    def wake(self) -> None: ...


class Node:
    """One chat node; see the module docstring for construction, ownership and shutdown."""

    def __init__(
        self,
        *,
        store: Store,
        verify_token: TokenVerifier,
        rng: random.Random,
        wall_ms: Callable[[], int],
        config: NodeConfig | None = None,
        notifier: NotifierLike | None = None,
        name: str = "node",
        predecessors: Sequence[str] = (),
    ) -> None:
        self.config = config if config is not None else NodeConfig()
        self.metrics = NodeMetrics()
        self.router = Router()
        self.notifier = notifier
        self.ctx = NodeContext(
            store=store,
            config=self.config,
            wall_ms=wall_ms,
            rng=rng,
            metrics=self.metrics,
            router=self.router,
            wake_notifier=notifier.wake if notifier is not None else _nothing,
            name=name,
        )
        self.conversations = ConversationManager(self.ctx)
        self.presence = PresenceRegistry(self.ctx)
        self.ctx.presence = self.presence.mailbox
        self.cluster = ClusterLink(
            self.ctx,
            self.conversations,
            self._replaced_elsewhere,
            self._drop_connections,
            predecessors,
        )
        self.ctx.publish = self.cluster.publisher.submit
        self._verify_token = verify_token
        self._conn_ids = itertools.count(1)
        self._connections: dict[int, ConnectionActor] = {}
        #: Admission: counts every open connection from its accept on (4429 beyond limits).
        self.admission = Gate(self.config.max_connections, self.config.max_pending_hellos)
        self._nursery: trio.Nursery | None = None
        self._scope = trio.CancelScope()
        self._listeners_scope = trio.CancelScope()
        self._shutdown_requested = trio.Event()
        self._connections_gone = trio.Event()
        self._manager_done = trio.Event()
        self.stopped = trio.Event()
        self._routes: dict[str, HttpRoute] = {"/healthz": self._healthz, **web_routes()}
        if self.config.metrics:
            self._routes["/metrics"] = self._metrics

    # ------------------------------------------------------------------ running

    async def run(self, *, task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the node until :meth:`shutdown` finished or it is cancelled/crashed."""
        supervisor = Supervisor(
            self.ctx.name,
            on_restart=lambda child, _cause: self.metrics.actor_restarts.labels(child).inc(),
        )
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    await nursery.start(self.ctx.keepalive.run)
                    await nursery.start(supervisor.run, self._children())
                    task_status.started(self)
                    await self._shutdown_requested.wait()
                    await self._shut_down()
                    nursery.cancel_scope.cancel()
        finally:
            self._nursery = None
            self.stopped.set()

    def _children(self) -> list[ChildSpec]:
        children = [
            ChildSpec(name="presence", start=self.presence.run),
            ChildSpec(
                name="conversations", start=self._run_conversations, restart=Restart.TRANSIENT
            ),
            # After the conversations: the change feed hands events to their actors.
            ChildSpec(name="cluster", start=self.cluster.run),
        ]
        if self.notifier is not None:
            children.append(ChildSpec(name="notifier", start=self.notifier.run))
        return children

    async def _run_conversations(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        try:
            await self.conversations.run(task_status=task_status)
        finally:
            if self._shutdown_requested.is_set():
                self._manager_done.set()

    def crash(self) -> None:
        """Stop everything at once, as a killed process would (nothing is flushed)."""
        self._scope.cancel()

    async def shutdown(self) -> None:
        """Graceful stop (see the module docstring); returns when :meth:`run` has ended."""
        self._shutdown_requested.set()
        await self.stopped.wait()

    async def _shut_down(self) -> None:
        with trio.move_on_after(self.config.shutdown_timeout_s):
            self._listeners_scope.cancel()
            self.conversations.stop()
            await self._manager_done.wait()
            for conn_id in sorted(self._connections):
                # Each connection first writes what it is owed (the acks of the writes the
                # conversation actors just finished, queued pushes), bounded by drain_timeout_s.
                self._connections[conn_id].request_close(
                    CloseCode.GOING_AWAY, "node shutting down", drain=True
                )
            if self._connections:
                await self._connections_gone.wait()
            await self.cluster.leave()

    # ------------------------------------------------------------------ several nodes

    def _replaced_elsewhere(self, user: str, device: str, since: int) -> bool:
        """A session of (user, device) started at ``since`` on another node: close this
        node's connection of the device with 4409 unless it is the newer one (then False)."""
        handle = self.router.get(user, device)
        if handle is None:
            return True
        if handle.since > since:
            return False
        handle.close(CloseCode.REPLACED, "replaced by a newer connection of this device")
        return True

    def _drop_connections(self, code: int, reason: str) -> None:
        for conn_id in sorted(self._connections):
            self._connections[conn_id].request_close(code, reason)

    # ------------------------------------------------------------------ clients

    def _running_nursery(self) -> trio.Nursery:
        if self._nursery is None or self._shutdown_requested.is_set():
            raise RuntimeError("the node is not running")
        return self._nursery

    def _spawn(self, async_fn: Callable[[], Awaitable[None]]) -> None:
        """Start a helper task of a connection (its writer, its WebSocket reader) in the
        node's nursery: it is cancelled with the node, and the connection stops it itself."""
        if self._nursery is None:
            raise RuntimeError("the node is not running")
        self._nursery.start_soon(async_fn)

    def attach(self, transport: Transport) -> None:
        """Serve one client connection over ``transport`` (a connection actor of this node)."""
        self._running_nursery().start_soon(self.serve_transport, transport)

    def attach_stream(self, stream: trio.abc.Stream) -> None:
        """Serve one raw byte stream (HTTP or WebSocket), as if accepted from a listener."""
        self._running_nursery().start_soon(self.serve_stream, stream)

    async def serve_transport(self, transport: Transport) -> None:
        """Run a connection actor over ``transport`` in the calling task, to its end (as a
        connection accepted now)."""
        with self.admission.enter() as ticket:
            await self._serve_admitted(transport, ticket=ticket, accepted_at=trio.current_time())

    async def _serve_admitted(
        self, transport: Transport, *, ticket: Ticket, accepted_at: float
    ) -> None:
        if self._nursery is None or self._shutdown_requested.is_set():
            await transport.close(CloseCode.GOING_AWAY, "node shutting down")
            return
        if ticket.refusal is not None:
            await transport.close(CloseCode.OVER_LIMIT, ticket.refusal[:120])
            return
        conn_id = next(self._conn_ids)
        actor = ConnectionActor(
            self.ctx,
            conversations=self.conversations,
            presence=self.presence.mailbox,
            verify_token=self._verify_token,
            transport=transport,
            conn_id=conn_id,
            spawn=self._spawn,
            ticket=ticket,
            accepted_at=accepted_at,
        )
        self._connections[conn_id] = actor
        try:
            await actor.run()
        finally:
            del self._connections[conn_id]
            if not self._connections and self._shutdown_requested.is_set():
                self._connections_gone.set()

    async def serve_stream(self, stream: trio.abc.Stream) -> None:
        """Serve one byte stream: an HTTP answer or a WebSocket session (never raises)."""
        accepted_at = trio.current_time()
        try:
            with self.admission.enter() as ticket:
                await handle_stream(
                    stream,
                    serve=functools.partial(
                        self._serve_admitted, ticket=ticket, accepted_at=accepted_at
                    ),
                    routes=self._routes,
                    deadline=accepted_at + self.config.hello_timeout_s,
                    spawn=self._spawn,
                    allowed_origins=self.config.allowed_origins,
                )
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.debug("stream ended early: %r", exc)
        except Exception:
            log.exception("gateway failed on a stream")
            await trio.aclose_forcefully(stream)

    async def serve_listeners(
        self,
        listeners: Sequence[trio.abc.Listener[trio.abc.Stream]],
        *,
        task_status: trio.TaskStatus[list[trio.abc.Listener[trio.abc.Stream]]] = (
            trio.TASK_STATUS_IGNORED
        ),
    ) -> None:
        """Accept streams from ``listeners`` until shutdown; each is served in the node."""
        nursery = self._running_nursery()
        with self._listeners_scope:
            await trio.serve_listeners(
                self.serve_stream,
                list(listeners),
                handler_nursery=nursery,
                task_status=task_status,
            )

    # ------------------------------------------------------------------ HTTP

    async def _healthz(self) -> tuple[int, str, bytes]:
        body = {"status": "ok", "node": self.ctx.name, "connections": len(self.router)}
        return 200, "application/json", orjson.dumps(body)

    async def _metrics(self) -> tuple[int, str, bytes]:
        with trio.move_on_after(1.0):
            try:
                pending = await self.ctx.store.pending_notifications()
                self.metrics.notifications_pending.set(pending)
            except Exception as exc:  # a dead store must not break /metrics
                log.warning("cannot count pending notifications: %s", exc)
        return 200, "text/plain; version=0.0.4; charset=utf-8", self.metrics.render()


def _nothing() -> None:
    return None
