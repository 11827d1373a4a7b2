"""Key vault: provider keys encrypted at rest (Fernet), resolved from references, redacted everywhere.

The master key comes from `LLMPRESS_MASTER_KEY` or a file (`LLMPRESS_MASTER_KEY_FILE`, default
`$LLMPRESS_HOME/master.key`) that only its owner may read (0600; group/world-readable is refused).
A target's `api_key` is a reference: `env:NAME`, `file:PATH`, or `vault[:NAME]` (the registry's
encrypted store, set with `llmpress providers set|rotate`). Rotation keeps the previous key usable for
a grace period; a running gateway sees the change within a second (no restart).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
import threading
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from llmpress.artifact import home
from llmpress.errors import AuthError, ConfigError, NotFoundError

REDACTED = "[REDACTED]"


class Secret:
    """A provider key that never prints itself (repr, str, f-strings and logs show a fingerprint only)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    @property
    def fingerprint(self) -> str:
        return fingerprint(self._value)

    def __repr__(self) -> str:
        return f"Secret({REDACTED} sha256:{self.fingerprint})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def fingerprint(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:12]


# -- redaction: every secret the gateway has handled is replaced wherever text leaves the process --------
class Redactor:
    """Replaces known secrets (and anything shaped like a bearer token) in text with [REDACTED]."""

    _BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{8,}")

    def __init__(self) -> None:
        self._secrets: set[str] = set()
        self._lock = threading.Lock()

    def add(self, value: str) -> None:
        if len(value) >= 6:
            with self._lock:
                self._secrets.add(value)

    def __call__(self, text: str) -> str:
        for s in sorted(self._secrets, key=len, reverse=True):
            if s in text:
                text = text.replace(s, REDACTED)
        return self._BEARER.sub(r"\1" + REDACTED, text)


REDACT = Redactor()


class RedactingFilter(logging.Filter):
    """A logging filter that redacts the message, its args and any extra string fields."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string must not kill logging
            msg = str(record.msg)
        record.msg, record.args = REDACT(msg), ()
        for k, v in list(record.__dict__.items()):
            if isinstance(v, str) and k not in ("msg", "name", "levelname", "pathname", "filename", "module",
                                                  "funcName", "processName", "threadName"):
                setattr(record, k, REDACT(v))
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = REDACT(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


def install_log_redaction(logger_names: Iterable[str] = ("llmpress", "uvicorn", "uvicorn.error", "httpx")) -> None:
    """Attach the redacting filter to the named loggers and their handlers (idempotent)."""
    for name in logger_names:
        lg = logging.getLogger(name)
        targets: list[Any] = [lg, *lg.handlers]
        for t in targets:
            if not any(isinstance(f, RedactingFilter) for f in t.filters):
                t.addFilter(RedactingFilter())


# -- the master key and Fernet --------------------------------------------------------------------
def master_key_path() -> Path:
    return Path(os.environ.get("LLMPRESS_MASTER_KEY_FILE") or home() / "master.key")


def _fernet_cls() -> Any:
    try:
        from cryptography.fernet import Fernet
    except ImportError:
        raise ConfigError("the key vault needs the `cryptography` package",
                          "pip install 'llmpress[gateway]'") from None
    return Fernet


def load_master_key() -> bytes:
    """The Fernet master key: $LLMPRESS_MASTER_KEY, else the key file (which must be 0600)."""
    env = os.environ.get("LLMPRESS_MASTER_KEY")
    if env:
        key = env.strip().encode()
    else:
        p = master_key_path()
        if not p.is_file():
            raise NotFoundError(f"no vault master key: LLMPRESS_MASTER_KEY is unset and {p} does not exist",
                                "run `llmpress providers init` to create one, or set LLMPRESS_MASTER_KEY")
        mode = stat.S_IMODE(p.stat().st_mode)
        if mode & 0o077:
            raise ConfigError(f"the vault master key file {p} is readable by group or others (mode {mode:o})",
                              f"chmod 600 {p}")
        key = p.read_bytes().strip()
    try:
        _fernet_cls()(key)
    except ValueError:
        raise ConfigError("the vault master key is not a valid Fernet key (32 url-safe base64 bytes)",
                          "create one with `llmpress providers init`") from None
    return key


def create_master_key(path: Path | None = None) -> Path:
    """Write a new master key file with mode 0600 (refuses to overwrite one)."""
    p = path or master_key_path()
    if p.exists():
        raise ConfigError(f"a master key already exists at {p}", "keep it: keys in the vault need it to decrypt")
    p.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(_fernet_cls().generate_key())
    return p


class Vault:
    """Encrypt / decrypt provider keys in the registry's `provider_keys` table."""

    def __init__(self, ledger: Any | None = None) -> None:
        from llmpress.registry.cost import CostLedger

        self.ledger = ledger or CostLedger()
        self._fernet: Any = None

    @property
    def fernet(self) -> Any:
        if self._fernet is None:
            self._fernet = _fernet_cls()(load_master_key())
        return self._fernet

    def set(self, target: str, value: str, grace_s: float = 0.0, replace: bool = False) -> str:
        """Store `value` as target's current key; older keys keep working for `grace_s` seconds. Returns its fingerprint."""
        value = value.strip()
        if not value:
            raise ConfigError("the provider key is empty", "pass the key on stdin or with --from-env VAR")
        REDACT.add(value)
        token = self.fernet.encrypt(value.encode())
        grace_until = datetime.now(UTC) + timedelta(seconds=grace_s) if replace else None
        self.ledger.add_provider_key(target, token, fingerprint(value), grace_until, replace)
        return fingerprint(value)

    def keys(self, target: str) -> list[Secret]:
        """Usable keys for a target, current first, then retired ones still inside their grace period."""
        from cryptography.fernet import InvalidToken

        now = datetime.now(UTC)
        out: list[tuple[int, Secret]] = []
        for r in self.ledger.provider_keys(target):
            exp = r.expires_at.replace(tzinfo=UTC) if r.expires_at and r.expires_at.tzinfo is None else r.expires_at
            if r.retired_at is not None and (exp is None or exp <= now):
                continue
            try:
                value = self.fernet.decrypt(r.ciphertext).decode()
            except InvalidToken:
                raise ConfigError(f"the vault key for target {target!r} does not decrypt with this master key",
                                  "use the master key it was stored with, or `llmpress providers set` it again") from None
            REDACT.add(value)
            out.append((0 if r.retired_at is None else 1, Secret(value)))
        out.sort(key=lambda x: x[0])
        return [s for _, s in out]


class KeyResolver:
    """Turns a target's `api_key` reference into its usable keys. Vault reads are cached for `ttl_s`, so a
    rotation (or the end of a grace period) lands within a second, without a restart."""

    def __init__(self, ttl_s: float = 1.0) -> None:
        self.ttl_s = ttl_s
        self._vault: Vault | None = None
        self._cache: dict[str, tuple[float, list[Secret]]] = {}
        self._lock = threading.Lock()

    @property
    def vault(self) -> Vault:
        if self._vault is None:
            self._vault = Vault()
        return self._vault

    def resolve(self, target: str, ref: str | None) -> list[Secret]:
        """Keys to try, in order (current first; a rotated-out key while its grace lasts). Blocking: call in a thread."""
        if ref is None:
            return []
        if ref.startswith("env:"):
            name = ref[4:]
            value = os.environ.get(name)
            if not value:
                raise AuthError(f"target {target!r}: environment variable {name} (its api_key) is not set",
                                f"export {name}=... before starting the gateway")
            REDACT.add(value)
            return [Secret(value)]
        if ref.startswith("file:"):
            p = Path(ref[5:]).expanduser()
            try:
                value = p.read_text().strip()
            except OSError:
                raise AuthError(f"target {target!r}: cannot read its api_key file {p}", "check the path and mode") from None
            REDACT.add(value)
            return [Secret(value)]
        name = ref.partition(":")[2] or target
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(name)
            if hit is None or now - hit[0] >= self.ttl_s:
                hit = self._cache[name] = (now, self.vault.keys(name))
        if not hit[1]:
            raise AuthError(f"target {target!r} has no key in the vault", f"run `llmpress providers set {name}`")
        return hit[1]

    def cached(self, target: str, ref: str | None) -> list[Secret] | None:
        """The keys without blocking when they are fresh in the cache (env/file refs: always), else None."""
        if ref is None:
            return []
        if ref.startswith("env:"):
            return self.resolve(target, ref)
        if not ref.startswith("vault"):
            return None
        hit = self._cache.get(ref.partition(":")[2] or target)
        return hit[1] if hit is not None and hit[1] and time.monotonic() - hit[0] < self.ttl_s else None
