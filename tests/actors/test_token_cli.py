"""``messenger token``: one token per user, in order, verifiable with the data dir's secret."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from actors._auth import InvalidToken, TokenIssuer, load_or_create_secret
from actors._token_cli import DEFAULT_TTL_S, token_main


@pytest.fixture(autouse=True)
def _no_env_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MESSENGER_SECRET", raising=False)


def test_prints_one_token_per_user_in_order(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    users = [f"user{i}" for i in range(2000)] + ["alice", "user0"]
    assert token_main([*users, "--data-dir", str(tmp_path / "data")]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    lines = out.splitlines()
    assert len(lines) == len(users)
    issuer = TokenIssuer(load_or_create_secret(tmp_path / "data"))
    now = time.time()
    assert [issuer.verify(token, now).user for token in lines] == users
    # Default TTL is 30 days.
    assert issuer.verify(lines[0], now + DEFAULT_TTL_S - 60).user == "user0"
    with pytest.raises(InvalidToken, match="expired"):
        issuer.verify(lines[0], now + DEFAULT_TTL_S + 60)


def test_ttl_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert token_main(["bob", "--ttl", "10", "--data-dir", str(tmp_path)]) == 0
    token = capsys.readouterr().out.strip()
    issuer = TokenIssuer(load_or_create_secret(tmp_path))
    now = time.time()
    assert issuer.verify(token, now).user == "bob"
    with pytest.raises(InvalidToken, match="expired"):
        issuer.verify(token, now + 11)


def test_env_secret_wins_over_the_data_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MESSENGER_SECRET", "z" * 32)
    assert token_main(["carol", "--data-dir", str(tmp_path)]) == 0
    token = capsys.readouterr().out.strip()
    assert TokenIssuer(b"z" * 32).verify(token, time.time()).user == "carol"
    assert not (tmp_path / "secret.key").exists()


def test_invalid_user_id_is_refused_with_a_clear_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert token_main(["alice", "bad user", "x" * 65, "--data-dir", str(tmp_path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "invalid user id 'bad user', 'xxx" in err
    assert "[A-Za-z0-9_.-]" in err


@pytest.mark.parametrize("argv", [[], ["alice", "--ttl", "0"], ["alice", "--ttl", "soon"]])
def test_usage_errors_exit_2(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        token_main([*argv, "--data-dir", str(tmp_path)])
    assert info.value.code == 2
    assert capsys.readouterr().out == ""


def test_unusable_secret_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "secret.key").write_bytes(b"short")
    assert token_main(["alice", "--data-dir", str(tmp_path)]) == 1
    assert "secret.key" in capsys.readouterr().err


def test_thousands_of_tokens_from_one_process_start(tmp_path: Path) -> None:
    users = [f"load-{i}" for i in range(5000)]
    code = (
        "import sys; from actors._token_cli import token_main; sys.exit(token_main(sys.argv[1:]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, *users, "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    lines = result.stdout.splitlines()
    issuer = TokenIssuer(load_or_create_secret(tmp_path))
    assert [issuer.verify(token, time.time()).user for token in lines] == users
