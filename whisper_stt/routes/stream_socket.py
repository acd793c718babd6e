"""What every header-authenticated streaming WebSocket shares (OpenAI Realtime, Deepgram live).

The key arrives with the handshake (a header or a subprotocol), so a socket is pending for one key check
only. Each connection is registered in ``ctx.websockets`` with the attributes the rest of the server
uses there: ``info`` (the connection budget's entry), ``key_digest`` (revocation by key), ``revoke()``,
``shutdown(grace)``, ``evict()``. A protocol module subclasses :class:`StreamSocket`, maps the core's
events to its messages (``on_event``) and parses its client messages (``on_text`` / ``on_binary``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Optional

from fastapi import WebSocket
from starlette.responses import JSONResponse
from starlette.websockets import WebSocketDisconnect

from ..keys import hash_key
from ..untrusted import dumps
from .live_socket import CLOSE_GOING_AWAY, CLOSE_NORMAL, LiveSocket

log = logging.getLogger(__name__)

CLOSE_POLICY = 1008
CLOSE_TRY_AGAIN_LATER = 1013
FLUSH_S = 10.0  # revocation / quota end: how long the open utterance's final may take


class Closed(Exception):
    """The client went away."""


class Refused(Exception):
    """The key check failed: ``status`` (401, 429, 503) and a message for the client."""

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class StreamSocket(LiveSocket):
    """One streaming connection of a header-authenticated protocol."""

    name = "stream"

    async def send_json(self, value: dict) -> None:
        await self.send_text(dumps(value))

    # --- protocol hooks -----------------------------------------------------------------------------
    async def error(self, message: str, code: str, **extra) -> None:
        raise NotImplementedError

    async def on_text(self, text: str) -> None:
        raise NotImplementedError

    async def on_binary(self, data: bytes) -> None:
        raise NotImplementedError

    async def on_event(self, event) -> None:
        raise NotImplementedError

    async def on_open(self) -> None:
        """Authenticated and accepted: greet the client (session.created, nothing ...)."""

    # --- the server's handles (revocation, eviction, quotas; flush and shutdown: LiveSocket) ---------
    async def _end_with(self, message: str, code: str, reason: str) -> None:
        if self.revoked:
            return
        self.revoked = True
        await self.flush(FLUSH_S)
        await self.error(message, code)
        await self.close(CLOSE_POLICY, reason)

    async def revoke(self) -> None:
        await self._end_with("This API key has been revoked; the connection is closed.", "invalid_api_key",
                             "api key revoked")

    async def end_for_quota(self, reason: str) -> None:
        await self._end_with(f"{reason} The stream is closed after its last transcript.", "quota_exceeded",
                             "quota exceeded")

    async def evict(self) -> None:
        await self.close(CLOSE_TRY_AGAIN_LATER, "too many connections waiting to authenticate")

    # --- serving ---------------------------------------------------------------------------------
    async def serve(self) -> None:
        timeout = self.ctx.settings.idle_timeout_s
        while True:
            try:
                message = await asyncio.wait_for(self.ws.receive(), timeout)
            except asyncio.TimeoutError:
                await self.error(f"Closing idle connection after {timeout:g} s.", "idle_timeout")
                await self.close(CLOSE_NORMAL, "idle timeout")
                return
            if message["type"] == "websocket.disconnect":
                raise Closed()
            if self.revoked:
                continue
            if message.get("bytes") is not None:
                await self.on_binary(message["bytes"])
            elif message.get("text") is not None:
                await self.on_text(message["text"])


async def check_key(ctx: Any, conn: StreamSocket, key: Optional[str]) -> None:
    """Verify ``key`` with the server's key store (the state backend where there is one); raises Refused."""
    if not ctx.settings.auth_enabled:
        return
    if not key:
        raise Refused(401, "Missing API key.", "invalid_api_key")
    state = getattr(ctx, "state", None)
    if state is None or not hasattr(state, "open_stream"):
        if not ctx.keys.verify(key):
            raise Refused(401, "Invalid API key.", "invalid_api_key")
        conn.key_digest = hash_key(key)
        return
    try:
        ensure = getattr(ctx, "ensure_started", None)
        if ensure is not None:
            await ensure()
        info = await state.verify(key)
        if info is not None:
            await state.check_request(info)
            await state.open_stream(info, conn.info.id)
    except Exception as exc:  # the state backend's QuotaExceeded / StateUnavailable
        name = type(exc).__name__
        if name == "QuotaExceeded":
            raise Refused(429, f"{exc} Retry after {getattr(exc, 'retry_after', 60)} s.", "quota_exceeded") from None
        if name == "StateUnavailable":
            raise Refused(503, str(exc), "state_unavailable") from None
        raise
    if info is None:
        raise Refused(401, "Invalid API key.", "invalid_api_key")
    conn.key_info, conn.key_digest = info, info.digest
    state.record(info.digest, requests=1, streams=1)


async def run_socket(
    websocket: WebSocket,
    factory,
    key: Optional[str],
    *,
    subprotocol: Optional[str] = None,
    deny_with_http: bool = False,
) -> None:
    """The whole life of one connection: budget, key check, accept, serve, clean up.

    Args:
        factory: ``(websocket, ctx, info) -> StreamSocket``.
        key: the API key from the handshake (None when absent).
        subprotocol: the subprotocol to accept with (one the client offered).
        deny_with_http: a refused key is answered with an HTTP error on the handshake (as Deepgram
            does) instead of an accepted socket that sends an error event and closes.
    """
    ctx = websocket.app.state.ctx
    client = f"{websocket.client.host}:{websocket.client.port}" if websocket.client else "unknown"
    if ctx.shutting_down:
        await websocket.close(code=CLOSE_GOING_AWAY, reason="server shutting down")
        return
    info = ctx.stats.open_connection(client, kind="websocket")
    if info is None:
        await _refuse(websocket, None, Refused(503, "Too many connections are waiting; try again later.",
                                               "server_busy"), deny_with_http, subprotocol, CLOSE_TRY_AGAIN_LATER)
        return
    conn = factory(websocket, ctx, info)
    ctx.websockets.add(conn)
    try:
        try:
            await check_key(ctx, conn, key)
            if not ctx.stats.admit(info):
                raise Refused(503, f"Server is at its connection limit ({ctx.stats.max_connections}); "
                              "try again later.", "server_busy")
        except Refused as exc:
            close = CLOSE_TRY_AGAIN_LATER if exc.status in (429, 503) else CLOSE_POLICY
            await _refuse(websocket, conn, exc, deny_with_http, subprotocol, close)
            return
        if conn.evicted:
            return
        await websocket.accept(subprotocol=subprotocol)
        await conn.on_open()
        await conn.serve()
    except (Closed, WebSocketDisconnect):
        pass
    except Exception:
        log.exception("%s connection %s failed", conn.name, info.id)
        ctx.stats.total_errors += 1
        await conn.close(1011, "internal error")
    finally:
        ctx.websockets.discard(conn)
        await conn.end_session()
        await conn.release_key()
        ctx.stats.close_connection(info)
        log.info("%s WebSocket %s (%s) closed: %.1f s audio, %d transcriptions",
                 conn.name, info.id, client, info.audio_seconds, info.transcriptions)


async def _refuse(websocket: WebSocket, conn: Optional[StreamSocket], exc: Refused, deny_with_http: bool,
                  subprotocol: Optional[str], close_code: int) -> None:
    try:
        if deny_with_http:
            await websocket.send_denial_response(JSONResponse(
                {"err_code": exc.code.upper(), "err_msg": str(exc)}, status_code=exc.status))
            return
        await websocket.accept(subprotocol=subprotocol)
        if conn is not None:
            await conn.error(str(exc), exc.code)
        await websocket.close(code=close_code, reason=exc.code)
    except (WebSocketDisconnect, RuntimeError, OSError):
        pass
