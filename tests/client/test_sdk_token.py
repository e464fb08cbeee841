"""Tokens expire: the SDK gets a fresh one from its ``token_provider`` and reconnects."""

from __future__ import annotations

import time

import pytest
import trio
import trio_websocket
from clienthelpers import EventLog, NodeProcess, fake_node

from actors import TokenIssuer, resolve_secret
from client import Client, ClientClosed
from protocol import (
    ClientState,
    Error,
    ErrorCode,
    NewMessage,
    StateChanged,
    Synced,
    Welcome,
    encode,
)


class Tokens:
    """A token provider handing out ``prefix1``, ``prefix2``, ... and counting calls."""

    def __init__(self, prefix: str = "fresh") -> None:
        self.prefix = prefix
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        return f"{self.prefix}{self.calls}"


async def test_expiry_after_welcome_reconnects_with_a_fresh_token(nursery: trio.Nursery) -> None:
    """The node ends the session at the token's expiry (error + 4401); the client carries on."""
    hellos: list[str] = []

    async def session(ws: trio_websocket.WebSocketConnection, hello: dict[str, object]) -> None:
        token, device = str(hello["token"]), str(hello["device"])
        hellos.append(token)
        await ws.send_message(
            encode(Welcome(user="bob", device=device, session=token, heartbeat_s=30))
        )
        await ws.send_message(encode(Synced()))
        if token == "old":
            expired = Error(code=ErrorCode.UNAUTHENTICATED, message="token expired")
            await ws.send_message(encode(expired))
            await ws.aclose(4401, "token expired")
            return
        while True:
            await ws.get_message()

    url = await fake_node(nursery, session)
    provider = Tokens()
    async with Client(url, token="old", token_provider=provider, device="d") as bob:
        log = EventLog.following(nursery, bob)
        with trio.fail_after(10):
            await log.wait_until(lambda: len(log.of(StateChanged)) >= 6)
            synced = [e for e in log.of(StateChanged) if e.state is ClientState.SYNCED]
            await log.wait_until(
                lambda: len([e for e in log.of(StateChanged) if e.state is ClientState.SYNCED]) == 2
            )
        assert bob.stopped is None
        assert hellos == ["old", "fresh1"] and provider.calls == 1
        assert synced


async def test_without_a_provider_an_expired_session_ends(nursery: trio.Nursery) -> None:
    async def session(ws: trio_websocket.WebSocketConnection, hello: dict[str, object]) -> None:
        await ws.aclose(4401, "token expired")

    url = await fake_node(nursery, session)
    async with Client(url, token="old", device="d") as bob:
        with trio.fail_after(10), pytest.raises(ClientClosed) as closed:
            await bob.wait_synced()
    assert closed.value.code == 4401


async def test_a_provider_whose_token_is_refused_at_once_does_not_loop(
    nursery: trio.Nursery,
) -> None:
    hellos: list[str] = []

    async def session(ws: trio_websocket.WebSocketConnection, hello: dict[str, object]) -> None:
        hellos.append(str(hello["token"]))
        await ws.send_message(
            encode(Error(code=ErrorCode.UNAUTHENTICATED, message="bad signature"))
        )
        await ws.aclose(4401, "bad signature")

    url = await fake_node(nursery, session)
    provider = Tokens()
    async with Client(url, token="old", token_provider=provider, device="d") as bob:
        with trio.fail_after(10), pytest.raises(ClientClosed) as closed:
            await bob.wait_synced()
    assert closed.value.code == 4401
    assert hellos == ["old", "fresh1"] and provider.calls == 1


async def test_a_provider_that_fails_stops_the_client(nursery: trio.Nursery) -> None:
    async def session(ws: trio_websocket.WebSocketConnection, hello: dict[str, object]) -> None:
        await ws.aclose(4401, "token expired")

    async def broken() -> str:
        raise OSError("the token service is down")

    url = await fake_node(nursery, session)
    async with Client(url, token="old", token_provider=broken, device="d") as bob:
        with trio.fail_after(10), pytest.raises(ClientClosed) as closed:
            await bob.wait_synced()
    assert closed.value.code == 4401
    assert "the token service is down" in str(closed.value)


@pytest.mark.slow
async def test_an_expired_token_is_replaced_against_a_real_node(
    node: NodeProcess, nursery: trio.Nursery
) -> None:
    """A real node refuses the expired token (4401); the provider's token gets in."""
    await trio.to_thread.run_sync(node.start)
    issuer = TokenIssuer(resolve_secret(node.data_dir))
    expired = issuer.mint("bob", 60, time.time() - 3600)
    alice_token, bob_token = node.tokens("alice", "bob")

    async def provide() -> str:
        return bob_token

    async with (
        Client(node.url, token=alice_token, device="a") as alice,
        Client(node.url, token=expired, token_provider=provide, device="b") as bob,
    ):
        log = EventLog.following(nursery, bob)
        with trio.fail_after(30):
            await bob.wait_synced()
            ack = await alice.send("hi", to="bob")
            got = await log.wait_for(NewMessage)
    assert (got.message.conv, got.message.body) == (ack.conv, "hi")
    assert bob.session.welcome is not None and bob.session.welcome.user == "bob"
