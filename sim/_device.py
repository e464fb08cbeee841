"""A simulated device: the real client session machine over a real WebSocket on a virtual link.

:class:`SimDevice` drives :class:`protocol.ClientSession` -- the sans-IO client the SDK is
built on, with its outbox, resend-with-the-same-cmid, (conv, seq) dedupe, ``recv`` batching
and gap filling -- over trio-websocket's client on a :class:`~sim._network.Link` to the node.
It reconnects with a jittered backoff from its own seeded RNG, keeps the connection alive with
WebSocket pings, and records every frame it writes and reads, and every event the session
hands to the application, in the run's :class:`~sim._history.History`.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import trio
import trio_websocket

from protocol import (
    Ack,
    Error,
    GroupCreate,
    History,
    Msg,
    Nack,
    Presence,
    PresenceSub,
    Receipt,
    RemoteProtocolError,
    Result,
    decode_server_frame,
)
from protocol._client import (
    Acked,
    ClientSession,
    ClientState,
    NewMessage,
    RequestCompleted,
    SendFailed,
    StateChanged,
)

from . import _history as h
from ._network import Link

#: Opens a link to the node, or raises ``OSError`` when no node is listening.
Dialer = Callable[[str], Link]

#: What a dead connection raises from trio-websocket or the stream under it.
_GONE = (
    trio_websocket.HandshakeError,
    trio_websocket.ConnectionClosed,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
)

#: Close codes after which the client would not come back by itself; the sim never sends them.
_FATAL = frozenset({4401})


class SimDevice:
    """One device of one user; run :meth:`run` in the world's nursery."""

    def __init__(
        self,
        *,
        user: str,
        device: str,
        rng: random.Random,
        history: h.History,
        dial: Dialer,
        heartbeat_s: float,
    ) -> None:
        self.user = user
        self.device = device
        self.name = f"{user}/{device}"
        self._rng = rng
        self._history = history
        self._dial = dial
        self._ping_every = heartbeat_s / 2
        self.session = ClientSession(
            token=f"sim.{user}", device=device, rng=rng, recv_delay_s=0.05, retry_max_s=4.0
        )
        #: The workload's wish: connect (True) or stay away (False).
        self.wanted = True
        self.link: Link | None = None
        self.session_no = 0
        self.sessions_opened = 0
        self.groups_created: list[str] = []
        self._wake = trio.Event()
        self._wanted_changed = trio.Event()
        self._ws: trio_websocket.WebSocketConnection | None = None
        self._raw: list[str] = []

    # ------------------------------------------------------------------ workload actions

    @property
    def synced(self) -> bool:
        return self.session.state is ClientState.SYNCED

    def send(self, body: str, *, conv: str | None = None, to: str | None = None) -> str:
        cmid = self.session.send(body, conv=conv, to=to)
        self._record(
            h.SendIssued(
                at=trio.current_time(),
                user=self.user,
                device=self.device,
                cmid=cmid,
                body=body,
                conv=conv,
                to=to,
            )
        )
        self._kick()
        return cmid

    def request(self, frame: Any) -> None:
        self.session.request(frame)
        self._kick()

    def send_raw(self, text: str) -> bool:
        """Write ``text`` as one WebSocket message, bypassing the session (G9 probes).

        Only while connected (queued behind the session's own output); False otherwise.
        """
        if self._ws is None or not self.session.is_open:
            return False
        self._raw.append(text)
        self._kick()
        return True

    def mark_read(self, conv: str) -> None:
        status = self.session.conversation(conv)
        if status.watermark:
            self.session.mark_read(conv, status.watermark)
            self._kick()

    def set_wanted(self, wanted: bool) -> None:
        self.wanted = wanted
        self._wanted_changed.set()

    async def disconnect_clean(self) -> bool:
        """Close the WebSocket with 1000 (the device stays away until :meth:`set_wanted`)."""
        ws = self._ws
        self.set_wanted(False)
        if ws is None or ws.closed:
            return False
        with trio.move_on_after(2):
            await ws.aclose(1000, "bye")
        return True

    # ------------------------------------------------------------------ running

    async def run(self) -> None:
        """Connect, serve, and reconnect with backoff for as long as the world runs."""
        attempt = 0
        while True:
            while not self.wanted:
                self._wanted_changed = trio.Event()
                await self._wanted_changed.wait()
            opened = await self._connect_once()
            attempt = 0 if opened else attempt + 1
            delay = min(2.0, 0.05 * 2**attempt) * (0.5 + self._rng.random())
            await trio.sleep(delay)

    async def _connect_once(self) -> bool:
        try:
            link = self._dial(self.name)
        except OSError:
            return False
        self.link = link
        self.session_no += 1
        number = self.session_no
        welcomed = False
        code: int | None = None
        reason = ""
        try:
            async with trio.open_nursery() as nursery:
                ws = await trio_websocket.wrap_client_stream(
                    # trio-websocket annotates SocketStream, but any trio Stream works
                    nursery,
                    link.client,  # type: ignore[arg-type]
                    "sim",
                    "/v1/ws",
                    message_queue_size=0,
                )
                self._ws = ws
                self.session.connect()
                nursery.start_soon(self._guard, nursery, self._writer(ws, number))
                nursery.start_soon(self._guard, nursery, self._keepalive(ws))
                welcomed = await self._reader(ws, number)
                nursery.cancel_scope.cancel()
                if ws.closed is not None:
                    code, reason = ws.closed.code, ws.closed.reason or ""
        except _GONE:
            pass
        finally:
            self._ws = None
            self._raw = []
            with trio.CancelScope(shield=True):
                await link.client.aclose()
        if self.session.state not in (ClientState.DISCONNECTED, ClientState.IDLE):
            self.session.connection_lost(code, reason)
            self._drain_events(number)
        return welcomed and code not in _FATAL

    async def _reader(self, ws: trio_websocket.WebSocketConnection, number: int) -> bool:
        welcomed = False
        try:
            while True:
                text = await ws.get_message()
                welcomed |= self._on_text(text, number)
                self._kick()
        except _GONE:
            return welcomed

    @staticmethod
    async def _guard(nursery: trio.Nursery, work: Awaitable[None]) -> None:
        """Run ``work``; when the connection dies under it, end the whole connection."""
        try:
            await work
        except _GONE:
            nursery.cancel_scope.cancel()

    async def _writer(self, ws: trio_websocket.WebSocketConnection, number: int) -> None:
        while True:
            for text in self.session.data_to_send():
                self._record_out(text, number)
                await ws.send_message(text)
            raw, self._raw = self._raw, []
            for text in raw:
                self._record_garbage(text, number)
                await ws.send_message(text)
            self._drain_events(number)
            deadline = self.session.next_deadline()
            self._wake = trio.Event()
            with trio.move_on_at(deadline if deadline is not None else float("inf")):
                await self._wake.wait()
            self.session.tick(trio.current_time())

    async def _keepalive(self, ws: trio_websocket.WebSocketConnection) -> None:
        pings = 0
        while True:
            await trio.sleep(self._ping_every)
            pings += 1
            await ws.ping(pings.to_bytes(4, "big"))

    def _kick(self) -> None:
        self._wake.set()

    # ------------------------------------------------------------------ recording

    def _record(self, event: h.Event) -> None:
        self._history.record(event)

    def _record_out(self, text: str, number: int) -> None:
        data = orjson.loads(text)
        kind = str(data.pop("type", "?"))
        data.pop("token", None)
        fields = tuple(sorted((k, v) for k, v in data.items() if k != "body"))
        if kind == "send":
            fields = (*fields, ("body", data.get("body")))
        self._record(
            h.FrameOut(
                at=trio.current_time(),
                user=self.user,
                device=self.device,
                session=number,
                type=kind,
                fields=fields,
            )
        )

    def _record_garbage(self, text: str, number: int) -> None:
        self._record(
            h.FrameOut(
                at=trio.current_time(),
                user=self.user,
                device=self.device,
                session=number,
                type="garbage",
                fields=(("text", text),),
            )
        )

    def _on_text(self, text: str | bytes, number: int) -> bool:
        """Record and feed one server message; True when it was ``welcome``."""
        now = trio.current_time()
        if isinstance(text, bytes):
            return False
        try:
            frame = decode_server_frame(text)
        except RemoteProtocolError as exc:
            self._record(
                h.ErrorSeen(
                    at=now,
                    user=self.user,
                    device=self.device,
                    session=number,
                    code="client_decode",
                    message=exc.message,
                )
            )
            return False
        common: dict[str, Any] = {
            "at": now,
            "user": self.user,
            "device": self.device,
            "session": number,
        }
        match frame:
            case Msg():
                self._record(
                    h.PushSeen(
                        **common,
                        conv=frame.conv,
                        seq=frame.seq,
                        id=frame.id,
                        sender=frame.sender,
                        cmid=frame.cmid,
                        body=frame.body,
                        kind=frame.kind,
                        synced=self.synced,
                    )
                )
            case Ack():
                self._record(
                    h.AckSeen(
                        **common, cmid=frame.cmid, conv=frame.conv, seq=frame.seq, id=frame.id
                    )
                )
            case Nack():
                self._record(
                    h.NackSeen(**common, cmid=frame.cmid, code=frame.code.value, retry=frame.retry)
                )
            case Receipt():
                self._record(
                    h.ReceiptSeen(
                        **common,
                        conv=frame.conv,
                        of_user=frame.user,
                        delivered=frame.delivered,
                        read=frame.read,
                    )
                )
            case Presence():
                self._record(
                    h.PresenceSeen(
                        **common,
                        of_user=frame.user,
                        status=frame.status,
                        last_seen=frame.last_seen,
                    )
                )
            case Error():
                self._record(
                    h.ErrorSeen(
                        **common, code=frame.code.value, message=frame.message, rid=frame.rid
                    )
                )
            case _:
                pass
        try:
            self.session.receive_frame(frame, now)
        except RemoteProtocolError as exc:
            self._record(h.ErrorSeen(**common, code="client_protocol", message=exc.message))
        welcomed = self.session.is_open and type(frame).__name__ == "Welcome"
        self._drain_events(number)
        return welcomed

    def _drain_events(self, number: int) -> None:
        now = trio.current_time()
        for event in self.session.next_events():
            match event:
                case NewMessage(message=msg):
                    self._record(
                        h.Displayed(
                            at=now,
                            user=self.user,
                            device=self.device,
                            conv=msg.conv,
                            seq=msg.seq,
                            id=msg.id,
                            body=msg.body,
                        )
                    )
                case Acked(cmid=cmid, ack=ack):
                    self._record(
                        h.SendResolved(
                            at=now,
                            user=self.user,
                            device=self.device,
                            cmid=cmid,
                            conv=ack.conv,
                            seq=ack.seq,
                            id=ack.id,
                        )
                    )
                case SendFailed(cmid=cmid, nack=nack):
                    self._record(
                        h.SendResolved(
                            at=now,
                            user=self.user,
                            device=self.device,
                            cmid=cmid,
                            conv=None,
                            seq=None,
                            id=None,
                            error=f"{nack.code.value}: {nack.message}",
                        )
                    )
                case StateChanged(state=ClientState.OPEN):
                    self.sessions_opened += 1
                    self._record(
                        h.SessionOpened(at=now, user=self.user, device=self.device, session=number)
                    )
                case RequestCompleted(request=request, result=result):
                    self._on_result(request, result, number, now)
                case _:
                    pass

    def _on_result(self, request: Any, result: Result, number: int, now: float) -> None:
        if isinstance(request, GroupCreate):
            conv = result.get("conv")
            if isinstance(conv, str):
                self.groups_created.append(conv)
        elif isinstance(request, History):
            messages = result.get("messages", ())
            self._record(
                h.HistorySeen(
                    at=now,
                    user=self.user,
                    device=self.device,
                    session=number,
                    conv=request.conv,
                    messages=tuple((m.seq, m.id) for m in messages),
                )
            )
        elif isinstance(request, PresenceSub):
            pass
