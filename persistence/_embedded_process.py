"""The embedded server as an operating-system process: finding ``secantusd-py``, spawning
it so that it dies with the node, stopping it, and reaping one an earlier node left behind.

SecantusDB is GPL-2.0: it is only ever run as this separate process, never imported.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

EXECUTABLE = "secantusd-py"
#: Linux prctl option: signal to deliver to this process when its parent dies.
_PR_SET_PDEATHSIG = 1
#: How long a stale server from an earlier run gets to exit after SIGTERM before SIGKILL.
STALE_TERM_WAIT_S = 10.0


class EmbeddedServerError(RuntimeError):
    """The embedded database could not be started (directory locked or unusable, crash, ...)."""


def find_executable() -> str:
    """``secantusd-py`` next to the running interpreter (the venv), else on PATH."""
    beside = Path(sys.executable).parent / EXECUTABLE
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(EXECUTABLE)
    if found is None:
        raise EmbeddedServerError(
            f"{EXECUTABLE} not found next to {sys.executable} nor on PATH; "
            "install it with `pip install secantusdb` or pass --mongo-uri"
        )
    return found


def _find_prctl() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


#: Looked up in the parent: the forked child must not dlopen (another thread may hold locks).
_PRCTL = _find_prctl()


def _die_with_parent() -> None:
    """``preexec_fn``: ask Linux to SIGKILL the child when its parent dies (no-op elsewhere).

    SIGKILL, not SIGTERM: the node is already gone without a clean stop, every acknowledged
    write is on disk (sync-on-commit) and WiredTiger recovers at the next start, while a
    SIGTERM arriving mid-start-up or under load was seen to leave the server (and its lock)
    running. Runs in the forked child before exec. The "parent" is the *thread* that forked,
    which is why :func:`spawn` forks from a keeper thread that lives as long as the
    child.
    """
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)


def _process_args(pid: int) -> list[str] | None:
    """The argv of a live process, or ``None`` if it does not exist (or we cannot tell)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [arg.decode(errors="replace") for arg in raw.split(b"\0") if arg]


def _is_our_server(args: list[str], storage: Path) -> bool:
    if not any(Path(a).name == EXECUTABLE or a.endswith(EXECUTABLE) for a in args[:3]):
        return False
    for flag, value in itertools.pairwise(args):
        if flag == "--storage-path":
            try:
                return Path(value).resolve() == storage.resolve()
            except OSError:
                return False
    return False


def _pid_gone(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)  # reap it if it happens to be our child
        if done == pid:
            return True
    except ChildProcessError:
        pass
    if _process_args(pid) is None:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state == "Z"  # a zombie holds no lock; its parent reaps it


def private_file(path: Path, mode: str) -> IO[bytes]:
    """Open ``path`` (created 0600) for binary append or read-write."""
    flags = os.O_CREAT | (os.O_APPEND | os.O_WRONLY if mode == "ab" else os.O_RDWR)
    return os.fdopen(os.open(path, flags, 0o600), mode)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def terminate(proc: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    """SIGTERM ``proc``, wait up to ``timeout_s``, then SIGKILL; reaped either way."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def reap_stale_server(pid_path: Path, storage: Path) -> None:
    """Stop a server an earlier node on this directory left behind (e.g. after SIGKILL).

    The caller holds the directory's ``node.lock``, so no live node owns it; a
    ``secantusd-py`` whose pid is in ``pid_path`` and whose ``--storage-path`` is
    ``storage`` is an orphan that would keep WiredTiger's lock. SIGTERM, up to
    :data:`STALE_TERM_WAIT_S`, then SIGKILL. This is the one place orphans are reaped.
    """
    try:
        pid = int(pid_path.read_text().strip())
    except (OSError, ValueError):
        return
    args = _process_args(pid)
    if pid <= 1 or args is None or not _is_our_server(args, storage):
        pid_path.unlink(missing_ok=True)
        return
    for sig, wait_s in ((signal.SIGTERM, STALE_TERM_WAIT_S), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and not _pid_gone(pid):
            time.sleep(0.05)
        if _pid_gone(pid):
            break
    else:
        raise EmbeddedServerError(f"a stale {EXECUTABLE} (pid {pid}) on {storage} does not exit")
    pid_path.unlink(missing_ok=True)


def spawn(argv: list[str], log: IO[bytes]) -> subprocess.Popen[bytes]:
    """Fork the server from a keeper thread that lives exactly as long as the child.

    Its own session (``start_new_session``), so a Ctrl-C aimed at the node does not kill
    the database first; ``PR_SET_PDEATHSIG`` so it does not outlive a SIGKILLed node.
    PDEATHSIG fires when the forking *thread* exits, and ``EmbeddedServer.start()`` is
    often called from a short-lived worker thread (``trio.to_thread``), hence the keeper.
    """
    handoff: queue.Queue[subprocess.Popen[bytes] | BaseException] = queue.Queue()

    def keeper() -> None:
        try:
            proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        except BaseException as exc:
            handoff.put(exc)
            return
        handoff.put(proc)
        while proc.poll() is None:  # not proc.wait(): stop() may reap it concurrently
            time.sleep(0.2)

    threading.Thread(target=keeper, name=f"{EXECUTABLE}-keeper", daemon=True).start()
    got = handoff.get()
    if isinstance(got, BaseException):
        raise EmbeddedServerError(f"cannot start {EXECUTABLE}: {got}") from got
    return got
