"""Shared fixtures: the real bundled model (loaded once), apps around it, and speech with known text."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import httpx
import pytest
from fastapi.testclient import TestClient

from whisper_stt.app import create_app
from whisper_stt.config import Settings
from whisper_stt.engine import Engine
from whisper_stt.keys import KeyStore

from .speech import ESPEAK_SENTENCES, espeak, have_espeak, librivox_clips

ROOT = Path(__file__).resolve().parent.parent
# Reuse the repository's models/ (install.sh assembles the bundled model there) unless told otherwise.
MODELS_DIR = Path(os.environ.get("WHISPER_TEST_MODELS_DIR", ROOT / "models"))
ADMIN_KEY = "sk-" + "a" * 48


@pytest.fixture(scope="session")
def engine() -> Iterator[Engine]:
    eng = Engine.load(Settings(models_dir=MODELS_DIR, device="cpu"))
    yield eng
    eng.close()


class AppHandle:
    """An app around the shared engine with its own key file, plus a ready API key."""

    def __init__(self, app, settings: Settings, keys: KeyStore, api_key: str) -> None:
        self.app = app
        self.settings = settings
        self.keys = keys
        self.api_key = api_key
        self.admin_key = ADMIN_KEY

    def client(self, **kwargs) -> TestClient:
        return TestClient(self.app, **kwargs)

    @property
    def auth(self) -> dict:
        return {"X-API-Key": self.api_key}

    @property
    def admin(self) -> dict:
        return {"X-Admin-Key": self.admin_key}


@pytest.fixture
def make_app(engine: Engine, tmp_path: Path) -> Callable[..., AppHandle]:
    def factory(**overrides) -> AppHandle:
        values = dict(
            key_file=tmp_path / "api_keys.json",
            debug_dir=tmp_path / "debug_audio",
            models_dir=MODELS_DIR,
            jobs_dir=tmp_path / "jobs",  # never ./jobs of the checkout: the job runner starts with the app
        )
        values.update(overrides)
        settings = Settings(**values)
        keys = KeyStore.open(settings.key_file)
        created = keys.bootstrap(ADMIN_KEY)
        api_key = created.get("api") or keys.generate("test")
        return AppHandle(create_app(settings, engine, keys), settings, keys, api_key)

    return factory


@pytest.fixture
def live(make_app):
    """Factory: ``live(**setting_overrides)`` -> (AppHandle, a LiveServer serving it); stopped at teardown."""
    from .ws_support import LiveServer  # ws_support imports this module

    servers = []

    def start(**overrides):
        handle = make_app(**overrides)
        server = LiveServer(handle.app).__enter__()
        servers.append(server)
        return handle, server

    yield start
    for server in servers:
        server.__exit__(None, None, None)


@pytest.fixture
def app_handle(make_app) -> AppHandle:
    return make_app()


@pytest.fixture
def client(app_handle: AppHandle) -> Iterator[TestClient]:
    with app_handle.client() as c:
        yield c


@pytest.fixture(scope="session")
def librivox():
    clips = librivox_clips()
    if not clips:
        pytest.skip("Debian package pocketsphinx-testdata is not installed (run ./run_tests.sh)")
    return clips


@pytest.fixture(scope="session")
def espeak_clips(tmp_path_factory) -> dict[str, Path]:
    """One espeak-ng WAV per language in ESPEAK_SENTENCES."""
    if not have_espeak():
        pytest.skip("espeak-ng is not installed (run ./run_tests.sh)")
    out = tmp_path_factory.mktemp("espeak")
    return {lang: espeak(text, lang, out / f"{lang}.wav") for lang, text in ESPEAK_SENTENCES.items()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """whisper_server.py as a real process; stdout/stderr go to a log file."""

    def __init__(self, args: list[str], cwd: Path, env: dict | None = None) -> None:
        self.log_path = cwd / "server.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "whisper_server.py"), *args],
            cwd=cwd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            # faulthandler: a server that hangs at stop dumps every thread's stack into its log (below)
            env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1", **(env or {})},
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_http(self, url: str, timeout: float = 90.0, **kwargs) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                httpx.get(url, timeout=2, **kwargs)
                return
            except httpx.HTTPError:
                time.sleep(0.3)
        raise AssertionError(f"server did not answer {url} within {timeout} s:\n{self.log()}")

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                # Hung: SIGABRT makes faulthandler write where each thread stands, so a failing run
                # says what it waited for; then it is gone either way.
                self.proc.send_signal(signal.SIGABRT)
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(10)
        self._log.close()
        return self.proc.returncode


@pytest.fixture
def server_process(tmp_path: Path):
    """Factory: start whisper_server.py with args in tmp_path; always stopped at teardown."""
    started: list[ServerProcess] = []

    def start(*args: str, env: dict | None = None) -> ServerProcess:
        proc = ServerProcess(["--models-dir", str(MODELS_DIR), *args], tmp_path, env)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()
