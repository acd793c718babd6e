"""The state every replica shares: API keys, their per-key limits and their usage.

Routes, the WebSocket handlers and the admin API talk to a :class:`StateBackend`; which one runs (the JSON
file, embedded and the default, or Redis for many replicas) is chosen once by ``--state-url``.

Limits are enforced against the backend's counters, so with Redis they hold across every replica:

* ``max_streams``: WebSocket streams of the key open at once (a stream is an authenticated connection).
  Each open stream holds a lease the replica renews; a replica killed with -9 frees its streams when the
  leases lapse (``STREAM_LEASE_S``).
* ``requests_per_minute``: REST / ``/v1`` requests and WebSocket connections per calendar minute (UTC).
* ``audio_minutes_per_day``: audio transcribed per UTC day. A request over it is refused; a running
  stream is ended after its current utterance's final.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Optional, Protocol, runtime_checkable

STREAM_LEASE_S = 15.0  # an open stream's lease; renewed every STREAM_RENEW_S while it lives
STREAM_RENEW_S = 5.0
VERIFY_CACHE_S = 1.0  # a verified key is trusted this long without asking the backend (revocation bound)
OUTAGE_GRACE_S = 60.0  # backend unreachable: keys verified this recently keep working
LIMIT_FIELDS = ("max_streams", "requests_per_minute", "audio_minutes_per_day")
MAX_LIMIT = 1e9  # the largest value any limit takes; null is unlimited


class StateUnavailable(RuntimeError):
    """The state backend cannot be reached. The message names it (never with a password) and is safe
    to show to an admin client (503)."""


class QuotaExceeded(Exception):
    """A per-key limit refuses this request or stream."""

    def __init__(self, limit: str, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.limit = limit
        self.retry_after = max(1, int(retry_after))

    # The three limits' refusals, worded the same by every backend.
    @classmethod
    def requests_per_minute(cls, limit: int) -> "QuotaExceeded":
        return cls("requests_per_minute", f"This API key's limit of {limit} requests per minute is used up.",
                   seconds_to_next_minute())

    @classmethod
    def audio_minutes_per_day(cls, limit: float) -> "QuotaExceeded":
        return cls("audio_minutes_per_day", f"This API key's limit of {limit:g} audio minutes per day (UTC) is "
                   "used up.", seconds_to_midnight())

    @classmethod
    def max_streams(cls, limit: int) -> "QuotaExceeded":
        return cls("max_streams", f"This API key may have {limit} stream(s) open at once; close one first.", 5)


@dataclass
class Limits:
    """Per-key limits; None means unlimited."""

    max_streams: Optional[int] = None
    requests_per_minute: Optional[int] = None
    audio_minutes_per_day: Optional[float] = None

    @classmethod
    def from_mapping(cls, data: Optional[dict]) -> "Limits":
        """Stored limits. A value no check accepts now (an older file's Infinity) reads as unlimited, which
        is what it meant, instead of failing every read of the key."""
        data = data or {}
        values = {}
        for k in LIMIT_FIELDS:
            try:
                values[k] = _limit_value(k, data.get(k))
            except ValueError:
                values[k] = None
        return cls(**values)

    def public(self) -> dict:
        return asdict(self)


def _limit_value(name: str, value: Any):
    if value in (None, "", "null", "None"):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        number = float("nan")
    if not 0 <= number <= MAX_LIMIT:  # NaN, Infinity and 1e400 too: JSON cannot even carry them back
        raise ValueError(f"'{name}' must be a number from 0 to {MAX_LIMIT:g}, or null (unlimited).")
    return number if name == "audio_minutes_per_day" else int(number)


def validate_limit_changes(body: Any) -> dict:
    """A PATCH body -> the limit changes it asks for; ValueError with a message for anything else."""
    if not isinstance(body, dict) or not body:
        raise ValueError(f"Send a JSON object with any of {', '.join(LIMIT_FIELDS)} (null = unlimited).")
    unknown = [k for k in body if k not in LIMIT_FIELDS]
    if unknown:
        raise ValueError(f"Unknown field(s): {', '.join(sorted(map(str, unknown)))[:200]}. "
                         f"Known: {', '.join(LIMIT_FIELDS)}.")
    changes = {}
    for name, value in body.items():
        if isinstance(value, bool) or not (value is None or isinstance(value, (int, float))):
            raise ValueError(f"'{name}' must be a number or null.")
        changes[name] = _limit_value(name, value)
    return changes


@dataclass
class KeyInfo:
    """A verified API key: its hash (never the key), public id, name and limits."""

    digest: str
    id: str
    name: str
    limits: Limits = field(default_factory=Limits)


def today() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d")


def seconds_to_midnight() -> int:
    now = time.time()
    return int(86400 - now % 86400) + 1


def seconds_to_next_minute() -> int:
    return int(60 - time.time() % 60) + 1


@runtime_checkable
class StateBackend(Protocol):
    """What the server needs from shared state. All methods are safe to call from the event loop."""

    name: str

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    def health(self) -> dict: ...

    # keys
    async def bootstrap(self, admin_key: Optional[str]) -> dict[str, str]: ...
    async def verify(self, key: Optional[str]) -> Optional[KeyInfo]: ...
    async def verify_admin(self, key: Optional[str]) -> bool: ...
    async def generate(self, name: str = "", limits: Optional[Limits] = None) -> str: ...
    async def list_keys(self) -> list[dict]: ...
    async def revoke(self, key_or_id: str) -> Optional[str]: ...
    async def update_limits(self, key_id: str, changes: dict) -> Optional[dict]: ...
    async def is_active(self, digests: list[str]) -> dict[str, bool]: ...

    # limits and usage
    async def check_request(self, info: KeyInfo) -> None: ...
    async def check_audio(self, info: KeyInfo) -> None: ...
    async def open_stream(self, info: KeyInfo, stream_id: str) -> None: ...
    async def close_stream(self, info: KeyInfo, stream_id: str) -> None: ...
    def record(self, digest: str, *, requests: int = 0, audio_s: float = 0.0, streams: int = 0) -> None: ...
    async def usage(self, key_id: str) -> Optional[dict]: ...
    async def flush(self) -> None: ...
