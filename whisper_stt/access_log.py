"""One readable log line per HTTP request: client, method, path, status, duration, audio seconds.

Replaces uvicorn's access log, which would print API keys that appear in paths (DELETE /admin/keys/sk-...);
:class:`SecretFilter` masks credentials in every other log line, uvicorn's included.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("whisper_stt.access")

_KEY = re.compile(r"sk-[0-9A-Za-z]{8,}")
# Query parameters whose value is a credential whatever it looks like.
_SECRET_PARAM = re.compile(
    r"(?i)([?&;](?:api[_-]?key|key|token|access[_-]?token|auth|authorization|secret|password|passwd|"
    r"admin[_-]?key|x-api-key|sig|signature)=)([^&;\s\"']+)"
)
# Any other query value that looks like a token (long, no spaces).
_LONG_PARAM = re.compile(r"([?&;][^=&;\s\"']+=)([A-Za-z0-9_\-.~%+/]{20,})")
_BEARER = re.compile(r"(?i)\b(bearer|token|basic)\s+([A-Za-z0-9_\-.~+/=]{8,})")
# /admin/keys/<key or id>: a 16-hex id is public (it is in the listing); anything else may be a secret.
_ADMIN_PATH = re.compile(r"(/admin/keys/)(?!generate\b)(?![0-9a-f]{16}(?:[\s\"'?/]|$))([^\s\"'?/]+)")


def _mask(secret: str) -> str:
    return f"{secret[:7]}...{secret[-4:]}" if len(secret) >= 24 else "***"


def mask_keys(text: str) -> str:
    return _KEY.sub(lambda m: _mask(m.group()), text)


def mask_secrets(text: str, known: tuple[str, ...] = ()) -> str:
    """Hide every credential in a log line: known secret values wherever they appear, ``sk-`` keys, query
    values of credential-like parameters and any long token-like query value, Authorization-style
    tokens, and the key in /admin/keys/<key>."""
    for secret in known:
        if secret and secret in text:
            text = text.replace(secret, "***")
    text = _SECRET_PARAM.sub(lambda m: m.group(1) + "***", text)
    text = _LONG_PARAM.sub(lambda m: m.group(1) + "***", text)
    text = _BEARER.sub(lambda m: f"{m.group(1)} ***", text)
    text = _ADMIN_PATH.sub(lambda m: m.group(1) + "***", text)
    return mask_keys(text)


class SecretFilter(logging.Filter):
    """A handler filter: every record's final text goes through :func:`mask_secrets` (uvicorn's own lines,
    e.g. ``"WebSocket /ws/transcribe?api_key=..." [accepted]``, included)."""

    def __init__(self, known: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.known = tuple(k for k in known if k and len(k) >= 6)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: leave it to the handler's own error path
            return True
        masked = mask_secrets(message, self.known)
        if masked != message:
            record.msg, record.args = masked, None
        return True


class ClientFaultFilter(logging.Filter):
    """uvicorn logs a client's non-UTF-8 text frame (closed with 1007, the client's own fault) as an ERROR
    with a traceback, so any client could fill the log with tracebacks: one INFO line instead."""

    MESSAGES = frozenset({"Invalid UTF-8 sequence received from client."})

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg in self.MESSAGES:
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def install_client_fault_filter() -> None:
    """Once per process, on uvicorn's error logger (where those lines come from)."""
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, ClientFaultFilter) for f in logger.filters):
        logger.addFilter(ClientFaultFilter())


def install_secret_filter(known: tuple[str, ...] = ()) -> None:
    """Put a :class:`SecretFilter` on every handler of the root logger (where all loggers end up)."""
    for handler in logging.getLogger().handlers:
        for old in [f for f in handler.filters if isinstance(f, SecretFilter)]:
            handler.removeFilter(old)
        handler.addFilter(SecretFilter(known))


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
            mask_secrets(scope["path"]),
            status,
            seconds,
            f" audio={audio:.1f}s" if audio is not None else "",
        )
