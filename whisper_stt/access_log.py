"""One readable log line per HTTP request: client, method, path, status, duration, audio seconds.

Replaces uvicorn's access log, which would print API keys that appear in paths (DELETE /admin/keys/sk-...).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("whisper_stt.access")

_KEY = re.compile(r"sk-[0-9A-Za-z]{8,}")


def mask_keys(text: str) -> str:
    return _KEY.sub(lambda m: f"{m.group()[:7]}...{m.group()[-4:]}", text)


def client_of(scope: Scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "-"


class ObservingMiddleware:
    """Runs the app and then calls :meth:`observe` once per HTTP request with its status and duration
    (499 when the client went away first, 500 when an error escaped)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    def observe(self, scope: Scope, status: int, seconds: float) -> None:
        raise NotImplementedError

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        except asyncio.CancelledError:
            status = status or 499  # the client went away before an answer (nginx's convention)
            raise
        except Exception:
            status = status or 500  # the error handler outside answers 500
            raise
        finally:
            self.observe(scope, status or 500, time.perf_counter() - started)


class AccessLogMiddleware(ObservingMiddleware):
    def observe(self, scope: Scope, status: int, seconds: float) -> None:
        audio = scope.get("state", {}).get("audio_seconds")
        log.info(
            "%s %s %s %s %.3fs%s",
            client_of(scope),
            scope["method"],
            mask_keys(scope["path"]),
            status,
            seconds,
            f" audio={audio:.1f}s" if audio is not None else "",
        )
