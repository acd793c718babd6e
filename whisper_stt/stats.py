"""Server-wide counters shown by /, /health and /stats. One instance, owned by the app."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field


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
    def __init__(self, max_connections: int) -> None:
        self.max_connections = max_connections
        self.started_at = time.time()
        self.connections: dict[str, ConnectionInfo] = {}
        self.total_connections = 0
        self.total_requests = 0
        self.total_errors = 0
        self._ids = itertools.count(1)

    @property
    def uptime_s(self) -> float:
        return round(time.time() - self.started_at, 1)

    def load(self) -> str:
        return f"{len(self.connections)}/{self.max_connections}"

    def open_connection(self, client: str, kind: str = "websocket") -> ConnectionInfo | None:
        """Register a connection, or return None when the server is full."""
        if len(self.connections) >= self.max_connections:
            return None
        info = ConnectionInfo(id=f"c{next(self._ids)}", client=client, kind=kind)
        self.connections[info.id] = info
        self.total_connections += 1
        return info

    def close_connection(self, info: ConnectionInfo) -> None:
        self.connections.pop(info.id, None)
