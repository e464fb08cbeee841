"""Access tokens: HMAC-SHA256 signed user ids with an expiry, and the node's secret.

A token is ``v1.<payload>.<mac>`` where ``payload`` is the unpadded base64url of the compact
JSON ``{"u": user, "exp": seconds since the epoch}`` and ``mac`` the unpadded base64url of
``HMAC-SHA256(secret, "v1." + payload)``. The MAC is checked (in constant time) before the
payload is parsed, so nothing an attacker writes is interpreted unless we signed it.

:meth:`TokenIssuer.verify` answers a :class:`Grant`: the user and the token's expiry, so the
node can end a session when its token expires (PROTOCOL.md session rule 8).

Time is a parameter (``now_s``): the command line passes ``time.time()``, the node its
wall-clock function, the simulator a time derived from its virtual clock.

Secrets: a node keeps 32 random bytes in ``DATA_DIR/secret.key`` (created atomically, mode
0600) unless a secret is given explicitly or by the ``MESSENGER_SECRET`` environment variable,
so every node sharing a secret accepts the same tokens.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

import attrs
import orjson

from protocol import is_valid_id

__all__ = [
    "MIN_SECRET_BYTES",
    "SECRET_ENV",
    "SECRET_FILE",
    "Grant",
    "InvalidToken",
    "SecretError",
    "TokenIssuer",
    "load_or_create_secret",
    "resolve_secret",
]

TOKEN_VERSION = "v1"
SECRET_FILE = "secret.key"
SECRET_ENV = "MESSENGER_SECRET"
SECRET_BYTES = 32
#: shortest secret accepted from a file, a flag or the environment
MIN_SECRET_BYTES = 16
# A v1 token is ~150 characters; anything far longer is rejected before any work is done.
_MAX_TOKEN_CHARS = 1024


class InvalidToken(Exception):
    """A token was refused; ``reason`` is a short human sentence ("token expired", ...)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@attrs.frozen(kw_only=True)
class Grant:
    """What an accepted token grants: acting as ``user`` until ``expires_s`` (seconds since
    the epoch, on the verifier's clock; ``math.inf`` for a token that never expires)."""

    user: str
    expires_s: float


class SecretError(Exception):
    """The node's secret cannot be loaded or created; the message names the file and why."""


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    # Unpadded base64url only; re-encoding must give the same text, so one token has exactly
    # one spelling (no padding, no ignored trailing bits).
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64encode(data) != text:
        raise ValueError("non-canonical base64url")
    return data


class TokenIssuer:
    """Mints and verifies tokens with one secret. Stateless apart from the key; thread-safe."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < MIN_SECRET_BYTES:
            raise ValueError(
                f"the token secret must be at least {MIN_SECRET_BYTES} bytes, got {len(secret)}"
            )
        self._secret = secret

    def _mac(self, signing_input: str) -> bytes:
        return hmac.new(self._secret, signing_input.encode("ascii"), hashlib.sha256).digest()

    def mint(self, user: str, ttl_s: int, now_s: float) -> str:
        """A token for ``user`` valid until ``int(now_s) + ttl_s`` (seconds since the epoch)."""
        if not is_valid_id(user):
            raise ValueError(f"invalid user id {user!r}: 1-64 characters of [A-Za-z0-9_.-]")
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be positive, got {ttl_s}")
        payload = orjson.dumps({"u": user, "exp": int(now_s) + ttl_s})
        signing_input = f"{TOKEN_VERSION}.{_b64encode(payload)}"
        return f"{signing_input}.{_b64encode(self._mac(signing_input))}"

    def verify(self, token: str, now_s: float) -> Grant:
        """The user ``token`` was minted for and its expiry; :class:`InvalidToken` if it is not
        acceptable (at ``now_s``).

        Raises nothing else, whatever ``token`` is.
        """
        if not isinstance(token, str) or not token.isascii() or len(token) > _MAX_TOKEN_CHARS:
            raise InvalidToken("malformed token")
        parts = token.split(".")
        if len(parts) != 3:
            raise InvalidToken("malformed token: expected three dot-separated parts")
        version, payload_text, mac_text = parts
        if version != TOKEN_VERSION:
            raise InvalidToken(f"unsupported token version {version[:16]!r}")
        try:
            mac = _b64decode(mac_text)
        except ValueError:  # binascii.Error included
            raise InvalidToken("malformed token: signature is not base64url") from None
        if not hmac.compare_digest(mac, self._mac(f"{version}.{payload_text}")):
            raise InvalidToken("bad signature")
        # Signed by us from here on; failures below mean a bug or a foreign format.
        try:
            claims = orjson.loads(_b64decode(payload_text))
        except ValueError:  # bad base64, bad UTF-8 and bad JSON alike
            raise InvalidToken("malformed token: payload is not base64url JSON") from None
        if not isinstance(claims, dict):
            raise InvalidToken("malformed token: payload is not an object")
        user, exp = claims.get("u"), claims.get("exp")
        if not isinstance(user, str) or not is_valid_id(user):
            raise InvalidToken("malformed token: invalid user id")
        if not isinstance(exp, int) or isinstance(exp, bool):
            raise InvalidToken("malformed token: invalid expiry")
        if now_s >= exp:
            raise InvalidToken("token expired")
        return Grant(user=user, expires_s=float(exp))


def _check_length(secret: bytes, origin: str) -> bytes:
    if len(secret) < MIN_SECRET_BYTES:
        raise SecretError(
            f"{origin}: the secret is {len(secret)} bytes; at least {MIN_SECRET_BYTES} needed"
        )
    return secret


def load_or_create_secret(data_dir: Path) -> bytes:
    """The secret in ``data_dir/secret.key``; created (32 random bytes, mode 0600) if missing.

    Creation is atomic and never overwrites: the bytes go to a private temporary file that is
    then hard-linked into place, so a concurrent creator's secret wins and a crash never
    leaves a truncated key. Raises :class:`SecretError` when the file cannot be read or
    written, or is too short.
    """
    path = data_dir / SECRET_FILE
    try:
        return _check_length(path.read_bytes(), str(path))
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise SecretError(f"cannot read the secret {path}: {exc.strerror or exc}") from exc
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        tmp = data_dir / f".{SECRET_FILE}.{secrets.token_hex(8)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(SECRET_BYTES))
                f.flush()
                os.fsync(f.fileno())
            with contextlib.suppress(FileExistsError):  # someone else created it first
                os.link(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(data_dir)
        return _check_length(path.read_bytes(), str(path))
    except OSError as exc:
        raise SecretError(f"cannot create the secret {path}: {exc.strerror or exc}") from exc


def _fsync_dir(directory: Path) -> None:
    # Makes the new directory entry durable; not every platform lets a directory be opened.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def resolve_secret(
    data_dir: Path,
    secret_env: str = SECRET_ENV,
    *,
    secret: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> bytes:
    """The node's token secret: ``secret`` (a flag) if given, else ``$secret_env``, else the file.

    An explicit or environment secret is used as its UTF-8 bytes and must be at least
    ``MIN_SECRET_BYTES`` long; the data directory is not touched then.
    """
    env = os.environ if environ is None else environ
    if secret is not None:
        return _check_length(secret.encode("utf-8"), "the given secret")
    value = env.get(secret_env)
    if value:
        return _check_length(value.encode("utf-8"), f"${secret_env}")
    return load_or_create_secret(data_dir)
