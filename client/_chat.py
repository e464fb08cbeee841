"""The terminal chat's state and behaviour (:class:`Chat`), apart from any terminal.

``messenger chat`` (``_chat_cli``) feeds it typed lines and the SDK's events; it prints
through one ``out`` callable, so a test can drive it without a terminal.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import trio

from protocol import (
    Acked,
    ConvRow,
    Msg,
    NewMessage,
    PresenceChanged,
    ReceiptUpdated,
    RequestFailed,
    SendFailed,
    ServerError,
    StateChanged,
    TypingStarted,
    is_valid_id,
)
from protocol import ClientState as State

from ._errors import ClientError
from ._link import ClientEvent, Reconnecting
from ._render import member_event_text, visible
from ._sdk import Client

HELP = """commands:
  /list                 conversations, with unread counts
  /open USER|CONV|TITLE open a conversation (a new 1:1 one is created by the first line)
  /group TITLE USER...  create a group with these users and open it
  /add USER             add USER to the open group
  /leave                leave the open group
  /more                 show older messages of the open conversation
  /who                  presence of the members of the open conversation
  /quit                 leave (or Ctrl-D)
anything else is sent to the open conversation.
marks: ✓ stored by the node, ✓✓ delivered to a device of the other member, ✓✓ read."""

_PAGE = 20
_TYPING_EVERY_S = 3.0


@attrs.define
class _Conv:
    conv: str
    kind: str
    title: str | None
    members: tuple[str, ...]
    last_seq: int = 0
    unread: int = 0
    marks: dict[str, tuple[int, int]] = attrs.Factory(dict)  # user -> (delivered, read)

    def name(self, me: str) -> str:
        if self.kind == "group":
            return self.title or self.conv
        others = [m for m in self.members if m != me]
        return others[0] if others else me


@attrs.define
class _Open:
    """The conversation on screen (``conv`` None: a 1:1 that the first send creates)."""

    label: str
    conv: str | None = None
    to: str | None = None
    oldest_shown: int | None = None
    newest_shown: int = 0


class Chat:
    """The chat's state and behaviour; ``out`` prints one line (UI-agnostic, testable).

    Every line goes through :func:`visible` on its way to ``out``: bodies, titles, ids and
    the node's error messages come from other people, and none of them may act on the
    terminal."""

    def __init__(self, client: Client, me: str, out: Callable[[str], None]) -> None:
        self.client = client
        self.me = me
        self._print = out
        self.convs: dict[str, _Conv] = {}
        self.open: _Open | None = None
        self.mine: dict[str, dict[int, str]] = {}  # conv -> seq -> body of my messages
        self.pending: dict[str, str] = {}  # cmid -> body
        self.presence: dict[str, str] = {}
        self.typing_shown: dict[tuple[str, str], float] = {}
        self.last_typing_sent = -_TYPING_EVERY_S
        self.was_synced = False
        self.nursery: trio.Nursery | None = None

    def out(self, line: str) -> None:
        self._print(visible(line))

    def prompt(self) -> str:
        return f"[{visible(self.open.label)}] > " if self.open else "> "

    # ------------------------------------------------------------------ input

    async def handle_line(self, line: str) -> bool:
        """Act on one input line; False means quit."""
        line = line.strip()
        if not line:
            return True
        if not line.startswith("/"):
            self.send(line)
            return True
        command, _, rest = line.partition(" ")
        args = rest.split()
        try:
            match command:
                case "/quit" | "/exit":
                    return False
                case "/help":
                    for help_line in HELP.splitlines():
                        self.out(help_line)
                case "/list":
                    await self.refresh()
                    self.show_list()
                case "/open" if len(args) == 1:
                    await self.open_conv(args[0])
                case "/group" if len(args) >= 2:
                    conv = await self.client.group_create(args[0], args[1:])
                    await self.refresh()
                    await self.open_conv(conv)
                case "/add" if len(args) == 1 and self.open and self.open.conv:
                    await self.client.group_add(self.open.conv, args[0])
                case "/leave" if self.open and self.open.conv:
                    await self.client.group_leave(self.open.conv)
                    self.open = None
                case "/more" if self.open and self.open.conv:
                    await self.show_history(self.open.conv, before=self.open.oldest_shown)
                case "/who" if self.open and self.open.conv:
                    self.show_who(self.convs[self.open.conv])
                case _:
                    self.out(f"? {line}  (try /help)")
        except ClientError as exc:
            self.out(f"! {exc}")
        return True

    def typed(self) -> None:
        """A key was pressed: tell the open conversation, at most every few seconds."""
        now = trio.current_time()
        conv = self.open.conv if self.open else None
        if conv and now - self.last_typing_sent >= _TYPING_EVERY_S:
            self.last_typing_sent = now
            self.client.typing(conv)

    def send(self, body: str) -> None:
        if self.open is None:
            self.out("! open a conversation first: /open USER")
            return
        if self.open.conv is not None:
            cmid = self.client.send_nowait(body, conv=self.open.conv)
        else:
            cmid = self.client.send_nowait(body, to=self.open.to)
        self.pending[cmid] = body
        self.last_typing_sent = -_TYPING_EVERY_S
        if self.client.state is not State.SYNCED:
            self.out(f"… queued until reconnected: {body}")

    async def open_conv(self, name: str) -> None:
        row = self.find(name)
        if row is None:
            await self.refresh()
            row = self.find(name)
        if row is None:
            if not is_valid_id(name) or name == self.me:
                self.out(f"! no conversation or user {name!r}")
                return
            self.open = _Open(label=name, to=name)
            self.out(f"* new conversation with {name}; your first line creates it")
            return
        self.open = _Open(label=row.name(self.me), conv=row.conv)
        if row.kind == "group":
            self.out(f"* group {row.name(self.me)}: {', '.join(row.members)}")
        else:
            self.out(f"* conversation with {row.name(self.me)}")
        await self.show_history(row.conv, before=None)

    def find(self, name: str) -> _Conv | None:
        for row in self.convs.values():
            if name in (row.conv, row.name(self.me)):
                return row
        return None

    # ------------------------------------------------------------------ server state

    async def refresh(self) -> None:
        """Reload the conversation list and follow the presence of everyone in it."""
        rows = await self.client.convs()
        for row in rows:
            self.learn(row)
        others = sorted({m for r in self.convs.values() for m in r.members} - {self.me})
        if others:
            self.client.presence_sub(others[:256])

    def learn(self, row: ConvRow) -> None:
        conv = self.convs.get(row.conv)
        if conv is None:
            conv = self.convs[row.conv] = _Conv(row.conv, row.kind, row.title, row.members)
        conv.members, conv.title = row.members, row.title
        conv.last_seq = max(conv.last_seq, row.last_seq)
        conv.unread = row.unread
        for mark in row.others:
            old = conv.marks.get(mark.user, (0, 0))
            conv.marks[mark.user] = (max(old[0], mark.delivered), max(old[1], mark.read))

    def show_list(self) -> None:
        if not self.convs:
            self.out("* no conversations yet; /open USER to start one")
        for row in self.convs.values():
            unread = f"  {row.unread} unread" if row.unread else ""
            self.out(f"  {row.name(self.me):<20} {row.kind:<6} {row.conv}{unread}")

    async def show_history(self, conv: str, *, before: int | None) -> None:
        page = await self.client.history(conv, before=before, limit=_PAGE)
        if self.open is None or self.open.conv != conv:
            return
        if not page.messages:
            self.out("* (no older messages)" if before else "* (no messages yet)")
        for msg in page.messages:
            self.show(msg)
        if page.messages:
            first, last = page.messages[0].seq, page.messages[-1].seq
            self.open.oldest_shown = first
            self.open.newest_shown = max(self.open.newest_shown, last)
            if page.more:
                self.out("* /more for older messages")
            self.read_up_to(conv, last)

    def read_up_to(self, conv: str, seq: int) -> None:
        self.client.mark_read(conv, seq)
        if conv in self.convs:
            self.convs[conv].unread = 0

    def show(self, msg: Msg) -> None:
        if msg.kind == "member":
            self.out(f"#{msg.seq} * {member_event_text(msg)}")
            return
        if msg.sender == self.me:
            self.mine.setdefault(msg.conv, {})[msg.seq] = msg.body
        self.out(f"#{msg.seq} {'you' if msg.sender == self.me else msg.sender}: {msg.body}")

    def show_who(self, row: _Conv) -> None:
        for user in row.members:
            if user != self.me:
                self.out(f"  {user}: {self.presence.get(user, 'unknown')}")

    # ------------------------------------------------------------------ events

    async def on_event(self, event: ClientEvent) -> None:
        match event:
            case NewMessage(message=msg):
                await self.on_message(msg)
            case Acked(cmid=cmid, ack=ack):
                body = self.pending.pop(cmid, "")
                self.mine.setdefault(ack.conv, {})[ack.seq] = body
                if self.open is not None and self.open.conv is None and ack.conv:
                    self.open.conv = ack.conv
                    self.nursery_soon(self.refresh)
                if self.open is not None and self.open.conv == ack.conv:
                    self.open.newest_shown = max(self.open.newest_shown, ack.seq)
                self.out(f"  ✓ #{ack.seq} sent: {body}")
            case SendFailed(cmid=cmid, nack=nack):
                body = self.pending.pop(cmid, "")
                self.out(f"! not sent ({nack.code.value}: {nack.message}): {body}")
            case ReceiptUpdated(receipt=receipt):
                self.on_receipt(receipt.conv, receipt.user, receipt.delivered, receipt.read)
            case PresenceChanged(presence=p):
                if self.presence.get(p.user) != p.status:
                    self.presence[p.user] = p.status
                    self.out(f"* {p.user} is {p.status}")
            case TypingStarted(notice=notice):
                self.on_typing(notice.conv, notice.user)
            case Reconnecting(delay_s=delay, close_code=code, reason=reason):
                why = f"closed {code} {reason}".strip() if code else reason or "no connection"
                self.out(f"* reconnecting… (in {delay:.1f} s; {why})")
            case StateChanged(state=State.SYNCED):
                first = not self.was_synced
                self.was_synced = True
                self.out("* connected" if first else "* reconnected")
                self.nursery_soon(self.after_sync, first)
            case ServerError(error=error):
                self.out(f"! node: {error.code.value}: {error.message}")
            case RequestFailed(error=error) if error is not None:
                self.out(f"! {error.code.value}: {error.message}")
            case _:
                pass

    async def after_sync(self, first: bool) -> None:
        try:
            await self.refresh()
        except ClientError as exc:
            self.out(f"! {exc}")
            return
        if first:
            self.show_list()

    async def on_message(self, msg: Msg) -> None:
        row = self.convs.get(msg.conv)
        if row is None:
            await self.refresh()
            row = self.convs.get(msg.conv)
        if row is not None:
            row.last_seq = max(row.last_seq, msg.seq)
        if self.open is not None and self.open.conv == msg.conv:
            if msg.seq > self.open.newest_shown:
                self.open.newest_shown = msg.seq
                self.show(msg)
                self.read_up_to(msg.conv, msg.seq)
            return
        if row is not None and msg.sender != self.me:
            row.unread += 1
        name = row.name(self.me) if row else msg.conv
        if msg.kind == "member":
            self.out(f"* {name}: {member_event_text(msg)}  (/open {name})")
            return
        where = f" in {name}" if row is None or row.kind == "group" else ""
        self.out(f"* new message{where} from {msg.sender}: {msg.body}  (/open {name})")

    def on_receipt(self, conv: str, user: str, delivered: int | None, read: int | None) -> None:
        row = self.convs.get(conv)
        if row is None or user == self.me:
            return
        old_delivered, old_read = row.marks.get(user, (0, 0))
        new_delivered = max(old_delivered, delivered or 0, read or 0)
        new_read = max(old_read, read or 0)
        row.marks[user] = (new_delivered, new_read)
        mine = self.mine.get(conv, {})
        for old, new, what in (
            (old_delivered, new_delivered, "delivered to"),
            (old_read, new_read, "read by"),
        ):
            covered = [seq for seq in mine if old < seq <= new]
            if covered:
                self.out(f"  ✓✓ #{max(covered)} {what} {user}")

    def on_typing(self, conv: str, user: str) -> None:
        if user == self.me or self.open is None or self.open.conv != conv:
            return
        now = trio.current_time()
        if now - self.typing_shown.get((conv, user), -10.0) >= 5.0:
            self.typing_shown[(conv, user)] = now
            self.out(f"* {user} is typing…")

    def nursery_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        if self.nursery is not None:
            self.nursery.start_soon(fn, *args)
