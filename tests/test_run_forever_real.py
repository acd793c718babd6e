"""run_forever.sh around the real server: killed with -9, it comes back and serves again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx

from .conftest import MODELS_DIR, ROOT, free_port


def _server_pids(port: int) -> list[int]:
    out = subprocess.run(["pgrep", "-f", f"whisper_server.py .*--ws-port {port}"], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_run_forever_restarts_killed_server(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}/health"
    log_path = tmp_path / "run_forever.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            ["bash", str(ROOT / "run_forever.sh"), "--mode", "ws", "--ws-port", str(port), "--host", "127.0.0.1",
             "--no-auth", "--models-dir", str(MODELS_DIR), "--key-file", str(tmp_path / "keys.json")],
            stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "SERVER_CMD": f"exec {sys.executable} whisper_server.py", "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
        )
    try:
        _wait(lambda: _healthy(url), 90, "the server to start")
        first = _server_pids(port)
        assert len(first) == 1, first
        os.kill(first[0], signal.SIGKILL)
        _wait(lambda: (p := _server_pids(port)) and p != first, 30, "a restarted server process")
        _wait(lambda: _healthy(url), 90, "the restarted server to serve")
        assert httpx.get(url).json()["model_loaded"] is True
        text = log_path.read_text()
        assert "restart #1" in text and "SIGKILL" in text

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(40) == 0
        assert not _server_pids(port)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        for pid in _server_pids(port):
            os.kill(pid, signal.SIGKILL)
