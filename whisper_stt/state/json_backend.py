"""The embedded default: keys, limits and usage in the JSON key file, counters in this process.

One replica only (the file is not shared between processes). Verification is a dictionary lookup on the
event loop; file writes (new keys, revocations, usage every ``FLUSH_S``) run on a worker thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from typing import Optional

from ..keys import KeyStore, hash_key
from .base import (
    KeyInfo,
    Limits,
    QuotaExceeded,
    today,
)
from .usage import UsageBuffer, add_into, empty

log = logging.getLogger(__name__)
FLUSH_S = 2.0  # usage reaches the file within this; a kill -9 loses at most this much


class JsonState:
    name = "json"

    def __init__(self, store: KeyStore) -> None:
        self.store = store
        store.flush_interval = float("inf")  # counters are written by the flush loop, off the event loop
        self.buffer = UsageBuffer()
        self._streams: dict[str, set[str]] = defaultdict(set)
        self._minute: dict[str, tuple[int, int]] = {}
        self._task: Optional[asyncio.Task] = None

    # --- life cycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._flush_loop(), name="usage-flush")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None
        await self.flush()

    def close_sync(self) -> None:
        """Final flush from outside an event loop (serve()'s last step)."""
        self._apply(self.buffer.take())
        self.store.flush()

    def health(self) -> dict:
        return {"backend": "json", "ok": True, "path": str(self.store.path)}

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_S)
            try:
                await self.flush()
            except Exception:  # a full disk must not stop counting; the next round tries again
                log.exception("Writing usage to %s failed", self.store.path)

    async def flush(self) -> None:
        pending = self.buffer.take()
        self._apply(pending)
        if pending or self.store._dirty:
            await asyncio.to_thread(self.store.flush)

    def _apply(self, pending: dict) -> None:
        for (digest, day), delta in pending.items():
            rec = self.store.get(digest)
            if rec is None:
                continue  # revoked meanwhile
            usage = rec.usage
            add_into(usage.setdefault("total", empty()), delta)
            add_into(usage.setdefault("days", {}).setdefault(day, empty()), delta)
            self.store.touch()

    # --- keys ---------------------------------------------------------------------------------------
    async def bootstrap(self, admin_key: Optional[str]) -> dict[str, str]:
        return await asyncio.to_thread(self.store.bootstrap, admin_key)

    async def verify(self, key: Optional[str]) -> Optional[KeyInfo]:
        if not self.store.verify(key):
            return None
        digest = hash_key(key)
        rec = self.store.get(digest)
        if rec is None:
            return None
        return KeyInfo(digest=digest, id=rec.id, name=rec.name, limits=Limits.from_mapping(rec.limits))

    async def verify_admin(self, key: Optional[str]) -> bool:
        return self.store.verify_admin(key)

    async def generate(self, name: str = "", limits: Optional[Limits] = None) -> str:
        return await asyncio.to_thread(self.store.generate, name, limits.public() if limits else None)

    async def list_keys(self) -> list[dict]:
        self._apply(self.buffer.take())
        return [_public(rec.public()) for _, rec in self.store.records()]

    async def revoke(self, key_or_id: str) -> Optional[str]:
        digest = await asyncio.to_thread(self.store.revoke, key_or_id)
        if digest is not None:
            self._streams.pop(digest, None)
        return digest

    async def update_limits(self, key_id: str, changes: dict) -> Optional[dict]:
        digest = self.store.find(key_id)
        rec = self.store.get(digest) if digest else None
        if rec is None:
            return None
        merged = {**rec.limits, **changes}
        rec.limits = {k: v for k, v in merged.items() if v is not None}
        await asyncio.to_thread(self.store.save)
        return Limits.from_mapping(rec.limits).public()

    async def is_active(self, digests: list[str]) -> dict[str, bool]:
        return {d: self.store.get(d) is not None for d in digests}

    # --- limits -------------------------------------------------------------------------------------
    async def check_request(self, info: KeyInfo) -> None:
        limit = info.limits.requests_per_minute
        if limit is not None:
            minute = int(time.time() // 60)
            seen_minute, count = self._minute.get(info.digest, (minute, 0))
            count = count + 1 if seen_minute == minute else 1
            self._minute[info.digest] = (minute, count)
            if count > limit:
                raise QuotaExceeded.requests_per_minute(limit)
        await self.check_audio(info)

    async def check_audio(self, info: KeyInfo) -> None:
        limit = info.limits.audio_minutes_per_day
        if limit is None:
            return
        day = today()
        rec = self.store.get(info.digest)
        used = (rec.usage.get("days", {}).get(day, {}).get("audio_seconds", 0.0) if rec else 0.0)
        used += self.buffer.pending_audio(info.digest, day)
        if used >= limit * 60:
            raise QuotaExceeded.audio_minutes_per_day(limit)

    async def open_stream(self, info: KeyInfo, stream_id: str) -> None:
        limit = info.limits.max_streams
        streams = self._streams[info.digest]
        if limit is not None and len(streams) >= limit:
            raise QuotaExceeded.max_streams(limit)
        streams.add(stream_id)

    async def close_stream(self, info: KeyInfo, stream_id: str) -> None:
        self._streams.get(info.digest, set()).discard(stream_id)

    def record(self, digest: str, *, requests: int = 0, audio_s: float = 0.0, streams: int = 0) -> None:
        self.buffer.add(digest, requests=requests, audio_s=audio_s, streams=streams)

    async def usage(self, key_id: str) -> Optional[dict]:
        self._apply(self.buffer.take())
        digest = self.store.find(key_id)
        rec = self.store.get(digest) if digest else None
        if rec is None:
            return None
        return usage_report(rec.id, rec.name, rec.usage, len(self._streams.get(digest, ())))


def _public(rec: dict) -> dict:
    usage = rec.pop("usage", {}) or {}
    rec["limits"] = Limits.from_mapping(rec.get("limits")).public()
    rec["usage"] = {**empty(), **(usage.get("total") or {})}
    return rec


def usage_report(key_id: str, name: str, usage: dict, open_streams: int) -> dict:
    days = usage.get("days") or {}
    return {
        "id": key_id,
        "name": name,
        "total": {**empty(), **(usage.get("total") or {})},
        "days": [{"date": day, **{**empty(), **days[day]}} for day in sorted(days, reverse=True)],
        "open_streams": open_streams,
    }
