"""Command line -> Settings. Flags keep the original server's names and defaults."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from pydantic import ValidationError

from .config import Settings


def build_parser() -> argparse.ArgumentParser:
    # Defaults are SUPPRESSed so an absent flag falls through to the environment, then Settings' default.
    p = argparse.ArgumentParser(
        prog="whisper_server.py",
        description="Real-time speech-to-text server on faster-whisper (REST + WebSocket, WS and WSS).",
        argument_default=argparse.SUPPRESS,
        epilog="Every option can also be set as an environment variable WHISPER_<OPTION> "
        "(e.g. WHISPER_MAX_CONNECTIONS=50); the admin key also as ADMIN_KEY, or read from the file "
        "named by --admin-key-file / WHISPER_ADMIN_KEY_FILE (a mounted secret).",
    )
    add = p.add_argument
    add("--mode", choices=["ws", "wss", "both"], help="ws, wss or both (default: both)")
    add("--host", help="interface to listen on (default: 0.0.0.0)")
    add("--ws-port", type=int, help="plain HTTP/WS port (default: 8765)")
    add("--wss-port", type=int, help="HTTPS/WSS port (default: 8766)")
    add("--ssl-key", help="TLS private key (default: ./key.pem)")
    add("--ssl-cert", help="TLS certificate (default: ./cert.pem)")
    add("--debug", action="store_true", help="save received audio under --debug-dir")
    add("--debug-dir", help="where debug audio goes (default: ./debug_audio)")
    add("--no-auth", action="store_true", help="disable API-key authentication (testing only)")
    add("--admin-key", help="admin key for /admin/* (also env ADMIN_KEY); generated when absent")
    add("--admin-key-file", metavar="PATH",
        help="read the admin key from this file, e.g. a mounted secret (also env WHISPER_ADMIN_KEY_FILE)")
    add("--generate-key", nargs="?", const="generated", metavar="NAME",
        help="create a new API key at start-up and print it once")
    add("--model", help="'base' (bundled, default), a CTranslate2 model directory, or a Whisper name "
        "such as small / large-v3 / distil-large-v3 to download into --models-dir")
    add("--models-dir", help="where models are kept (default: ./models)")
    add("--device", choices=["auto", "cpu", "cuda"], help="default: auto (cuda when usable)")
    add("--compute-type", help="default: auto (float16 on GPU, int8 on CPU)")
    add("--device-index", metavar="N[,N...]",
        help="GPU(s) to run on (default: 0); a list such as 0,1 loads a model and a stream lane per GPU "
        "and spreads streams and files over them; ignored on the CPU")
    add("--cpu-threads", type=int, help="CTranslate2 threads per worker; 0 = all cores")
    add("--max-connections", type=int, help="WebSocket connections at once (default: 200)")
    add("--max-concurrent-transcriptions", type=int,
        help="model calls at once; 0 = auto: 15 on GPU, 1 on CPU")
    add("--max-upload-mb", type=float, help="largest upload in MB (default: 100)")
    add("--max-audio-buffer-s", type=float, help="cap on buffered real-time audio, s (default: 300)")
    add("--idle-timeout-s", type=float, help="close idle WebSockets after this, s (default: 600)")
    add("--max-audio-duration-s", type=float,
        help="longest audio per request (files over REST, /v1, WebSocket file mode), s; "
        "0 = auto: 4 h on GPU, 1 h on CPU (default: 0)")
    add("--max-unauthenticated-connections", type=int,
        help="WebSockets still waiting for their API key, at once (default: 32)")
    add("--jobs-dir", help="uploads, checkpoints and the SQLite job store of POST /v1/jobs (default: ./jobs)")
    add("--jobs-retention-days", type=float,
        help="delete ended jobs (results and uploads) after this many days; 0 = never (default: 7)")
    add("--max-queued-jobs-per-key", type=int, help="queued jobs one key may have; 0 = unlimited (default: 100)")
    add("--max-job-duration-s", type=float,
        help="longest audio per job, s; 0 = auto: 12 h on GPU, 4 h on CPU (default: 0)")
    add("--job-workers", type=int,
        help="jobs this process transcribes at once; 0 = accept jobs but leave them to workers (default: 1)")
    add("--job-lease-s", type=float,
        help="a worker that stops renewing its job (killed) loses it to another after this, s (default: 30)")
    add("--worker", action="store_true",
        help="only take and transcribe jobs (from --state-url Redis, or the SQLite store in --jobs-dir): "
        "no HTTP port; uploads are read from --jobs-dir, a volume shared with the HTTP replicas")
    add("--beam-size", type=int, help="beam size for file transcription (default: 5)")
    add("--file-batch-size", type=int,
        help="file transcription: speech chunks per batch (default: 8); 0 = sequential decoding")
    add("--stream-workers", type=int,
        help="real-time stream lane: batches running at once; 0 = auto: 2 on CPU, 1 on GPU (default: 0)")
    add("--stream-cpu-threads", type=int,
        help="CPU: threads per stream-lane call; 0 = auto: cores / stream workers, on a copy of the model "
        "of its own when that differs from --cpu-threads (default: 0)")
    add("--key-file", help="API key store (default: ./api_keys.json)")
    add("--state-url", metavar="URL",
        help="share keys, limits and usage between replicas in Redis: redis://host:port/db "
        "(also env WHISPER_STATE_URL); default: the JSON key file")
    add("--import-keys", metavar="FILE", dest="import_keys",
        help="copy the hashed keys (and admin key) of an api_keys.json into --state-url, then exit")
    add("--metrics-require-key", action="store_true",
        help="require an API key for GET /metrics (default: open, like /health)")
    add("--webhook-secret", metavar="SECRET",
        help="key that signs job webhooks (better: env WHISPER_WEBHOOK_SECRET); default: generated once "
        "into <jobs-dir>/webhook_secret")
    add("--webhook-allow-private", action="store_true",
        help="allow webhook URLs on private, loopback or link-local addresses (default: refused)")
    add("--webhook-max-attempts", type=int, help="webhook POSTs per job end, retries included (default: 5)")
    add("--webhook-timeout-s", type=float, help="time for one webhook POST, s (default: 10)")
    add("--webhook-backoff-s", type=float,
        help="first wait before a webhook retry, s; doubles each retry, with jitter (default: 2)")
    add("--log-level", choices=["critical", "error", "warning", "info", "debug"], help="default: info")
    return p


def parse(argv: Optional[Sequence[str]] = None) -> tuple[Settings, Optional[str]]:
    """Returns the settings and the name for --generate-key (None when not asked)."""
    settings, generate_key, _ = parse_all(argv)
    return settings, generate_key


def parse_all(argv: Optional[Sequence[str]] = None) -> tuple[Settings, Optional[str], Optional[str]]:
    """The settings, --generate-key's name and --import-keys' file (None when not asked)."""
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    generate_key = args.pop("generate_key", None)
    import_keys = args.pop("import_keys", None)
    try:
        settings = Settings(**args)
    except ValidationError as exc:
        problems = "; ".join(
            # whole-model checks have no field location; their messages name the setting themselves
            f"{'.'.join(str(x) for x in e['loc']).replace('_', '-')}: {e['msg']}" if e["loc"] else e["msg"]
            for e in exc.errors()
        )
        parser.exit(2, f"whisper_server.py: error: invalid setting: {problems}\n")
    if import_keys is not None and not settings.state_url:
        parser.exit(2, "whisper_server.py: error: --import-keys needs --state-url (where to copy the keys)\n")
    return settings, generate_key, import_keys


def main(argv: Optional[Sequence[str]] = None) -> int:
    settings, generate_key, import_keys = parse_all(argv)
    if import_keys is not None:
        from .state.importer import import_keys_main

        return import_keys_main(import_keys, settings.state_url)
    if settings.worker:
        from .worker import run_worker

        return run_worker(settings)
    from .serve import serve

    return serve(settings, generate_key)


if __name__ == "__main__":
    sys.exit(main())
