"""``messenger serve`` start-up errors are one line on stderr, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from actors._serve import _parser


def test_a_bad_mongo_uri_is_a_one_line_error(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "messenger", "serve", "--port", "0", "--mongo-uri", "nonsense://x"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={"MESSENGER_SECRET": "s" * 32, "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        "messenger serve: cannot use the store: invalid MongoDB URI: "
        "Invalid URI scheme: URI must begin with 'mongodb://' or 'mongodb+srv://'"
    ]


def test_admission_limits_are_flags() -> None:
    args = _parser().parse_args(
        ["--max-connections", "5", "--max-pending-hellos", "2", "--max-devices", "3"]
    )
    assert (args.max_connections, args.max_pending_hellos, args.max_devices) == (5, 2, 3)
    defaults = _parser().parse_args([])
    assert (defaults.max_connections, defaults.max_devices) == (20_000, 32)
    with pytest.raises(SystemExit):
        _parser().parse_args(["--max-devices", "0"])
