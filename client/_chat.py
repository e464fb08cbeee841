"""``messenger chat``: a line-based terminal chat on the SDK.

Why line-based on prompt_toolkit: a chat is a log of lines plus one line being typed, and
the only hard part of doing that in a plain terminal is printing incoming lines without
mangling what the user is typing. prompt_toolkit's ``patch_stdout`` solves exactly that
(the prompt is redrawn below each printed line), adds line editing and history, and
leaves the scrollback a normal terminal scrollback that can be searched, copied and
driven by a test through a pseudo-terminal. A full-screen UI (textual, curses) would hide
the output from the terminal's own scrollback and is much harder to test honestly.

The prompt runs in one worker thread (prompt_toolkit is asyncio-based); everything else,
the SDK included, runs in trio. Lines cross over through a memory channel; keystrokes
(for ``typing``) through the trio token.

Tokens: ``--token`` or ``--data-dir``. With ``--data-dir`` the chat runs
``messenger token USER --data-dir DIR`` as a child process: minting needs the node's
secret and its token format, both owned by ``actors``, and ``client`` must not import
``actors``; the subprocess keeps one authority for tokens and the dependency rule intact.
It does so again whenever the node closes the session because the token expired (the SDK's
``token_provider``), so a chat started with ``--data-dir`` outlives its tokens; one started
with ``--token`` ends when that token does.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import unicodedata
from collections.abc import Callable
from typing import Any

import attrs
import trio

from protocol import (
    Acked,
    ConvRow,
    MemberEvent,
    Msg,
    NewMessage,
    PresenceChanged,
    ReceiptUpdated,
    RemoteProtocolError,
    RequestFailed,
    SendFailed,
    ServerError,
    StateChanged,
    TypingStarted,
    is_valid_id,
)
from protocol import ClientState as State

from ._errors import ClientError
from ._sdk import Client, ClientEvent, Reconnecting, TokenProvider

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

#: Format characters that reorder or hide text (bidirectional overrides and isolates); other
#: format characters (the zero-width joiner of emoji sequences) are left alone.
_BIDI_CONTROLS = frozenset(
    [
        "\u061c",
        "\u200e",
        "\u200f",
        *map(chr, range(0x202A, 0x202F)),
        *map(chr, range(0x2066, 0x206A)),
    ]
)
_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def visible(text: str) -> str:
    """``text`` with every character a terminal would act on, rather than print, written out
    as an escape (``\\n``, ``\\x1b``, ``\\u202e``): one printed line stays one line, and a
    body cannot move the cursor, recolour, retitle the terminal or reorder what follows."""
    if text.isprintable():
        return text
    return "".join(_escape(char) for char in text)


def _escape(char: str) -> str:
    category = unicodedata.category(char)
    if category in ("Cc", "Zl", "Zp", "Cs") or char in _BIDI_CONTROLS:
        if char in _NAMED_ESCAPES:
            return _NAMED_ESCAPES[char]
        code = ord(char)
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
    return char


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
            self.out(f"#{msg.seq} * {_member_event(msg)}")
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
            self.out(f"* {name}: {_member_event(msg)}  (/open {name})")
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


def _member_event(msg: Msg) -> str:
    try:
        event = MemberEvent.parse(msg.body)
    except RemoteProtocolError:
        return f"{msg.sender}: {msg.body}"
    op, users = event.op, ", ".join(event.users)
    return {
        "create": f"{msg.sender} created the group with {users}",
        "add": f"{msg.sender} added {users}",
        "remove": f"{msg.sender} removed {users}",
        "leave": f"{msg.sender} left",
    }.get(op, f"{msg.sender}: {msg.body}")


# ---------------------------------------------------------------------------- entry point


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="messenger chat", description="Chat in a terminal.")
    parser.add_argument("--url", default="ws://127.0.0.1:8765/v1/ws", help="the node's URL")
    parser.add_argument("--user", required=True, help="your user id")
    parser.add_argument("--device", default=None, help="device id (default: term-USER)")
    auth = parser.add_mutually_exclusive_group(required=True)
    auth.add_argument("--token", help="an access token (see `messenger token`)")
    auth.add_argument("--data-dir", help="the node's data directory: mint a token with its secret")
    return parser


def mint_token(user: str, data_dir: str) -> str:
    """Run ``messenger token USER --data-dir DIR`` and return the token it prints."""
    command = [sys.executable, "-m", "messenger", "token", user, "--data-dir", data_dir]
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=60)
    if done.returncode != 0 or not done.stdout.strip():
        raise ClientError(f"messenger token failed: {done.stderr.strip() or done.returncode}")
    return done.stdout.split()[0]


def _minting(user: str, data_dir: str) -> TokenProvider:
    """A token provider that mints with :func:`mint_token` (in a thread: it waits on a child)."""

    async def provide() -> str:
        return await trio.to_thread.run_sync(mint_token, user, data_dir)

    return provide


def chat_main(argv: list[str]) -> int:
    """Entry point of ``messenger chat``; returns the exit status."""
    args = _parser().parse_args(argv)
    if not is_valid_id(args.user):
        print(f"messenger chat: invalid user id {args.user!r}", file=sys.stderr)
        return 2
    try:
        token = args.token or mint_token(args.user, args.data_dir)
    except ClientError as exc:
        print(f"messenger chat: {exc}", file=sys.stderr)
        return 1
    provider = None if args.token else _minting(args.user, args.data_dir)
    device = args.device or f"term-{args.user}"
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    return trio.run(_run, args.url, args.user, device, (token, provider), interactive)


_Auth = tuple[str, TokenProvider | None]


async def _run(url: str, user: str, device: str, auth: _Auth, interactive: bool) -> int:
    lines_send, lines_receive = trio.open_memory_channel[str | None](16)
    if interactive:
        from prompt_toolkit import PromptSession
        from prompt_toolkit.patch_stdout import patch_stdout

        token_for_keys = trio.lowlevel.current_trio_token()
        prompt_session: PromptSession[str] = PromptSession()
        with patch_stdout(raw=True):
            return await _session(
                url,
                user,
                device,
                auth,
                lines_send,
                lines_receive,
                reader=lambda chat: _read_prompt(prompt_session, chat, token_for_keys),
            )
    return await _session(
        url, user, device, auth, lines_send, lines_receive, reader=lambda chat: _read_stdin
    )


def _read_stdin() -> str | None:
    line = sys.stdin.readline()
    return line if line else None


def _read_prompt(
    prompt_session: Any, chat: Chat, trio_token: trio.lowlevel.TrioToken
) -> Callable[[], str | None]:
    def on_key(_buffer: object) -> None:
        trio_token.run_sync_soon(chat.typed)

    prompt_session.default_buffer.on_text_changed += on_key

    def read() -> str | None:
        try:
            line: str = prompt_session.prompt(chat.prompt)
        except (EOFError, KeyboardInterrupt):
            return None
        return line

    return read


async def _session(
    url: str,
    user: str,
    device: str,
    auth: _Auth,
    lines_send: trio.MemorySendChannel[str | None],
    lines_receive: trio.MemoryReceiveChannel[str | None],
    reader: Callable[[Chat], Callable[[], str | None]],
) -> int:
    def out(line: str) -> None:
        print(visible(line), flush=True)

    out(f"* connecting to {url} as {user} (device {device}); /help for commands")
    token, provider = auth
    client = Client(url, token=token, token_provider=provider, device=device)
    async with client, trio.open_nursery() as nursery:
        chat = Chat(client, user, lambda line: print(line, flush=True))
        chat.nursery = nursery
        read = reader(chat)

        async def pump_input() -> None:
            async with lines_send:
                while True:
                    line = await trio.to_thread.run_sync(read, abandon_on_cancel=True)
                    await lines_send.send(line)
                    if line is None:
                        return

        async def pump_events() -> None:
            async for event in client.events():
                await chat.on_event(event)
            if client.stopped is not None:
                out(f"! {client.stopped}")
            nursery.cancel_scope.cancel()

        nursery.start_soon(pump_input)
        nursery.start_soon(pump_events)
        async for line in lines_receive:
            if line is None or not await chat.handle_line(line):
                break
        nursery.cancel_scope.cancel()
    stopped = client.stopped
    if stopped is not None and stopped.code is not None:
        return 1
    return 0
