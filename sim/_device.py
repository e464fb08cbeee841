"""A simulated device: the real client SDK over a real WebSocket on a virtual link.

:class:`SimDevice` runs one ``client.Client`` -- the SDK applications use, with its
reconnect loop and jittered backoff, keep-alive pings, and the ``protocol.ClientSession``
inside it (outbox, resend with the same cmid, (conv, seq) dedupe, ``recv`` batching, gap
filling). The SDK gets its connections from :meth:`SimDevice._transport`, the seam it offers
for this: each connection is a fresh :class:`~sim._network.Link` to the node, with
trio-websocket's client on our end and the node's gateway on the other.

Between the SDK and the WebSocket sits :class:`_Tap`, which records every frame the device
writes and reads in the run's :class:`~sim._history.History`; the SDK's events (what it
shows the application) are recorded by :meth:`SimDevice._consume_events`.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import orjson
import trio
import trio_websocket

from client import Client, ClientError, WebSocketLike
from protocol import (
    Ack,
    Acked,
    ClientState,
    CloseCode,
    Error,
    Msg,
    Nack,
    NewMessage,
    Presence,
    Receipt,
    RemoteProtocolError,
    SendFailed,
    StateChanged,
    TypingNotice,
    decode_server_frame,
)

from . import _history as h
from ._network import Link

#: Opens a link to a node for a device (by name), or raises ``OSError`` when it cannot.
Dialer = Callable[[str], Link]

#: Bound on closing one WebSocket from our side (the SDK's own default is the same).
_CLOSE_TIMEOUT_S = 2.0


class _Tap:
    """A :class:`client.WebSocketLike` that records what passes through it."""

    def __init__(
        self, ws: trio_websocket.WebSocketConnection, link: Link, device: SimDevice, session: int
    ):
        self._ws = ws
        self._link = link
        self._device = device
        self._session = session

    async def get_message(self) -> str | bytes:
        message = await self._ws.get_message()
        self._device._record_in(message, self._session, self._link.sent_at(), self._link.node)
        return message

    async def send_message(self, message: str | bytes) -> None:
        if isinstance(message, str):
            self._device._record_out(message, self._session)
        await self._ws.send_message(message)

    async def ping(self, payload: bytes | None = None) -> None:
        await self._ws.ping(payload)

    async def aclose(self, code: int = 1000, reason: str | None = None) -> None:
        await self._ws.aclose(code, reason)


class _Connection:
    """One SDK connection: a new link to the node with trio-websocket's client on it.

    The WebSocket's reader task runs in the device's own nursery, so a connection never
    owns tasks of its own; leaving the context closes the WebSocket (bounded) and the link.
    """

    def __init__(self, device: SimDevice) -> None:
        self._device = device
        self._link: Link | None = None
        self._ws: trio_websocket.WebSocketConnection | None = None

    async def __aenter__(self) -> WebSocketLike:
        device = self._device
        if not device.wanted:
            raise ConnectionRefusedError(f"{device.name} is offline")
        assert device._nursery is not None, "SimDevice.run has not started"
        link = self._link = device.link = device._dial(device.name)
        device.session_no += 1
        try:
            self._ws = await trio_websocket.wrap_client_stream(
                device._nursery,
                link.client,  # type: ignore[arg-type]  # any trio Stream works
                "sim",
                "/v1/ws",
            )
        except BaseException:
            await trio.aclose_forcefully(link.client)
            raise
        tap = device._tap = _Tap(self._ws, link, device, device.session_no)
        return tap

    async def __aexit__(self, *exc_info: object) -> None:
        self._device._tap = None
        with trio.move_on_after(_CLOSE_TIMEOUT_S, shield=True):
            if self._ws is not None:
                await self._ws.aclose()
            if self._link is not None:
                await self._link.client.aclose()


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
        token_ttl_s: float | None = None,
        epoch_ms: int = 0,
    ) -> None:
        self.user = user
        self.device = device
        self.name = f"{user}/{device}"
        self._history = history
        self._dial = dial
        self._token_ttl_s = token_ttl_s
        self._epoch_ms = epoch_ms
        self.client = Client(
            token=self._fresh_token(),
            token_provider=self._token_provider if token_ttl_s is not None else None,
            device=device,
            transport=self._transport,
            rng=rng,
            backoff_base_s=0.1,
            backoff_max_s=4.0,
        )
        #: False while the device is kept away from the network (a clean disconnect).
        self.wanted = True
        self.absence = 0
        self.link: Link | None = None
        self.session_no = 0
        self.sessions_opened = 0
        self._tap: _Tap | None = None
        self._nursery: trio.Nursery | None = None

    def _fresh_token(self) -> str:
        """A token for this user; with a TTL it expires ``token_ttl_s`` from now (virtual
        time), so sessions outlive their tokens (PROTOCOL session rule 8)."""
        if self._token_ttl_s is None:
            return f"sim.{self.user}"
        expiry = self._epoch_ms / 1000 + trio.current_time() + self._token_ttl_s
        return f"sim.{self.user}.{expiry:.3f}"

    async def _token_provider(self) -> str:
        return self._fresh_token()

    # ------------------------------------------------------------------ state

    @property
    def synced(self) -> bool:
        return self.client.state is ClientState.SYNCED

    @property
    def connected(self) -> bool:
        return self.link is not None and self.link.up and self.client.session.is_open

    # ------------------------------------------------------------------ workload actions

    def send(self, body: str, *, conv: str | None = None, to: str | None = None) -> None:
        cmid = self.client.send_nowait(body, conv=conv, to=to)
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

    def mark_read(self, conv: str) -> None:
        watermark = self.client.session.conversation(conv).watermark
        if watermark:
            self.client.mark_read(conv, watermark)

    def typing(self, conv: str) -> None:
        self.client.typing(conv)

    def presence_sub(self, users: tuple[str, ...]) -> None:
        self.client.presence_sub(users)

    def history(self, conv: str, limit: int) -> None:
        self._spawn(self._history_request(conv, limit))

    def group(self, what: str, call: Callable[[], Awaitable[Any]]) -> None:
        """Run an SDK group request in the background; its outcome goes to the trace."""
        self._spawn(self._group_request(what, call))

    def send_raw(self, text: str) -> bool:
        """Write ``text`` as one WebSocket message past the SDK (G9 probes); False if the
        device is not connected."""
        tap = self._tap
        if tap is None or not self.connected:
            return False
        self._spawn(self._raw(tap, text))
        return True

    def send_frame(self, frame: dict[str, object]) -> bool:
        """Write a well-formed client frame past the SDK (forbidden-but-valid requests, such
        as a departed member's ``recv``); recorded like the SDK's own frames."""
        tap = self._tap
        if tap is None or not self.connected:
            return False
        self._spawn(self._write(tap, orjson.dumps(frame).decode()))
        return True

    async def _write(self, tap: _Tap, text: str) -> None:
        try:
            await tap.send_message(text)
        except (trio_websocket.ConnectionClosed, trio.BrokenResourceError):
            return

    def set_wanted(self, wanted: bool) -> None:
        self.wanted = wanted

    async def disconnect_clean(self) -> int:
        """Close the WebSocket with 1000 and keep the device away until :meth:`set_wanted`.

        Returns the number of this absence; :meth:`come_back` ends only the latest one, so a
        timer left over from an earlier absence cannot cut a later one short.
        """
        self.wanted = False
        self.absence += 1
        absence = self.absence
        tap = self._tap
        if tap is not None:
            with trio.move_on_after(_CLOSE_TIMEOUT_S):
                await tap.aclose(CloseCode.NORMAL, "bye")
        return absence

    def come_back(self, absence: int) -> None:
        """End absence number ``absence`` if no later one started."""
        if absence == self.absence:
            self.wanted = True

    # ------------------------------------------------------------------ running

    async def run(self) -> None:
        """Run the SDK client and record its events until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            async with self.client:
                await self._consume_events()

    def _spawn(self, work: Awaitable[None]) -> None:
        assert self._nursery is not None, "SimDevice.run has not started"

        async def run() -> None:
            await work

        self._nursery.start_soon(run)

    def _transport(self) -> AbstractAsyncContextManager[WebSocketLike]:
        return _Connection(self)

    async def _raw(self, tap: _Tap, text: str) -> None:
        try:
            self._record_garbage(text, tap._session)
            await tap._ws.send_message(text)
        except (trio_websocket.ConnectionClosed, trio.BrokenResourceError):
            return

    async def _history_request(self, conv: str, limit: int) -> None:
        asked_at = trio.current_time()
        try:
            page = await self.client.history(conv, limit=limit)
        except ClientError as exc:
            self._history.trace.add(self.name, f"history {conv} failed: {exc}")
            return
        self._record(
            h.HistorySeen(
                at=trio.current_time(),
                user=self.user,
                device=self.device,
                session=self.session_no,
                conv=conv,
                messages=tuple((m.seq, m.id) for m in page.messages),
                asked_at=asked_at,
            )
        )

    async def _group_request(self, what: str, call: Callable[[], Awaitable[Any]]) -> None:
        try:
            outcome = await call()
        except (ClientError, RemoteProtocolError) as exc:
            self._history.trace.add(self.name, f"{what} failed: {exc}")
            return
        self._history.trace.add(self.name, f"{what} done" + (f": {outcome}" if outcome else ""))

    # ------------------------------------------------------------------ recording

    def _record(self, event: h.Event) -> None:
        self._history.record(event)

    async def _consume_events(self) -> None:
        async for event in self.client.events():
            now = trio.current_time()
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
                        h.SessionOpened(
                            at=now,
                            user=self.user,
                            device=self.device,
                            session=self.session_no,
                            node=self.link.node if self.link is not None else "",
                        )
                    )
                case _:
                    pass

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

    def _record_in(self, text: str | bytes, number: int, sent_at: float, node: str) -> None:
        """Record one server message as seen on the wire (before the SDK handles it)."""
        now = trio.current_time()
        common: dict[str, Any] = {
            "at": now,
            "user": self.user,
            "device": self.device,
            "session": number,
        }
        if isinstance(text, bytes):
            self._record(h.ErrorSeen(**common, code="binary", message=f"{len(text)} bytes"))
            return
        try:
            frame = decode_server_frame(text)
        except RemoteProtocolError as exc:
            self._record(h.ErrorSeen(**common, code="client_decode", message=exc.message))
            return
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
                        node=node,
                    )
                )
            case TypingNotice():
                self._record(h.TypingSeen(**common, conv=frame.conv, of_user=frame.user))
            case Presence():
                self._record(
                    h.PresenceSeen(
                        **common,
                        of_user=frame.user,
                        status=frame.status,
                        last_seen=frame.last_seen,
                        sent_at=sent_at,
                        node=node,
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
