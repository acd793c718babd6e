"""Usage counters: what each key used, in total and per UTC day, and the buffer in front of the backend.

Recording happens on the hot path (every request, every second of streamed audio), so it only adds to an
in-memory buffer; the backend takes the buffer every second or so (``UsageBuffer.take``) and puts it back
(``UsageBuffer.restore``) if writing failed, so nothing is lost while Redis is away.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Optional

from .base import today

COUNTERS = ("requests", "audio_seconds", "streams")


def empty() -> dict:
    return {"requests": 0, "audio_seconds": 0.0, "streams": 0}


def add_into(target: dict, delta: dict) -> dict:
    for name in COUNTERS:
        target[name] = target.get(name, 0) + delta.get(name, 0)
    target["audio_seconds"] = round(float(target["audio_seconds"]), 3)
    return target


class UsageBuffer:
    """Pending usage per (key hash, day). Thread-safe; cheap to add to."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, str], dict] = defaultdict(empty)

    def add(self, digest: str, *, requests: int = 0, audio_s: float = 0.0, streams: int = 0,
            day: Optional[str] = None) -> None:
        if not (requests or audio_s or streams):
            return
        with self._lock:
            entry = self._pending[(digest, day or today())]
            entry["requests"] += requests
            entry["audio_seconds"] += audio_s
            entry["streams"] += streams

    def take(self) -> dict[tuple[str, str], dict]:
        with self._lock:
            pending, self._pending = dict(self._pending), defaultdict(empty)
        return pending

    def restore(self, pending: dict[tuple[str, str], dict]) -> None:
        with self._lock:
            for key, delta in pending.items():
                add_into(self._pending[key], delta)

    def pending_audio(self, digest: str, day: str) -> float:
        with self._lock:
            entry = self._pending.get((digest, day))
            return entry["audio_seconds"] if entry else 0.0

    def __len__(self) -> int:
        return len(self._pending)
