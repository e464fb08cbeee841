"""The web client end to end: real Chromium pages as alice, bob and carol against a real
``messenger serve`` process on its embedded store.

Every wait is Playwright's auto-waiting ``expect`` (bounded, see conftest); nothing sleeps.
Elements are found the way a person (or a screen reader) finds them: by their labels and
roles — the "Token" textbox, the "Conversations" list, the "Messages" log, the "Message"
textbox, the "Connection" status.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable
from typing import Any

import pytest
import trio
from clienthelpers import NodeProcess
from webhelpers import Browsers

from client import Client
from protocol import ReceiptUpdated

pytestmark = pytest.mark.slow
expect = pytest.importorskip(
    "playwright.sync_api", reason="Playwright for Python is not installed (the dev extra)"
).expect

Users = Callable[..., list[str]]


def connection(page: Any) -> Any:
    return page.get_by_role("status", name="Connection")


def conversations(page: Any) -> Any:
    return page.get_by_role("list", name="Conversations")


def messages(page: Any) -> Any:
    return page.get_by_role("log", name="Messages")


def row(page: Any, name: str) -> Any:
    return conversations(page).get_by_role("listitem").filter(has_text=name)


def send(page: Any, text: str) -> None:
    box = page.get_by_role("textbox", name="Message")
    box.fill(text)
    box.press("Enter")


def new_chat(page: Any, user: str) -> None:
    page.get_by_role("textbox", name="User id").fill(user)
    page.get_by_role("button", name="New chat").click()


def mark_of(page: Any, body: str) -> Any:
    return messages(page).locator(".msg.mine").filter(has_text=body).locator(".mark")


def test_chat_marks_typing_unread_and_presence(browsers: Browsers, users: Users) -> None:
    alice_id, bob_id, zed_id = users("alice", "bob", "zed")
    alice_token, bob_token = browsers.node.tokens(alice_id, bob_id)
    alice = browsers.page(alice_token)
    expect(connection(alice)).to_have_text("connected")
    assert alice.evaluate("location.hash") == ""  # the token left the address bar at once

    # Bob has no device connected: stored (✓), not delivered.
    new_chat(alice, bob_id)
    send(alice, "hello bob")
    expect(mark_of(alice, "hello bob")).to_have_text("✓")
    send(alice, "are you there?")
    expect(mark_of(alice, "are you there?")).to_have_text("✓")
    expect(row(alice, bob_id)).to_contain_text("are you there?")

    # Bob connects: both are delivered (✓✓); his list shows two unread, newest text last.
    bob = browsers.page(bob_token)
    expect(connection(bob)).to_have_text("connected")
    expect(row(bob, alice_id).locator(".unread")).to_have_text("2")
    expect(row(bob, alice_id)).to_contain_text("are you there?")
    expect(mark_of(alice, "hello bob")).to_have_text("✓✓")
    expect(mark_of(alice, "are you there?")).to_have_text("✓✓")
    browsers.screenshot(bob, "conversations-unread")

    # Bob opens the conversation: read, and the unread count goes.
    row(bob, alice_id).click()
    expect(messages(bob)).to_contain_text("hello bob")
    expect(mark_of(alice, "are you there?")).to_have_text("read")
    expect(mark_of(alice, "hello bob")).to_have_text("read")
    expect(row(bob, alice_id).locator(".unread")).to_have_text("")

    # Typing, then the reply, which clears it.
    expect(alice.locator("#presence")).to_have_text("online")
    bob.get_by_role("textbox", name="Message").press_sequentially("ye")
    expect(alice.get_by_text(f"{bob_id} is typing…")).to_be_visible()
    browsers.screenshot(alice, "typing")
    send(bob, "yes, here")
    expect(messages(alice)).to_contain_text("yes, here")
    expect(alice.get_by_text(f"{bob_id} is typing…")).to_have_count(0)
    expect(mark_of(bob, "yes, here")).to_have_text("read")  # alice has it on screen
    browsers.screenshot(alice, "conversation")

    # The list is newest first: a second chat moves above, a new message moves bob back up.
    new_chat(alice, zed_id)
    send(alice, "anyone?")
    expect(conversations(alice).get_by_role("listitem").first).to_contain_text("anyone?")
    send(bob, "still here")
    expect(conversations(alice).get_by_role("listitem").first).to_contain_text("still here")
    expect(row(alice, bob_id).locator(".unread")).to_have_text("1")

    # Bob goes away: after the presence grace alice sees "last seen …".
    row(alice, bob_id).click()
    bob.context.close()
    expect(alice.locator("#presence")).to_contain_text("last seen", timeout=30_000)


def test_group_with_three_members(browsers: Browsers, users: Users) -> None:
    alice_id, bob_id, carol_id, dave_id = users("alice", "bob", "carol", "dave")
    tokens = browsers.node.tokens(alice_id, bob_id, carol_id)
    alice, bob, carol = (browsers.page(token) for token in tokens)
    for page in (alice, bob, carol):
        expect(connection(page)).to_have_text("connected")

    alice.get_by_role("textbox", name="Group title").fill("Trip")
    alice.get_by_role("textbox", name="Members").fill(f"{bob_id} {carol_id}")
    alice.get_by_role("button", name="New group").click()
    expect(messages(alice)).to_contain_text(f"{alice_id} created the group with")
    send(alice, "where to?")
    for page in (bob, carol):
        expect(row(page, "Trip").locator(".unread")).to_have_text("1")
        row(page, "Trip").click()
        expect(messages(page)).to_contain_text("where to?")
    send(carol, "the sea")
    for page in (alice, bob):
        expect(messages(page).locator(".msg").filter(has_text="the sea")).to_contain_text(carol_id)
    expect(mark_of(alice, "where to?")).to_have_text("read")
    browsers.screenshot(bob, "group")

    member = alice.get_by_role("textbox", name="Member", exact=True)
    member.fill(dave_id)
    alice.get_by_role("button", name="Add").click()
    expect(messages(bob)).to_contain_text(f"{alice_id} added {dave_id}")
    member.fill(dave_id)
    alice.get_by_role("button", name="Remove").click()
    expect(messages(carol)).to_contain_text(f"{alice_id} removed {dave_id}")
    bob.get_by_role("button", name="Leave group").click()
    expect(messages(alice)).to_contain_text(f"{bob_id} left")
    expect(messages(carol)).to_contain_text(f"{bob_id} left")


async def _seed(url: str, token: str, to: str, count: int) -> None:
    """Send ``#1``..``#count`` to ``to`` with the Python SDK; return once a device of ``to``
    has received them all (its ``recv`` watermark is stored with the node)."""
    async with Client(url, token=token, device="seeder") as sender:
        await sender.wait_synced()
        for i in range(1, count + 1):
            await sender.send(f"#{i}", to=to)
        async for event in sender.events():
            if isinstance(event, ReceiptUpdated) and (event.receipt.delivered or 0) >= count:
                return


def test_history_loads_on_scroll(browsers: Browsers, users: Users) -> None:
    alice_id, bob_id = users("alice", "bob")
    alice_token, bob_token = browsers.node.tokens(alice_id, bob_id)
    bob = browsers.page(bob_token)
    expect(connection(bob)).to_have_text("connected")
    trio.run(_seed, browsers.node.url, alice_token, bob_id, 120)
    # The same browser again (its device has everything): nothing is pushed, the
    # conversation starts with its newest page and older ones come on scrolling up.
    bob.reload()
    row(bob, alice_id).click()
    log = messages(bob)
    expect(log.locator(".msg").last).to_have_text("#120")
    expect(log.locator(".msg")).to_have_count(50)
    while log.get_by_text("#1", exact=True).count() == 0:  # scroll up until the start
        shown = log.locator(".msg").count()
        log.evaluate("box => { box.scrollTop = 0; }")
        expect(log.locator(".msg")).not_to_have_count(shown)
    expect(log.locator(".msg")).to_have_count(120)
    expect(log.locator(".msg").first).to_have_text("#1")
    browsers.screenshot(bob, "history")


def test_bodies_are_shown_as_text(browsers: Browsers, users: Users) -> None:
    alice_id, bob_id = users("alice", "bob")
    alice_token, bob_token = browsers.node.tokens(alice_id, bob_id)
    alice, bob = browsers.page(alice_token), browsers.page(bob_token)
    expect(connection(bob)).to_have_text("connected")
    hostile = "<img src=x onerror=alert(1)>"
    new_chat(alice, bob_id)
    send(alice, hostile)
    row(bob, alice_id).click()
    expect(messages(bob).locator(".body")).to_have_text(hostile)
    expect(row(bob, alice_id)).to_contain_text(hostile)
    expect(bob.locator("img")).to_have_count(0)
    assert browsers.dialogs == []  # no alert ran (checked again at teardown)


def test_notification_while_the_tab_is_hidden(browsers: Browsers, users: Users) -> None:
    alice_id, bob_id = users("alice", "bob")
    alice_token, bob_token = browsers.node.tokens(alice_id, bob_id)
    # Alice's tab is in the background, and she allowed notifications.
    hidden = """
        Object.defineProperty(document, "visibilityState", { get: () => "hidden" });
        Object.defineProperty(document, "hidden", { get: () => true });
        window.shown = [];
        window.Notification = class {
            static permission = "granted";
            constructor(title, options) { window.shown.push([title, options.body]); }
        };
    """
    alice = browsers.page(alice_token, init_script=hidden)
    bob = browsers.page(bob_token)
    expect(connection(alice)).to_have_text("connected")
    new_chat(bob, alice_id)
    send(bob, "psst")
    expect(row(alice, bob_id)).to_contain_text("psst")
    assert alice.evaluate("window.shown") == [[bob_id, "psst"]]
    row(alice, bob_id).click()
    expect(messages(alice)).to_contain_text("psst")
    # On screen but hidden: not read.
    expect(mark_of(bob, "psst")).to_have_text("✓✓")


def test_sign_in_form_and_device_id(browsers: Browsers, users: Users) -> None:
    [carol_id] = users("carol")
    [token] = browsers.node.tokens(carol_id)
    page = browsers.blank()
    page.goto(f"http://127.0.0.1:{browsers.node.port}/")
    browsers.screenshot(page, "sign-in")
    page.get_by_role("textbox", name="Token").fill("not-a-token")
    page.get_by_role("button", name="Connect").click()
    expect(page.get_by_role("alert").first).to_contain_text("Token refused")
    page.get_by_role("textbox", name="Token").fill(token)
    page.get_by_role("button", name="Connect").click()
    expect(connection(page)).to_have_text("connected")
    device = page.evaluate("localStorage.getItem('messenger.device')")
    assert device.startswith("web-")
    page.reload()
    expect(connection(page)).to_have_text("connected")
    assert page.evaluate("localStorage.getItem('messenger.device')") == device


def test_upgrade_from_a_foreign_origin_is_refused(browsers: Browsers) -> None:
    port = browsers.node.port
    probe = """url => new Promise(done => {
        const ws = new WebSocket(url);
        ws.onopen = () => { ws.close(); done("open"); };
        ws.onclose = event => done(`closed ${event.code}`);
    })"""
    page = browsers.blank()
    page.route(
        "http://foreign.test/",
        lambda route: route.fulfill(status=200, content_type="text/html", body="<p>foreign</p>"),
    )
    page.goto("http://foreign.test/")
    assert page.evaluate(probe, f"ws://127.0.0.1:{port}/v1/ws") == "closed 1006"
    own = browsers.blank()
    own.goto(f"http://127.0.0.1:{port}/")
    assert own.evaluate(probe, f"ws://127.0.0.1:{port}/v1/ws") == "open"
    # What the browser met: 403 for the foreign origin (and a handshake for our own).
    for origin, status in (("http://foreign.test", 403), (f"http://127.0.0.1:{port}", 101)):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/v1/ws", headers=_upgrade_headers(origin))
        assert conn.getresponse().status == status
        conn.close()


def _upgrade_headers(origin: str) -> dict[str, str]:
    return {
        "Origin": origin,
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    }


def _group_row(i: int, unread: int = 0) -> dict[str, Any]:
    return {
        "conv": f"g:{i}",
        "kind": "group",
        "title": f"Group {i}",
        "members": ["me", "x"],
        "last_seq": 0,
        "delivered": 0,
        "read": 0,
        "unread": unread,
        "others": [],
    }


def _fake_node(pages: dict[str | None, dict[str, Any]], seen: list[dict[str, Any]]) -> Any:
    """A WebSocket handler that plays a node answering ``convs`` from ``pages`` (by cursor)."""

    def handler(ws: Any) -> None:
        def on_message(text: str | bytes) -> None:
            frame = json.loads(text)
            seen.append(frame)
            if frame["type"] == "hello":
                welcome = {"user": "me", "device": frame["device"], "session": "s", "node": "f"}
                ws.send(json.dumps({"type": "welcome", "heartbeat_s": 30, **welcome}))
                ws.send(json.dumps({"type": "synced"}))
            elif frame["type"] == "convs":
                page = pages[frame.get("cursor")]
                ws.send(json.dumps({"type": "result", "rid": frame["rid"], **page}))

        ws.on_message(on_message)

    return handler


@pytest.mark.parametrize("paged", [True, False], ids=["with-cursor", "without-cursor"])
def test_conversation_list_is_paged_with_the_cursor(browsers: Browsers, paged: bool) -> None:
    first: dict[str, Any] = {"convs": [_group_row(1, unread=2), _group_row(2)], "more": True}
    if paged:
        first["cursor"] = "page-2"
    pages = {None: first, "page-2": {"convs": [_group_row(3)], "more": False}}
    seen: list[dict[str, Any]] = []
    page = browsers.blank()
    page.route_web_socket("**/v1/ws", _fake_node(pages, seen))
    page.goto(f"http://127.0.0.1:{browsers.node.port}/#token=fake")
    items = conversations(page).get_by_role("listitem")
    expect(items).to_have_count(2)
    expect(items.first).to_contain_text("Group 1")
    expect(items.first.locator(".unread")).to_have_text("2")
    more = page.get_by_role("button", name="More conversations")
    if paged:
        more.click()
        expect(items).to_have_count(3)
        expect(items.last).to_contain_text("Group 3")
        expect(more).to_be_hidden()
    else:  # a node without v1.1's cursor: the first page is all there is
        expect(more).to_be_hidden()
    convs = [f for f in seen if f["type"] == "convs"]
    assert "limit" not in convs[0] and "cursor" not in convs[0]
    assert [f.get("cursor") for f in convs] == ([None, "page-2"] if paged else [None])


def test_node_killed_and_restarted_while_alice_types(
    browser: Any, own_node: NodeProcess, users: Users
) -> None:
    alice_id, bob_id = users("alice", "bob")
    alice_token, bob_token = own_node.tokens(alice_id, bob_id)
    browsers = Browsers(browser, own_node)
    try:
        alice, bob = browsers.page(alice_token), browsers.page(bob_token)
        new_chat(alice, bob_id)
        send(alice, "before the crash")
        row(bob, alice_id).click()
        expect(mark_of(alice, "before the crash")).to_have_text("read")

        own_node.kill()
        expect(connection(alice)).to_have_text("reconnecting…")
        expect(connection(bob)).to_have_text("reconnecting…")
        send(alice, "typed while down")
        expect(mark_of(alice, "typed while down")).to_have_text("…")
        browsers.screenshot(alice, "reconnecting")

        own_node.start()  # same data directory, same port
        expect(connection(alice)).to_have_text("connected")
        expect(mark_of(alice, "typed while down")).to_have_text("read")
        for page in (alice, bob):
            expect(messages(page).get_by_text("typed while down", exact=True)).to_have_count(1)
            expect(messages(page).get_by_text("before the crash", exact=True)).to_have_count(1)
        assert browsers.errors == [] and browsers.dialogs == []
    finally:
        browsers.close()
