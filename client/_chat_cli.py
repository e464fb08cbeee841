"""``messenger chat``: a line-based terminal chat on the SDK (:class:`~client._chat.Chat`).

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
from collections.abc import Callable
from typing import Any

import trio

from protocol import is_valid_id

from ._chat import Chat
from ._errors import ClientError
from ._link import TokenProvider
from ._render import visible
from ._sdk import Client


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
