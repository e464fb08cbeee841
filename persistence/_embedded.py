"""EmbeddedServer: run SecantusDB as a child process so a node needs no database setup.

SecantusDB is GPL-2.0; this module only ever starts it as a separate process (``secantusd-py``)
and speaks the MongoDB wire protocol to it, it never imports it.

Durability: ``--sync-on-commit`` is ON by default. SecantusDB honours ``j: true`` with an fsync
for plain writes, but a multi-document transaction commit (how MongoStore writes a batch) was
measured to lose acknowledged data on SIGKILL without it. With group commit its cost is one
fsync per batch; see docs/benchmarks.md for the numbers.
"""

from __future__ import annotations

import ctypes
import fcntl
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
from types import TracebackType
from typing import IO, Any

import pymongo

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
    which is why :class:`EmbeddedServer` forks from a keeper thread that lives as long as the
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedServer:
    """A SecantusDB child process on ``data_dir`` (blocking API; start it in a thread if needed).

    The data directory holds ``db/`` (the database), ``secantusd.log`` and ``node.lock``: an
    exclusive ``flock`` held for the server's lifetime so two nodes never share one directory.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        port: int | None = None,
        test_commands: bool = False,
        sync_on_commit: bool = True,
        start_timeout_s: float = 30.0,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.port = port
        self.test_commands = test_commands
        self.sync_on_commit = sync_on_commit
        self.start_timeout_s = start_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock: IO[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def uri(self) -> str:
        if self.port is None:
            raise EmbeddedServerError("the embedded server is not started")
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "secantusd.log"

    @property
    def pid_path(self) -> Path:
        return self.data_dir / "secantusd.pid"

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def _prepare_dir(self) -> None:
        if self.data_dir.exists() and not self.data_dir.is_dir():
            raise EmbeddedServerError(f"data directory {self.data_dir} is not a directory")
        try:
            (self.data_dir / "db").mkdir(parents=True, exist_ok=True)
            lock = open(self.data_dir / "node.lock", "ab")  # noqa: SIM115 - held until stop()
        except OSError as exc:
            raise EmbeddedServerError(f"data directory {self.data_dir} is unusable: {exc}") from exc
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise EmbeddedServerError(
                f"data directory {self.data_dir} is in use by another messenger node"
            ) from None
        if not os.access(self.data_dir / "db", os.W_OK):
            lock.close()
            raise EmbeddedServerError(f"data directory {self.data_dir} is not writable")
        self._lock = lock
        self._reap_stale_server()

    def _reap_stale_server(self) -> None:
        """Stop a server an earlier node on this directory left behind (e.g. after SIGKILL).

        We hold ``node.lock``, so no live node owns the directory; a ``secantusd-py`` whose pid
        is in ``secantusd.pid`` and whose ``--storage-path`` is ours is an orphan that would
        keep WiredTiger's lock. SIGTERM, up to :data:`STALE_TERM_WAIT_S`, then SIGKILL.
        """
        try:
            pid = int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return
        args = _process_args(pid)
        if pid <= 1 or args is None or not _is_our_server(args, self.data_dir / "db"):
            self.pid_path.unlink(missing_ok=True)
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
            raise EmbeddedServerError(
                f"a stale {EXECUTABLE} (pid {pid}) on {self.data_dir} does not exit"
            )
        self.pid_path.unlink(missing_ok=True)

    def start(self) -> str:
        """Start the server and wait until it answers ``ping``; returns the URI."""
        if self._proc is not None:
            raise EmbeddedServerError("the embedded server is already running")
        self._prepare_dir()
        try:
            self._spawn_and_wait()
        except BaseException:
            self.stop()
            raise
        return self.uri

    def _spawn_and_wait(self) -> None:
        if self.port is None:
            self.port = free_port()
        argv = [
            find_executable(),
            "--storage-path",
            str(self.data_dir / "db"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--log-level",
            "WARNING",
        ]
        if self.test_commands:
            argv.append("--enable-test-commands")
        if self.sync_on_commit:
            argv.append("--sync-on-commit")
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._proc = self._spawn(argv, self._log)
        self.pid_path.write_text(f"{self._proc.pid}\n")
        deadline = time.monotonic() + self.start_timeout_s
        client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(
            self.uri, serverSelectionTimeoutMS=250, connectTimeoutMS=250
        )
        try:
            while True:
                if self._proc.poll() is not None:
                    raise EmbeddedServerError(
                        f"{EXECUTABLE} exited with status {self._proc.returncode} while "
                        f"starting; last lines of {self.log_path}:\n{self._log_tail()}"
                    )
                try:
                    client.admin.command("ping")
                    return
                except pymongo.errors.PyMongoError:
                    if time.monotonic() > deadline:
                        raise EmbeddedServerError(
                            f"{EXECUTABLE} did not answer ping within {self.start_timeout_s} s; "
                            f"last lines of {self.log_path}:\n{self._log_tail()}"
                        ) from None
                    time.sleep(0.05)
        finally:
            client.close()

    def _spawn(self, argv: list[str], log: IO[bytes]) -> subprocess.Popen[bytes]:
        """Fork the server from a keeper thread that lives exactly as long as the child.

        Its own session (``start_new_session``), so a Ctrl-C aimed at the node does not kill
        the database first; ``PR_SET_PDEATHSIG`` so it does not outlive a SIGKILLed node.
        PDEATHSIG fires when the forking *thread* exits, and ``start()`` is often called from
        a short-lived worker thread (``trio.to_thread``), hence the keeper thread.
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

    def _log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL the server (crash simulation); the lock stays held until :meth:`stop`."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM, wait up to ``timeout_s``, then SIGKILL; release the lock. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc is not None and proc.poll() is not None:
            self.pid_path.unlink(missing_ok=True)
        for handle in (self._log, self._lock):
            if handle is not None:
                handle.close()
        self._log = self._lock = None

    def restart(self) -> str:
        """Stop (or after :meth:`kill`, reap) and start again on the same directory and port."""
        self.stop()
        return self.start()

    def __enter__(self) -> EmbeddedServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
