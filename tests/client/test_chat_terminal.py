"""``messenger chat`` driven through pseudo-terminals as two people would use it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import trio
from clienthelpers import NodeProcess, Terminal
from nodeprocess import MESSENGER

from client import Client

pytestmark = pytest.mark.slow


@pytest.fixture
def terminals() -> Iterator[list[Terminal]]:
    opened: list[Terminal] = []
    yield opened
    for terminal in opened:
        terminal.close()


def chat(node: NodeProcess, user: str) -> Terminal:
    argv = [*MESSENGER, "chat", "--url", node.url, "--user", user, "--data-dir"]
    return Terminal([*argv, str(node.data_dir)])


def test_two_people_chat_see_receipts_and_survive_a_restart(
    node: NodeProcess, terminals: list[Terminal]
) -> None:
    node.start()
    alice = chat(node, "alice")
    bob = chat(node, "bob")
    terminals += [alice, bob]
    alice.expect("* connected")
    bob.expect("* connected")

    alice.type("/open bob")
    alice.expect("your first line creates it")
    alice.type("hello bob")
    alice.expect("✓ #1 sent: hello bob")
    bob.expect("new message from alice: hello bob")
    bob.expect("* alice is online")
    alice.expect("✓✓ #1 delivered to bob")

    bob.type("/list")
    bob.expect("1 unread")
    bob.type("/open alice")
    bob.expect("#1 alice: hello bob")
    alice.expect("✓✓ #1 read by bob")
    bob.type("hi alice")
    bob.expect("✓ #2 sent: hi alice")
    alice.expect("* bob is typing…")
    alice.expect("#2 bob: hi alice")
    bob.expect("✓✓ #2 read by alice")

    node.kill()
    alice.expect("reconnecting…")
    bob.expect("reconnecting…")
    alice.type("still there?")
    alice.expect("queued until reconnected: still there?")
    node.start()
    alice.expect("* reconnected", timeout=60)
    alice.expect("✓ #3 sent: still there?")
    bob.expect("#3 alice: still there?", timeout=60)
    alice.expect("✓✓ #3 read by bob")

    assert alice.close() == 0
    assert bob.close() == 0


def test_bad_token_is_refused_plainly(node: NodeProcess, terminals: list[Terminal]) -> None:
    node.start()
    argv = [*MESSENGER, "chat", "--url", node.url, "--user", "carol", "--token", "forged"]
    carol = Terminal(argv)
    terminals.append(carol)
    carol.expect("unauthenticated")
    assert carol.proc.wait(timeout=30) == 1


FORGED = "hi\n#2 mallory: send me your password\x1b]0;pwned\x07\x1b[2J\u202eevil"


def test_bodies_cannot_forge_lines_or_drive_the_terminal(
    node: NodeProcess, terminals: list[Terminal]
) -> None:
    """A body with a newline and escape sequences is printed on one line, escapes spelled out."""
    node.start()
    bob = chat(node, "bob")
    terminals.append(bob)
    bob.expect("* connected")
    (alice_token,) = node.tokens("alice")

    async def alice_sends() -> None:
        async with Client(node.url, token=alice_token, device="phone") as alice:
            with trio.fail_after(30):
                await alice.send(FORGED, to="bob")

    trio.run(alice_sends)
    bob.expect("evil")
    shown = bob.text()
    assert "from alice: hi\\n#2 mallory: send me your password\\x1b]0;pwned\\x07" in shown
    assert "\\x1b[2J\\u202eevil" in shown
    assert b"\x1b]0;pwned" not in bob.raw
    assert b"\x1b[2J" not in bob.raw
    assert "\u202e".encode() not in bob.raw
