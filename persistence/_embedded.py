"""EmbeddedServer: run SecantusDB as a child process so a node needs no database setup.

SecantusDB is GPL-2.0; this module only ever starts it as a separate process (``secantusd-py``)
and speaks the MongoDB wire protocol to it, it never imports it.

Durability: ``--sync-on-commit`` is ON by default. SecantusDB honours ``j: true`` with an fsync
for plain writes, but a multi-document transaction commit (how MongoStore writes a batch) was
measured to lose acknowledged data on SIGKILL without it. With group commit its cost is one
fsync per batch; see docs/benchmarks.md for the numbers.

Access: the data directory (and ``db/`` in it) is mode 0700, so no other local user can read
the database files, and the server runs with ``--auth`` (SCRAM-SHA-256): a local process
that can reach its port learns nothing without the credentials, which are generated at the
first start into ``DATA_DIR/store-credentials.json`` (mode 0600) and carried in :attr:`uri`.
SecantusDB has no localhost exception, so the one user is provisioned by a start without
``--auth`` (on a fresh port, before the node uses the store, any other user found then is
dropped) and a restart with it; a directory made by an older version, without the file,
gets its credentials the same way at its next start.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any
from urllib.parse import quote_plus

import attrs
import orjson
import pymongo

from ._embedded_process import EXECUTABLE as EXECUTABLE
from ._embedded_process import EmbeddedServerError as EmbeddedServerError
from ._embedded_process import (
    find_executable,
    free_port,
    private_file,
    reap_stale_server,
    spawn,
    terminate,
)

#: The store's credentials, in the data directory (mode 0600).
CREDENTIALS_FILE = "store-credentials.json"
#: The one user of the embedded store: the node.
STORE_USER = "messenger"
#: mongod's error code for a failed SCRAM conversation (wrong user or password).
_AUTHENTICATION_FAILED = 18
#: mongod's error code for createUser of a user that exists.
_USER_EXISTS = 51003


@attrs.frozen
class StoreCredentials:
    """The user and password the embedded store requires."""

    user: str
    password: str = attrs.field(repr=False)

    @classmethod
    def generate(cls) -> StoreCredentials:
        return cls(user=STORE_USER, password=secrets.token_urlsafe(32))

    @classmethod
    def load(cls, path: Path) -> StoreCredentials | None:
        """The credentials in ``path``; None if there is no such file."""
        try:
            raw = orjson.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise EmbeddedServerError(f"store credentials {path} are unreadable: {exc}") from exc
        if not (
            isinstance(raw, dict) and all(isinstance(raw.get(k), str) for k in ("user", "password"))
        ):
            raise EmbeddedServerError(f"store credentials {path} lack a 'user' and 'password'")
        return cls(user=raw["user"], password=raw["password"])

    def save(self, path: Path) -> None:
        """Write ``path`` atomically, readable by its owner only (0600 from the start)."""
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(orjson.dumps({"user": self.user, "password": self.password}))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)


class EmbeddedServer:
    """A SecantusDB child process on ``data_dir`` (blocking API; start it in a thread if needed).

    The data directory holds ``db/`` (the database), ``secantusd.log``,
    ``store-credentials.json`` and ``node.lock``: an exclusive ``flock`` held for the
    server's lifetime so two nodes never share one directory. ``auth=False`` runs the server
    without authentication (only for measuring what authentication costs).
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        port: int | None = None,
        test_commands: bool = False,
        sync_on_commit: bool = True,
        auth: bool = True,
        start_timeout_s: float = 30.0,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.port = port
        self.test_commands = test_commands
        self.sync_on_commit = sync_on_commit
        self.auth = auth
        self.start_timeout_s = start_timeout_s
        self._credentials: StoreCredentials | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock: IO[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def uri(self) -> str:
        if self.port is None:
            raise EmbeddedServerError("the embedded server is not started")
        return self._uri_for(self.port, self._credentials)

    @staticmethod
    def _uri_for(port: int, credentials: StoreCredentials | None) -> str:
        if credentials is None:
            return f"mongodb://127.0.0.1:{port}/?directConnection=true"
        login = f"{quote_plus(credentials.user)}:{quote_plus(credentials.password)}"
        return f"mongodb://{login}@127.0.0.1:{port}/?directConnection=true&authSource=admin"

    @property
    def credentials_path(self) -> Path:
        return self.data_dir / CREDENTIALS_FILE

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
            (self.data_dir / "db").mkdir(mode=0o700, parents=True, exist_ok=True)
            # Also for directories made before they were private (mkdir honours the umask).
            self.data_dir.chmod(0o700)
            (self.data_dir / "db").chmod(0o700)
            lock = private_file(self.data_dir / "node.lock", "ab")
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
        reap_stale_server(self.pid_path, self.data_dir / "db")

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
        self._log = private_file(self.log_path, "ab")
        if self.auth:
            self._credentials = StoreCredentials.load(self.credentials_path)
            if self._credentials is None:
                self._credentials = self._provision()
        self._proc = spawn(self._argv(self.port, auth=self.auth), self._log)
        self.pid_path.write_text(f"{self._proc.pid}\n")
        self._wait_ready(self._proc, self.uri)

    def _provision(self) -> StoreCredentials:
        """Create the store's one user on a server without ``--auth``, then save it.

        The server runs on a port of its own for this, only as long as it takes; the file
        is written last, so a crash before it means provisioning again (the password is
        then reset), never credentials the store does not know.
        """
        credentials = StoreCredentials.generate()
        assert self._log is not None
        port = free_port()
        proc = spawn(self._argv(port, auth=False), self._log)
        self.pid_path.write_text(f"{proc.pid}\n")
        try:
            uri = self._uri_for(port, None)
            self._wait_ready(proc, uri)
            client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(uri)
            try:
                admin = client.admin
                users = admin.command("usersInfo", 1).get("users", [])
                for other in users:
                    if other.get("user") != credentials.user:
                        admin.command("dropUser", other["user"])
                password = credentials.password
                try:
                    admin.command("createUser", credentials.user, pwd=password, roles=["root"])
                except pymongo.errors.OperationFailure as exc:
                    if exc.code != _USER_EXISTS:
                        raise
                    admin.command("updateUser", credentials.user, pwd=password, roles=["root"])
            finally:
                client.close()
        except pymongo.errors.PyMongoError as exc:
            raise EmbeddedServerError(f"cannot provision the store's user: {exc}") from exc
        finally:
            terminate(proc)
        try:
            credentials.save(self.credentials_path)
        except OSError as exc:
            raise EmbeddedServerError(f"cannot write {self.credentials_path}: {exc}") from exc
        return credentials

    def _argv(self, port: int, *, auth: bool) -> list[str]:
        argv = [
            find_executable(),
            "--storage-path",
            str(self.data_dir / "db"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "WARNING",
        ]
        if auth:
            argv.append("--auth")
        if self.test_commands:
            argv.append("--enable-test-commands")
        if self.sync_on_commit:
            argv.append("--sync-on-commit")
        return argv

    def _wait_ready(self, proc: subprocess.Popen[bytes], uri: str) -> None:
        """Wait until the server at ``uri`` answers an authenticated command."""
        deadline = time.monotonic() + self.start_timeout_s
        client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(
            uri, serverSelectionTimeoutMS=250, connectTimeoutMS=250
        )
        try:
            while True:
                if proc.poll() is not None:
                    raise EmbeddedServerError(
                        f"{EXECUTABLE} exited with status {proc.returncode} while "
                        f"starting; last lines of {self.log_path}:\n{self._log_tail()}"
                    )
                try:
                    # ``ping`` is allowed before authentication; listing databases is not,
                    # so this also checks the credentials.
                    client.admin.command("listDatabases", nameOnly=True)
                    return
                except pymongo.errors.OperationFailure as exc:
                    if exc.code == _AUTHENTICATION_FAILED:
                        raise EmbeddedServerError(
                            f"the store refuses the credentials in {self.credentials_path}: {exc}"
                        ) from None
                    if time.monotonic() > deadline:
                        raise EmbeddedServerError(f"the store fails to start: {exc}") from exc
                    time.sleep(0.05)
                except pymongo.errors.PyMongoError:
                    if time.monotonic() > deadline:
                        raise EmbeddedServerError(
                            f"{EXECUTABLE} did not answer ping within {self.start_timeout_s} s; "
                            f"last lines of {self.log_path}:\n{self._log_tail()}"
                        ) from None
                    time.sleep(0.05)
        finally:
            client.close()

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
        if proc is not None:
            terminate(proc, timeout_s)
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
