"""API keys, kept as SHA-256 hashes in a JSON file.

Keys are ``sk-`` + 48 hex characters (192 random bits), so an unsalted SHA-256 is enough to make the file
useless to a thief while letting a lookup stay a dictionary access. A lost key cannot be recovered, only
replaced. The file is written atomically (temp file + rename, mode 0600) under a lock, so a crash or two
concurrent admin requests never leave it corrupt or lose a key. Usage counters are kept in memory and
written at most every ``flush_interval`` seconds (and on close).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

log = logging.getLogger(__name__)

KEY_PREFIX = "sk-"
FILE_VERSION = 2


class KeyStoreError(RuntimeError):
    """The key file cannot be used. The message says what to do."""


def new_key() -> str:
    return KEY_PREFIX + secrets.token_hex(24)


def hash_key(key: str) -> str:
    # surrogatepass: a client-sent string with a lone surrogate hashes (to nothing we know) instead of failing
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def preview_of(key: str) -> str:
    return f"{key[:7]}...{key[-4:]}"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class KeyRecord:
    id: str  # first 16 hex characters of the hash: a handle to revoke a key whose value is lost
    preview: str
    name: str
    created_at: str
    last_used: Optional[str] = None
    request_count: int = 0
    limits: dict = field(default_factory=dict)  # max_streams, requests_per_minute, audio_minutes_per_day
    usage: dict = field(default_factory=dict)  # {"total": {...}, "days": {"YYYY-MM-DD": {...}}}

    def public(self) -> dict:
        return asdict(self)


class KeyStore:
    def __init__(self, path: str | os.PathLike, *, flush_interval: float = 30.0) -> None:
        self.path = Path(path)
        self.flush_interval = flush_interval
        self._lock = threading.RLock()
        self._keys: dict[str, KeyRecord] = {}  # full sha256 hex -> record
        self._admin_hash: Optional[str] = None
        self._admin_override: Optional[str] = None  # given on the command line / env: never stored
        self._dirty = False
        self._last_flush = 0.0

    # --- loading -------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike, **kwargs) -> "KeyStore":
        store = cls(path, **kwargs)
        store.remove_stale_temp_files()
        store._load()
        return store

    def remove_stale_temp_files(self, older_than_s: float = 1.0) -> int:
        """Delete temp files that a write killed between create and rename left next to the key file.

        Only names :meth:`save` makes (``.<file name>.<8 random characters>``), only regular files, and only
        ones older than ``older_than_s`` (a write in progress takes milliseconds). Returns how many went.
        """
        pattern = re.compile(re.escape(f".{self.path.name}.") + r"[A-Za-z0-9_]{8}")
        removed = 0
        try:
            entries = list(os.scandir(self.path.parent))
        except OSError:
            return 0
        now = time.time()
        for entry in entries:
            try:
                if (pattern.fullmatch(entry.name) and entry.is_file(follow_symlinks=False)
                        and now - entry.stat(follow_symlinks=False).st_mtime >= older_than_s):
                    os.unlink(entry.path)
                    removed += 1
            except OSError:
                continue
        if removed:
            log.warning("Removed %d temporary file(s) left next to %s by an interrupted write.", removed, self.path)
        return removed

    def _load(self) -> None:
        if not self.path.exists():
            return
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
            if not isinstance(raw, dict):
                raise ValueError("top level is not an object")
            migrated = self._parse(raw)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise KeyStoreError(
                f"The key file {self.path} is corrupt ({exc}). Refusing to start without keys. "
                f"Restore it from a backup, or move it away to start with a new admin key and API key."
            ) from exc
        except OSError as exc:
            raise KeyStoreError(f"Cannot read the key file {self.path}: {exc}") from exc
        if migrated:
            log.warning("Key file %s held plain-text keys; they are now stored hashed.", self.path)
            self.save()

    def _parse(self, raw: dict) -> bool:
        """Fill the store from the file's JSON; returns True when plain-text keys were hashed."""
        migrated = False
        admin = raw.get("admin_key_sha256")
        if admin is None and isinstance(raw.get("admin_key"), str):  # older plain-text layout
            admin, migrated = hash_key(raw["admin_key"]), True
        self._admin_hash = admin
        entries = raw.get("keys", [])
        if isinstance(entries, dict):  # {"sk-...": {...}} plain-text layout
            entries = [dict(meta or {}, key=k) for k, meta in entries.items()]
        if not isinstance(entries, list):
            raise ValueError("'keys' is neither a list nor an object")
        for entry in entries:
            if "key" in entry:
                plain = str(entry["key"])
                digest, migrated = hash_key(plain), True
                preview = preview_of(plain)
            else:
                digest = str(entry["sha256"])
                preview = str(entry["preview"])
            if len(digest) != 64:
                raise ValueError("a key hash is not 64 hex characters")
            self._keys[digest] = KeyRecord(
                id=digest[:16],
                preview=preview,
                name=str(entry.get("name", "")),
                created_at=str(entry.get("created_at") or _now()),
                last_used=entry.get("last_used"),
                request_count=int(entry.get("request_count", 0)),
                limits=dict(entry.get("limits") or {}),
                usage=dict(entry.get("usage") or {}),
            )
        return migrated

    # --- saving --------------------------------------------------------------------------------
    def save(self) -> None:
        with self._lock:
            data = {
                "version": FILE_VERSION,
                "note": "API keys are stored as SHA-256 hashes; a lost key cannot be recovered.",
                "admin_key_sha256": self._admin_hash,
                "keys": [
                    dict(sha256=digest, **{k: v for k, v in rec.public().items() if k != "id"})
                    for digest, rec in self._keys.items()
                ],
            }
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
            try:
                os.fchmod(fd, 0o600)
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    json.dump(data, fh, indent=2)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            self._dirty = False
            self._last_flush = time.monotonic()

    def flush(self) -> None:
        """Write pending usage counters, if any."""
        with self._lock:
            if self._dirty:
                self.save()

    # --- first start ---------------------------------------------------------------------------
    def bootstrap(self, admin_key: Optional[str] = None) -> dict[str, str]:
        """Make sure an admin key and at least one API key exist.

        Returns the newly generated secrets (``{"admin": ..., "api": ...}``, each only if created) so the
        caller can print them once.
        """
        created: dict[str, str] = {}
        with self._lock:
            if admin_key:
                self._admin_override = admin_key
            elif self._admin_hash is None:
                created["admin"] = new_key()
                self._admin_hash = hash_key(created["admin"])
            if not self._keys:
                created["api"] = self._add(name="default")
            if created or not self.path.exists():
                self.save()
        return created

    # --- API keys ------------------------------------------------------------------------------
    def _add(self, name: str) -> str:
        key = new_key()
        digest = hash_key(key)
        self._keys[digest] = KeyRecord(id=digest[:16], preview=preview_of(key), name=name, created_at=_now())
        return key

    def generate(self, name: str = "", limits: Optional[dict] = None) -> str:
        with self._lock:
            key = self._add(name)
            if limits:
                self._keys[hash_key(key)].limits = {k: v for k, v in limits.items() if v is not None}
            self.save()
        return key

    def find(self, key_or_id: str) -> Optional[str]:
        """The hash of a key given by value or by its 16-character id; None when unknown."""
        with self._lock:
            digest = hash_key(key_or_id)
            if digest in self._keys:
                return digest
            matches = [d for d, rec in self._keys.items() if rec.id == key_or_id]
            return matches[0] if len(matches) == 1 else None

    def get(self, digest: str) -> Optional[KeyRecord]:
        return self._keys.get(digest)

    def records(self) -> list[tuple[str, KeyRecord]]:
        """(hash, record) pairs, for copying the store elsewhere (--import-keys)."""
        with self._lock:
            return list(self._keys.items())

    @property
    def admin_hash(self) -> Optional[str]:
        return self._admin_hash

    def touch(self) -> None:
        """Usage or limits changed in a record: write them with the next flush."""
        self._dirty = True

    def verify(self, key: Optional[str]) -> bool:
        """True for a known API key; counts the use."""
        if not key:
            return False
        digest = hash_key(key)
        with self._lock:
            rec = self._keys.get(digest)
            if rec is None:
                return False
            rec.last_used = _now()
            rec.request_count += 1
            self._dirty = True
            if time.monotonic() - self._last_flush >= self.flush_interval:
                self.save()
        return True

    def revoke(self, key_or_id: str) -> Optional[str]:
        """Delete by full key value, or by the 16-character id shown in the list.

        Returns the deleted key's hash (so open streams using it can be ended), or None if none matched.
        """
        with self._lock:
            digest = hash_key(key_or_id)
            if digest not in self._keys:
                matches = [d for d, rec in self._keys.items() if rec.id == key_or_id]
                if len(matches) != 1:
                    return None
                digest = matches[0]
            del self._keys[digest]
            self.save()
        return digest

    def list(self) -> list[dict]:
        with self._lock:
            return [rec.public() for rec in self._keys.values()]

    def __len__(self) -> int:
        return len(self._keys)

    # --- admin ---------------------------------------------------------------------------------
    def verify_admin(self, key: Optional[str]) -> bool:
        if not key:
            return False
        if self._admin_override is not None:
            return hmac.compare_digest(key.encode("utf-8", "surrogatepass"), self._admin_override.encode())
        if self._admin_hash is None:
            return False
        return hmac.compare_digest(hash_key(key), self._admin_hash)
