"""whisper_server.py as the operator runs it: a real uvicorn process on a free port."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time

import httpx

from .conftest import ROOT, free_port
from .speech import wer


def _keys_from_log(log: str) -> tuple[str, str]:
    admin = re.search(r"Admin key \(X-Admin-Key\): (sk-[0-9a-f]{48})", log).group(1)
    api = re.search(r"Default API key \(X-API-Key\): (sk-[0-9a-f]{48})", log).group(1)
    return admin, api


def test_real_server_transcribes_with_keys(server_process, tmp_path, librivox):
    port = free_port()
    server = server_process("--mode", "ws", "--ws-port", str(port), "--host", "127.0.0.1",
                            "--generate-key", "ci")
    base = f"http://127.0.0.1:{port}"
    server.wait_http(base + "/health")
    log = server.log()
    admin, api = _keys_from_log(log)
    generated = re.search(r"New API key \(--generate-key\): (sk-[0-9a-f]{48})", log).group(1)
    assert (tmp_path / "api_keys.json").is_file()
    assert api not in (tmp_path / "api_keys.json").read_text()

    status = httpx.get(base + "/").json()
    assert status["status"] == "running" and status["model"] == "base" and status["device"] == "cpu"
    assert status["compute_type"] == "int8" and status["auth_enabled"] is True and status["connections"] == "0/200"
    health = httpx.get(base + "/health").json()
    assert health["model_loaded"] is True and health["gpu"] is None and health["cpu"]["cores"] >= 1

    clip = librivox[0]
    for key in (api, generated):
        with clip.path.open("rb") as fh:
            r = httpx.post(base + "/transcribe", headers={"X-API-Key": key},
                           files={"file": (clip.path.name, fh, "audio/wav")}, timeout=120)
        assert r.status_code == 200, r.text
        assert wer(clip.text, r.json()["text"]) <= 0.15
    keys = httpx.get(base + "/admin/keys", headers={"X-Admin-Key": admin}).json()
    assert keys["total"] == 2
    stats = httpx.get(base + "/stats", headers={"X-API-Key": api}).json()
    assert stats["transcriptions"]["completed_transcriptions"] == 2
    assert server.stop() == 0
    # key values appear in the log only in the one-time print
    assert server.log().count(api) == 1


def test_chunked_upload_cut_off_while_arriving(server_process):
    """No Content-Length: the server answers 413 once the limit is passed, long before the client ends."""
    port = free_port()
    server = server_process("--mode", "ws", "--ws-port", str(port), "--host", "127.0.0.1", "--no-auth",
                            "--max-upload-mb", "1")
    server.wait_http(f"http://127.0.0.1:{port}/health")
    sent = 0
    response = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"POST /transcribe HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\n\r\n"
        )
        head = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
        sock.sendall(b"%x\r\n" % len(head) + head + b"\r\n")
        chunk = b"\0" * 65536
        deadline = time.monotonic() + 30
        sock.settimeout(0.05)
        while sent < 50 * 1024 * 1024 and time.monotonic() < deadline:
            try:
                sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
                sent += len(chunk)
            except OSError:
                break
            try:
                response = sock.recv(4096)
                if response:
                    break
            except socket.timeout:
                continue
        if not response:
            sock.settimeout(5)
            response = sock.recv(4096)
    assert response.startswith(b"HTTP/1.1 413"), response[:200]
    assert sent < 4 * 1024 * 1024, sent


def _start_expect_failure(server_process, *args, env=None) -> str:
    server = server_process(*args, env=env)
    server.proc.wait(90)
    assert server.proc.returncode == 1, server.log()
    log = server.log()
    assert "Traceback" not in log, log
    return log


def test_offline_download_fails_clearly(server_process):
    log = _start_expect_failure(server_process, "--mode", "ws", "--ws-port", str(free_port()),
                                "--model", "large-v3", env={"HF_HUB_OFFLINE": "1"})
    assert "large-v3" in log and "internet" in log and "--model base" in log


def test_start_up_errors_are_one_clear_line(server_process, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        log = _start_expect_failure(server_process, "--mode", "ws", "--ws-port", str(port), "--host", "127.0.0.1")
        assert f"Port {port}" in log and "already in use" in log

    (tmp_path / "api_keys.json").write_text("{ truncated")
    log = _start_expect_failure(server_process, "--mode", "ws", "--ws-port", str(free_port()))
    assert "corrupt" in log and "api_keys.json" in log
    assert (tmp_path / "api_keys.json").read_text() == "{ truncated"


_LEAVE = """
import logging, sys, time
from concurrent.futures import ThreadPoolExecutor
from whisper_stt.serve import leave

class Engine:  # leave() reads only how many model calls still run
    active = int(sys.argv[1])

logging.basicConfig(level=logging.INFO)
pool = ThreadPoolExecutor(1)
if Engine.active:
    pool.submit(time.sleep, 120)  # a model call nobody waits for: the interpreter would join it at exit
print("returned", leave(Engine(), 3), flush=True)
"""


def test_a_stopped_process_does_not_wait_for_abandoned_model_calls():
    """After a clean stop (jobs handed back, clients answered or out of grace), a model call still running
    does not keep the process alive: it exits at once with its code, and says so."""
    busy = subprocess.run([sys.executable, "-c", _LEAVE, "1"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)  # not leaving at once: the pool's 120 s call is joined, a timeout
    assert busy.returncode == 3, busy.stderr
    assert "Not waiting for 1 model call(s) still running" in busy.stderr
    assert "returned" not in busy.stdout  # it exited inside leave()
    idle = subprocess.run([sys.executable, "-c", _LEAVE, "0"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert idle.returncode == 0 and idle.stdout.strip() == "returned 3", idle.stderr
    assert "Not waiting" not in idle.stderr
