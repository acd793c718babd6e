"""One Settings object for the whole server.

Precedence: command-line flag > environment variable > default. Every field can be set through the
environment as ``WHISPER_<FIELD>`` (e.g. ``WHISPER_MAX_CONNECTIONS=50``); the admin key also honours the
original's plain ``ADMIN_KEY``, or is read from the file named by ``WHISPER_ADMIN_KEY_FILE`` (or
``ADMIN_KEY_FILE``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Server configuration. Defaults follow the original server where it had one."""

    model_config = SettingsConfigDict(env_prefix="WHISPER_", extra="ignore", populate_by_name=True)

    # --- serving -------------------------------------------------------------------------------
    mode: Literal["ws", "wss", "both"] = Field(
        "both", description="ws: plain HTTP/WS; wss: HTTPS/WSS; both: both ports in one process."
    )
    host: str = Field("0.0.0.0", description="Interface to listen on.")
    ws_port: int = Field(8765, ge=1, le=65535, description="Plain HTTP/WS port.")
    wss_port: int = Field(8766, ge=1, le=65535, description="HTTPS/WSS port.")
    ssl_key: Path = Field(Path("./key.pem"), description="TLS private key (PEM).")
    ssl_cert: Path = Field(Path("./cert.pem"), description="TLS certificate (PEM).")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    graceful_shutdown_s: float = Field(
        10.0, ge=0, description="On SIGTERM/Ctrl-C, how long in-flight requests may finish."
    )

    # --- debug ---------------------------------------------------------------------------------
    debug: bool = Field(False, description="Save received audio under debug_dir.")
    debug_dir: Path = Field(Path("./debug_audio"), description="Where --debug writes audio.")

    # --- auth ----------------------------------------------------------------------------------
    no_auth: bool = Field(False, description="Disable API-key authentication (testing only).")
    admin_key: Optional[SecretStr] = Field(
        None,
        validation_alias=AliasChoices("admin_key", "WHISPER_ADMIN_KEY", "ADMIN_KEY"),
        description="Admin key for /admin/*. Generated and printed once when not given.",
    )
    admin_key_file: Optional[Path] = Field(
        None,
        validation_alias=AliasChoices("admin_key_file", "WHISPER_ADMIN_KEY_FILE", "ADMIN_KEY_FILE"),
        description="File whose content is the admin key (a mounted secret, e.g. /run/secrets/admin_key); "
        "surrounding whitespace is ignored. Exclusive with admin_key.",
    )
    key_file: Path = Field(Path("./api_keys.json"), description="Where API keys (hashed) are kept.")
    state_url: Optional[str] = Field(
        None,
        description="Shared state for many replicas: redis://host:port/db (or rediss://, unix://). Empty: "
        "keys, limits and usage live in key_file, for one replica.",
    )
    metrics_require_key: bool = Field(
        False, description="Require an API key for GET /metrics (open by default, like /health)."
    )

    # --- model / inference ---------------------------------------------------------------------
    model: str = Field(
        "base",
        description="'base' (bundled), a local CTranslate2 model directory, or a Whisper name / hub id "
        "to download into models_dir (needs internet).",
    )
    models_dir: Path = Field(Path("./models"), description="Where models are assembled/downloaded.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda when usable.")
    compute_type: str = Field("auto", description="auto: float16 on GPU, int8 on CPU.")
    device_index: str = Field(
        "0",
        description="GPU(s) to run on: 0, or a list such as 0,1 for a model and a stream lane per GPU "
        "(streams and files are spread over them). Ignored on the CPU.",
    )
    cpu_threads: int = Field(0, ge=0, description="CTranslate2 threads per worker; 0 = all cores.")
    max_concurrent_transcriptions: int = Field(
        0, ge=0, description="Model calls running at once; 0 = auto (15 on GPU, 1 on CPU)."
    )
    beam_size: int = Field(5, ge=1, le=20, description="Beam size for file transcription.")
    file_batch_size: int = Field(
        8, ge=0, le=64,
        description="File transcription: speech chunks decoded per batch; 0 = faster-whisper's sequential "
        "decoding (finer timestamps inside long speech, slower).",
    )
    vad_filter: bool = Field(
        True, description="Skip non-speech in file transcription (avoids text hallucinated on silence)."
    )
    stream_workers: int = Field(
        0, ge=0, le=16,
        description="Real-time stream lane: model calls (batches of finals or partials) at once; "
        "0 = auto: 2 on CPU, 1 on GPU.",
    )
    stream_cpu_threads: int = Field(
        0, ge=0,
        description="CPU: CTranslate2 threads per stream-lane call; 0 = auto: cores / stream workers. When it "
        "differs from --cpu-threads the lane gets its own copy of the model (base: ~110 MB more memory).",
    )

    # --- limits --------------------------------------------------------------------------------
    max_connections: int = Field(200, ge=1, description="WebSocket connections at once.")
    max_upload_mb: float = Field(100.0, gt=0, description="Largest accepted upload, in MB.")
    max_audio_buffer_s: float = Field(300.0, gt=0, description="Buffered real-time audio cap (s).")
    max_audio_duration_s: float = Field(
        0.0, ge=0,
        description="Longest audio one request may hold (files over REST, /v1 and WebSocket file mode), "
        "decided while decoding; 0 = auto: 4 h on GPU, 1 h on CPU.",
    )
    idle_timeout_s: float = Field(600.0, gt=0, description="Close idle WebSockets after this.")
    auth_timeout_s: float = Field(10.0, gt=0, description="Time for the WebSocket auth message.")
    max_unauthenticated_connections: int = Field(
        32, ge=1,
        description="WebSockets still waiting for their API key, at once; a budget of their own, so they "
        "never take the slots of authenticated clients.",
    )

    # --- jobs (POST /v1/jobs) --------------------------------------------------------------------
    jobs_dir: Path = Field(
        Path("./jobs"),
        description="Where jobs keep their uploads, checkpoints and (without Redis) the SQLite job store. "
        "Processes sharing it must be on one machine (SQLite locking) unless the queue lives in Redis.",
    )
    jobs_retention_days: float = Field(
        7.0, ge=0, description="Ended jobs (results and uploads) are deleted after this many days; 0 = never."
    )
    max_queued_jobs_per_key: int = Field(100, ge=0, description="Queued jobs one key may have; 0 = unlimited.")
    max_job_duration_s: float = Field(
        0.0, ge=0, description="Longest audio one job may hold; 0 = auto: 12 h on GPU, 4 h on CPU."
    )
    job_workers: int = Field(
        1, ge=0, le=64,
        description="Jobs this process transcribes at once; 0 = it only accepts jobs (workers run them).",
    )
    job_lease_s: float = Field(
        30.0, ge=1, le=3600,
        description="A claimed job's lease: a worker that stops renewing it (killed, cut off) loses the job to "
        "another after this long. Workers renew every lease/3 (at most every 5 s).",
    )
    worker: bool = Field(
        False,
        description="Run as a job worker only: load the model and take jobs from the job store (Redis at "
        "state_url, or the SQLite store in jobs_dir); no HTTP port, no keys.",
    )

    # --- job webhooks -------------------------------------------------------------------------
    webhook_secret: Optional[SecretStr] = Field(
        None,
        description="Key that signs job webhooks (HMAC-SHA256). Empty: generated once into "
        "<jobs_dir>/webhook_secret (mode 0600), so restarts and workers sharing that directory use the same.",
    )
    webhook_allow_private: bool = Field(
        False,
        description="Allow webhook URLs whose host is a private, loopback or link-local address (refused by "
        "default, so a key holder cannot make the server probe its own network).",
    )
    webhook_max_attempts: int = Field(5, ge=1, le=20, description="Webhook POSTs per job end, retries included.")
    webhook_timeout_s: float = Field(10.0, gt=0, le=120, description="Time for one webhook POST, in seconds.")
    webhook_backoff_s: float = Field(
        2.0, ge=0, description="First wait before a webhook retry, in seconds; doubles each retry (with jitter)."
    )

    @field_validator("device_index", mode="before")
    @classmethod
    def _device_index_list(cls, value):
        from .engine.lanes import parse_device_index  # imported on use: the engine imports this module

        return ",".join(map(str, parse_device_index(value)))

    @field_validator("webhook_secret", mode="before")
    @classmethod
    def _empty_webhook_secret_is_none(cls, value):
        return None if value in ("", None) else value

    @field_validator("admin_key", "admin_key_file", mode="before")
    @classmethod
    def _empty_admin_key_is_none(cls, value):
        if value in ("", None):
            return None
        return value

    @model_validator(mode="after")
    def _admin_key_from_file(self) -> "Settings":
        # Container secrets arrive as files; reading here keeps the key out of env vars and process lists.
        path = self.admin_key_file
        if path is None:
            return self
        if self.admin_key is not None:
            raise ValueError("admin-key-file: give the admin key or an admin key file, not both")
        try:
            key = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            raise ValueError(f"admin-key-file: cannot read {path}: {reason}") from None
        if not key:
            raise ValueError(f"admin-key-file: {path} is empty")
        self.admin_key = SecretStr(key)
        return self

    @model_validator(mode="after")
    def _one_lane_on_cpu(self) -> "Settings":
        if self.device == "cpu" and "," in self.device_index:
            raise ValueError(f"device-index {self.device_index}: a list of GPUs needs --device cuda (or auto); "
                             "the CPU runs one lane")
        return self

    @property
    def device_indexes(self) -> tuple[int, ...]:
        return tuple(int(i) for i in self.device_index.split(","))

    @property
    def auth_enabled(self) -> bool:
        return not self.no_auth

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)
