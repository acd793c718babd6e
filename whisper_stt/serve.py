"""serve(): build the engine and key store once, then run the plain and/or TLS server in one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
import ssl
import sys
from pathlib import Path
from typing import Iterator

import uvicorn

from .access_log import install_secret_filter
from .app import create_app
from .config import Settings
from .engine import Engine
from .keys import KeyStore, KeyStoreError
from .state import StateUnavailable, open_state
from .models import ModelError

log = logging.getLogger("whisper_stt")


class StartupError(RuntimeError):
    """A problem the operator must fix; printed as one line, exit code 1."""


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signal handling to serve(), which stops all servers at once."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def leave(engine: Engine, code: int) -> int:
    """Return ``code`` for the caller to exit with, unless model calls are still running after a clean
    stop: then exit at once. Nobody waits for those results any more (a job's been handed back to the
    queue, a REST client's grace period is over), a running CTranslate2 call cannot be interrupted, and
    the interpreter would otherwise join its thread: a stopped worker lived on for the rest of its piece
    (pieces are 30-120 s of audio), which can outlast a supervisor's patience (Kubernetes: 30 s)."""
    running = engine.active
    if not running:
        return code
    log.info("Not waiting for %d model call(s) still running: their results are no longer wanted", running)
    logging.shutdown()  # flushes the log handlers; os._exit runs no atexit hooks
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
        force=True,
    )
    install_secret_filter()
    # faster-whisper logs every call at INFO; our access log already has one line per request.
    if level != "debug":
        logging.getLogger("faster_whisper").setLevel(logging.WARNING)


def _check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise StartupError(f"Port {port} on {host} is already in use; pick another with the port flag.")
            raise StartupError(f"Cannot listen on {host}:{port}: {exc.strerror or exc}")


def build_ssl_context(settings: Settings) -> ssl.SSLContext:
    key, cert = Path(settings.ssl_key), Path(settings.ssl_cert)
    missing = [str(p) for p in (key, cert) if not p.is_file()]
    if missing:
        raise StartupError(
            f"TLS needs a key and a certificate, but {' and '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} missing. Make a self-signed pair with: "
            f"python generate_ssl_cert.py --key {key} --cert {cert}  (or pass --ssl-key/--ssl-cert)."
        )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile=str(cert), keyfile=str(key))
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc) or "key values mismatch" in str(exc):
            raise StartupError(f"The TLS key {key} does not belong to the certificate {cert}.")
        raise StartupError(f"Cannot load the TLS key/certificate ({key}, {cert}): {exc.reason or exc}")
    except OSError as exc:
        raise StartupError(f"Cannot read the TLS key/certificate ({key}, {cert}): {exc.strerror or exc}")
    return context


def _uvicorn_config(app, settings: Settings, port: int, ssl_context: ssl.SSLContext | None) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=settings.host,
        port=port,
        lifespan="off",  # start-up work is done once in serve(), not per server
        log_config=None,
        access_log=False,  # AccessLogMiddleware logs one line per request, with keys masked
        log_level=settings.log_level,
        timeout_graceful_shutdown=int(settings.graceful_shutdown_s) or None,
        # file mode may send a whole upload in one frame
        ws_max_size=max(16 * 1024 * 1024, settings.max_upload_bytes + 64 * 1024),
        ssl_context_factory=(lambda _cfg, _default: ssl_context) if ssl_context else None,
        # any value makes uvicorn treat this server as TLS; the context above is what is used
        ssl_certfile=str(settings.ssl_cert) if ssl_context else None,
    )


def print_secrets(created: dict[str, str], generated: str | None) -> None:
    """The one place key values are ever shown: once, when they are created."""
    lines = []
    if "admin" in created:
        lines.append(f"  Admin key (X-Admin-Key): {created['admin']}")
    if "api" in created:
        lines.append(f"  Default API key (X-API-Key): {created['api']}")
    if generated:
        lines.append(f"  New API key (--generate-key): {generated}")
    if lines:
        bar = "=" * 72
        print(
            f"{bar}\nNew keys. Copy them now: they are stored only as hashes and cannot be shown again.\n"
            + "\n".join(lines) + f"\n{bar}",
            flush=True,
        )


def prepare(settings: Settings, generate_key: str | None = None):
    """Everything that can fail before serving: TLS, ports, keys, model. Returns the app."""
    ssl_context = build_ssl_context(settings) if settings.mode in ("wss", "both") else None
    if settings.mode == "both" and settings.ws_port == settings.wss_port:
        raise StartupError("--ws-port and --wss-port must differ in --mode both.")
    ports = [p for m, p in (("ws", settings.ws_port), ("wss", settings.wss_port)) if settings.mode in (m, "both")]
    for port in ports:
        _check_port_free(settings.host, port)

    admin = settings.admin_key.get_secret_value() if settings.admin_key else None
    keys, state = None, None
    try:
        if settings.state_url:
            from .state.redis_backend import bootstrap_sync

            state = open_state(settings.state_url, admin_key=admin)
            created, generated = bootstrap_sync(settings.state_url, admin, generate_key)
            log.info("Keys, limits and usage are shared in Redis at %s.", state.where)
        else:
            keys = KeyStore.open(settings.key_file)
            created = keys.bootstrap(admin)
            generated = keys.generate(generate_key) if generate_key is not None else None
    except (KeyStoreError, OSError, StateUnavailable, ValueError) as exc:
        raise StartupError(str(exc))
    print_secrets(created, generated)
    # Secrets are printed once, above; from here on any log line that carries one is masked.
    install_secret_filter(tuple(v for v in (admin, created.get("admin")) if v))
    if not settings.auth_enabled:
        log.warning("Authentication is DISABLED (--no-auth): anyone who can reach the port can use it.")

    try:
        engine = Engine.load(settings)
    except ModelError as exc:
        raise StartupError(str(exc))
    return create_app(settings, engine, keys, state=state), ssl_context


async def _serve_all(app, settings: Settings, ssl_context: ssl.SSLContext | None) -> None:
    servers: list[_Server] = []
    if settings.mode in ("ws", "both"):
        servers.append(_Server(_uvicorn_config(app, settings, settings.ws_port, None)))
    if settings.mode in ("wss", "both"):
        servers.append(_Server(_uvicorn_config(app, settings, settings.wss_port, ssl_context)))

    loop = asyncio.get_running_loop()
    ctx = app.state.ctx
    stopping: list[asyncio.Task] = []

    async def graceful_stop() -> None:
        # WebSockets first (flush open utterances, close 1001) while the servers still run; then
        # uvicorn stops accepting and waits for in-flight HTTP requests up to the same grace period.
        await ctx.close_websockets(settings.graceful_shutdown_s)
        for server in servers:
            server.should_exit = True

    def stop(sig: signal.Signals) -> None:
        if stopping:  # a second Ctrl-C: stop waiting for in-flight work
            log.info("Received %s again: forcing shutdown", sig.name)
            for server in servers:
                server.should_exit = server.force_exit = True
            return
        log.info("Received %s: shutting down (grace %.0f s)", sig.name, settings.graceful_shutdown_s)
        stopping.append(loop.create_task(graceful_stop()))

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop, sig)
    # Jobs left queued (or running when a previous process died) start now, not at the first request.
    await ctx.ensure_jobs()
    try:
        await asyncio.gather(*(server.serve() for server in servers))
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        try:  # running jobs go back to the queue at once (they resume from their checkpoints)
            await asyncio.wait_for(ctx.stop_jobs(), 10)
        except Exception:
            log.exception("Stopping the job runner failed")
        try:  # usage and stream slots reach the backend before the process goes
            await asyncio.wait_for(ctx.state.close(), 10)
        except Exception:
            log.exception("Closing the state backend failed")
    if any(not server.started for server in servers):
        raise StartupError("A server failed to start; see the log above.")


def serve(settings: Settings, generate_key: str | None = None) -> int:
    """Run the server until SIGINT/SIGTERM. Returns the process exit code."""
    configure_logging(settings.log_level)
    try:
        app, ssl_context = prepare(settings, generate_key)
    except StartupError as exc:
        log.error("%s", exc)
        return 1
    ctx = app.state.ctx
    try:
        asyncio.run(_serve_all(app, settings, ssl_context))
    except StartupError as exc:
        log.error("%s", exc)
        return 1
    except SystemExit as exc:  # uvicorn exits the process when a bind fails after our check
        return int(exc.code or 1)
    finally:
        if ctx.keys is not None:
            ctx.state.close_sync()  # the JSON file: last usage and counters
        ctx.engine.close()
    log.info("Server stopped.")
    return leave(ctx.engine, 0)
