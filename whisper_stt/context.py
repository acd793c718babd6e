"""AppState: the objects one server shares between its routes, made once by create_app().

A leaf module: routes import it (never app.py), so the application and its routes do not import each other.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

from .config import Settings
from .state import QuotaExceeded, StateBackend, StateUnavailable
from .stats import ServerStats

if TYPE_CHECKING:
    from .engine import Engine
    from .jobs.service import JobService
    from .keys import KeyStore

log = logging.getLogger(__name__)
WATCH_S = 0.5  # open streams: revocation, per-day audio limits and usage are checked this often


@dataclass
class AppState:
    settings: Settings
    engine: "Engine"
    keys: Optional["KeyStore"]  # the JSON key file (None when the state lives in Redis)
    stats: ServerStats
    state: Optional[StateBackend] = None  # keys, limits and usage (JSON file or Redis)
    websockets: set = field(default_factory=set)  # live WebSocket connections (every protocol)
    metrics: Any = None  # this app's Prometheus registry (GET /metrics)
    jobs: Optional["JobService"] = None  # POST /v1/jobs: the store, this process's runner, retention
    shutting_down: bool = False
    _background: set = field(default_factory=set)  # tasks started by the app that must not be collected
    _watcher: Optional[asyncio.Task] = None

    @property
    def max_audio_s(self) -> float:
        """The per-request audio duration limit in force (--max-audio-duration-s, or the device's default)."""
        if self.settings.max_audio_duration_s > 0:
            return self.settings.max_audio_duration_s
        return 4 * 3600.0 if self.engine.device == "cuda" else 3600.0

    async def ensure_started(self) -> None:
        """Start the state backend's background work and the stream watcher, once, on the serving loop."""
        if self._watcher is None or self._watcher.done():
            await self.state.start()
            self._watcher = asyncio.create_task(self._watch(), name="stream-watcher")
        await self.ensure_jobs()

    async def ensure_jobs(self) -> None:
        """Start the job service (runner, retention sweep, queue figures) on the serving loop, once."""
        if self.jobs is not None:
            await self.jobs.start()

    async def stop_jobs(self) -> None:
        """Server stopping: running jobs go back to the queue (they resume from their checkpoints)."""
        if self.jobs is not None:
            await self.jobs.stop()

    def spawn(self, coro) -> asyncio.Task:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def end_streams_of(self, key_digest: str) -> int:
        """A key was revoked: its open WebSockets get their open utterance's final, then KEY_REVOKED and
        close 4001. Returns how many were told; the work runs in the background."""
        conns = [c for c in self.websockets if getattr(c, "key_digest", None) == key_digest
                 and not getattr(c, "revoked", False)]
        for conn in conns:
            self.spawn(conn.revoke())
        return len(conns)

    def record_stream_audio(self, conn) -> None:
        """Count the audio a connection took since the last call against its key's usage."""
        if getattr(conn, "key_info", None) is None:
            return
        seconds = conn.info.audio_seconds - conn.recorded_audio_s
        if seconds > 0:
            conn.recorded_audio_s += seconds
            self.state.record(conn.key_info.digest, audio_s=seconds)

    async def _watch(self) -> None:
        """Every WATCH_S: record the audio each stream took, end streams whose key was revoked (on any
        replica) and streams whose key's daily audio is used up (after their current utterance)."""
        while True:
            await asyncio.sleep(WATCH_S)
            try:
                await self._watch_once()
            except StateUnavailable:
                pass  # keys verified recently keep working; limits wait for the backend
            except Exception:
                log.exception("Stream watcher round failed")

    async def _watch_once(self) -> None:
        conns = [c for c in self.websockets if getattr(c, "key_info", None) is not None]
        for conn in conns:
            self.record_stream_audio(conn)
        digests = sorted({c.key_info.digest for c in conns})
        active = await self.state.is_active(digests)
        for digest, alive in active.items():
            if not alive:
                self.end_streams_of(digest)
        for conn in conns:
            if conn.revoked or getattr(conn, "quota_ended", False) or conn.key_info.limits.audio_minutes_per_day is None:
                continue
            try:
                await self.state.check_audio(conn.key_info)
            except QuotaExceeded as exc:
                conn.quota_ended = True
                self.spawn(conn.end_for_quota(str(exc)))

    async def close_websockets(self, grace: float) -> None:
        """Server stopping: each live WebSocket flushes its open utterance, then closes with 1001."""
        self.shutting_down = True
        conns = list(self.websockets)
        if conns:
            log.info("Closing %d WebSocket connection(s) (1001)", len(conns))
            await asyncio.wait([asyncio.create_task(c.shutdown(grace)) for c in conns], timeout=grace + 1)
        if self._watcher is not None:
            self._watcher.cancel()
        for conn in conns:  # the last audio of the closed streams
            self.record_stream_audio(conn)
