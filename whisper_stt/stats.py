"""Server-wide counters shown by /, /health and /stats. One instance, owned by the app."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Optional


@dataclass
class ConnectionInfo:
    id: str
    client: str
    kind: str  # "websocket"
    connected_at: float = field(default_factory=time.time)
    authenticated: bool = False
    audio_seconds: float = 0.0
    transcriptions: int = 0
    lag_s: float = 0.0  # streaming: received audio not yet processed

    def public(self) -> dict:
        return {
            "id": self.id,
            "client": self.client,
            "kind": self.kind,
            "connected_for_s": round(time.time() - self.connected_at, 1),
            "authenticated": self.authenticated,
            "audio_seconds": round(self.audio_seconds, 2),
            "transcriptions": self.transcriptions,
            "lag_s": self.lag_s,
        }


class ServerStats:
    """Connections and request counters.

    Authenticated WebSockets count against ``max_connections``; sockets still waiting for their key have a
    budget of their own (``max_pending``), so clients that never authenticate cannot lock real ones out.
    """

    def __init__(self, max_connections: int, max_pending: Optional[int] = None) -> None:
        self.max_connections = max_connections
        self.max_pending = max_pending if max_pending is not None else max_connections
        self.started_at = time.time()
        self.connections: dict[str, ConnectionInfo] = {}
        self.total_connections = 0
        self.total_requests = 0
        self.total_errors = 0
        self.refused_connections = 0
        self._ids = itertools.count(1)

    @property
    def uptime_s(self) -> float:
        return round(time.time() - self.started_at, 1)

    @property
    def active(self) -> int:
        """Authenticated connections (the ones ``max_connections`` limits)."""
        return sum(1 for c in self.connections.values() if c.authenticated)

    @property
    def pending(self) -> int:
        """Connections still waiting for their API key."""
        return len(self.connections) - self.active

    def load(self) -> str:
        return f"{self.active}/{self.max_connections}"

    def open_connection(self, client: str, kind: str = "websocket") -> ConnectionInfo | None:
        """Register a connection that has not authenticated yet, or return None when that budget is spent."""
        if self.pending >= self.max_pending:
            return None
        info = ConnectionInfo(id=f"c{next(self._ids)}", client=client, kind=kind)
        self.connections[info.id] = info
        self.total_connections += 1
        return info

    def admit(self, info: ConnectionInfo) -> bool:
        """The connection authenticated: count it against ``max_connections``; False when the server is full."""
        if not info.authenticated and self.active >= self.max_connections:
            self.refused_connections += 1
            return False
        info.authenticated = True
        return True

    def close_connection(self, info: ConnectionInfo) -> None:
        self.connections.pop(info.id, None)
