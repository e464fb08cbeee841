"""Tokens: mint/verify round trip, expiry, tampering, wrong secret, malformed input; secrets."""

from __future__ import annotations

import base64
import json
import os
import stat
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors._auth import (
    SECRET_FILE,
    InvalidToken,
    SecretError,
    TokenIssuer,
    load_or_create_secret,
    resolve_secret,
)

SECRET = b"k" * 32
NOW = 1_700_000_000.0
ISSUER = TokenIssuer(SECRET)

user_ids = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-",
    min_size=1,
    max_size=64,
)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _flip(text: str, index: int) -> str:
    """``text`` with one base64url character replaced by a different valid one."""
    old = text[index]
    new = "A" if old != "A" else "B"
    return text[:index] + new + text[index + 1 :]


@given(user=user_ids, ttl=st.integers(1, 10**9))
def test_round_trip(user: str, ttl: int) -> None:
    token = ISSUER.mint(user, ttl, NOW)
    assert token.startswith("v1.") and token.count(".") == 2
    assert ISSUER.verify(token, NOW).user == user
    assert ISSUER.verify(token, NOW + ttl - 1).user == user
    assert ISSUER.verify(token, NOW).expires_s == int(NOW) + ttl


def test_payload_format() -> None:
    token = ISSUER.mint("alice", 60, NOW + 0.9)
    payload = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert payload == {"u": "alice", "exp": int(NOW) + 60}


def test_expiry() -> None:
    token = ISSUER.mint("alice", 60, NOW)
    assert ISSUER.verify(token, NOW + 59.999).user == "alice"
    for later in (NOW + 60, NOW + 10**6):
        with pytest.raises(InvalidToken) as info:
            ISSUER.verify(token, later)
        assert info.value.reason == "token expired"


@pytest.mark.parametrize("part", [1, 2])
def test_tampering_with_payload_or_mac_is_detected(part: int) -> None:
    token = ISSUER.mint("alice", 60, NOW)
    pieces = token.split(".")
    for index in range(len(pieces[part])):
        tampered_piece = _flip(pieces[part], index)
        tampered = ".".join([*pieces[:part], tampered_piece, *pieces[part + 1 :]])
        with pytest.raises(InvalidToken) as info:
            ISSUER.verify(tampered, NOW)
        assert info.value.reason in {
            "bad signature",
            "malformed token: signature is not base64url",
        }


def test_forged_payload_for_another_user_is_rejected() -> None:
    _, _, mac = ISSUER.mint("alice", 60, NOW).split(".")
    forged_payload = _b64(json.dumps({"u": "mallory", "exp": int(NOW) + 60}).encode())
    with pytest.raises(InvalidToken, match="bad signature"):
        ISSUER.verify(f"v1.{forged_payload}.{mac}", NOW)


def test_wrong_secret() -> None:
    token = TokenIssuer(b"x" * 32).mint("alice", 60, NOW)
    with pytest.raises(InvalidToken, match="bad signature"):
        ISSUER.verify(token, NOW)


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("", "malformed token: expected three dot-separated parts"),
        ("v1.abc", "malformed token: expected three dot-separated parts"),
        ("v1.a.b.c", "malformed token: expected three dot-separated parts"),
        ("v2.abc.def", "unsupported token version 'v2'"),
        ("v1.abc.!!!", "malformed token: signature is not base64url"),
        ("v1.abc.AAAA=", "malformed token: signature is not base64url"),
        ("v1.ünï.cödé", "malformed token"),
        ("v1." + "A" * 2000 + ".AA", "malformed token"),
    ],
)
def test_malformed_tokens(token: str, reason: str) -> None:
    with pytest.raises(InvalidToken) as info:
        ISSUER.verify(token, NOW)
    assert info.value.reason == reason


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        (b"not json", "malformed token: payload is not base64url JSON"),
        (b"[1, 2]", "malformed token: payload is not an object"),
        (b'{"u": "bad id!", "exp": 9999999999}', "malformed token: invalid user id"),
        (b'{"exp": 9999999999}', "malformed token: invalid user id"),
        (b'{"u": "alice", "exp": "soon"}', "malformed token: invalid expiry"),
        (b'{"u": "alice", "exp": true}', "malformed token: invalid expiry"),
    ],
)
def test_signed_but_malformed_payloads(claims: bytes, reason: str) -> None:
    # Correctly signed, so only the payload checks can refuse them.
    signing_input = f"v1.{_b64(claims)}"
    token = f"{signing_input}.{_b64(ISSUER._mac(signing_input))}"
    with pytest.raises(InvalidToken) as info:
        ISSUER.verify(token, NOW)
    assert info.value.reason == reason


@given(st.text())
def test_arbitrary_text_only_ever_raises_invalid_token(text: str) -> None:
    with pytest.raises(InvalidToken):
        ISSUER.verify(text, NOW)


@given(st.lists(st.sampled_from(["v1", "v2", "", "AAAA", "_-", "=", "e30", "."]), max_size=6))
def test_near_miss_tokens_only_ever_raise_invalid_token(pieces: list[str]) -> None:
    with pytest.raises(InvalidToken):
        ISSUER.verify(".".join(pieces), NOW)


def test_mint_rejects_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="invalid user id"):
        ISSUER.mint("no spaces", 60, NOW)
    with pytest.raises(ValueError, match="invalid user id"):
        ISSUER.mint("x" * 65, 60, NOW)
    with pytest.raises(ValueError, match="ttl_s"):
        ISSUER.mint("alice", 0, NOW)
    with pytest.raises(ValueError, match="at least 16 bytes"):
        TokenIssuer(b"short")


def test_secret_is_created_once_with_private_mode(tmp_path: Path) -> None:
    data_dir = tmp_path / "nested" / "data"
    secret = load_or_create_secret(data_dir)
    path = data_dir / SECRET_FILE
    assert len(secret) == 32
    assert path.read_bytes() == secret
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_secret(data_dir) == secret
    assert sorted(p.name for p in data_dir.iterdir()) == [SECRET_FILE]  # no temp file left


def test_an_existing_secret_is_never_overwritten(tmp_path: Path) -> None:
    (tmp_path / SECRET_FILE).write_bytes(b"s" * 40)
    assert load_or_create_secret(tmp_path) == b"s" * 40


def test_unreadable_or_short_secret_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / SECRET_FILE).write_bytes(b"tiny")
    with pytest.raises(SecretError, match=r"secret\.key: the secret is 4 bytes"):
        load_or_create_secret(tmp_path)

    (tmp_path / SECRET_FILE).unlink()
    (tmp_path / SECRET_FILE).mkdir()  # a directory where the key should be
    with pytest.raises(SecretError, match="cannot read the secret"):
        load_or_create_secret(tmp_path)


NOBODY = 65534


def run_unprivileged(check: Callable[[], None]) -> None:
    """Run ``check`` without root's power to ignore file permissions.

    As root (CI containers) it runs in a forked child that first drops to uid/gid ``nobody``;
    the child reports through its exit status and never returns into pytest.
    """
    if os.geteuid() != 0:
        check()
        return
    pid = os.fork()
    if pid == 0:  # the child
        status = 1
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            check()
            status = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(status)
    _, wait_status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(wait_status) == 0, "the unprivileged check failed"


def test_unwritable_data_dir_is_a_clear_error() -> None:
    with tempfile.TemporaryDirectory() as top:
        os.chmod(top, 0o755)  # traversable by the unprivileged child
        locked = Path(top) / "locked"
        locked.mkdir(mode=0o555)

        def check() -> None:
            with pytest.raises(SecretError, match="cannot create the secret"):
                load_or_create_secret(locked)

        run_unprivileged(check)
        assert not any(locked.iterdir())


def test_resolve_secret_prefers_flag_then_env_then_file(tmp_path: Path) -> None:
    env = {"MESSENGER_SECRET": "e" * 20}
    assert resolve_secret(tmp_path, secret="f" * 20, environ=env) == b"f" * 20
    assert resolve_secret(tmp_path, environ=env) == b"e" * 20
    assert not (tmp_path / SECRET_FILE).exists()
    from_file = resolve_secret(tmp_path, environ={})
    assert from_file == (tmp_path / SECRET_FILE).read_bytes()
    assert resolve_secret(tmp_path, "OTHER", environ={"OTHER": "o" * 16}) == b"o" * 16
    with pytest.raises(SecretError, match=r"\$MESSENGER_SECRET"):
        resolve_secret(tmp_path, environ={"MESSENGER_SECRET": "short"})
