"""--mode both: plain and TLS ports from one process and one model; clean shutdown on SIGTERM."""

from __future__ import annotations

import signal
import ssl
import sys
import threading
import time

import httpx
import pytest

from .conftest import ROOT, free_port
from .speech import wer

sys.path.insert(0, str(ROOT))
from generate_ssl_cert import generate_self_signed  # noqa: E402


@pytest.fixture
def cert_pair(tmp_path):
    return generate_self_signed(tmp_path / "key.pem", tmp_path / "cert.pem", key_size=2048)


def test_both_ports_one_process_and_sigterm_mid_request(server_process, cert_pair, librivox):
    key, cert = cert_pair
    ws_port, wss_port = free_port(), free_port()
    server = server_process("--mode", "both", "--ws-port", str(ws_port), "--wss-port", str(wss_port),
                            "--host", "127.0.0.1", "--ssl-key", str(key), "--ssl-cert", str(cert), "--no-auth")
    tls = ssl.create_default_context(cafile=str(cert))
    plain_url, tls_url = f"http://127.0.0.1:{ws_port}", f"https://localhost:{wss_port}"
    server.wait_http(plain_url + "/health")
    server.wait_http(tls_url + "/health", verify=tls)
    assert server.log().count("Model 'base'") == 1  # one model for both ports

    clip = librivox[0]
    for url, verify in ((plain_url, True), (tls_url, tls)):
        with clip.path.open("rb") as fh:
            r = httpx.post(url + "/transcribe", files={"file": (clip.path.name, fh)}, verify=verify, timeout=120)
        assert r.status_code == 200, r.text
        assert wer(clip.text, r.json()["text"]) <= 0.15
    # one set of statistics behind both ports
    health = httpx.get(tls_url + "/health", verify=tls).json()
    assert health["transcriptions"]["completed_transcriptions"] == 2
    # the TLS port refuses clients without our certificate, and plain HTTP
    with pytest.raises(httpx.ConnectError):
        httpx.get(tls_url + "/")
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{wss_port}/", timeout=5)

    # SIGTERM while a request is in flight: it completes, then the process exits 0.
    result: dict = {}

    def slow_request():
        result["response"] = httpx.post(tls_url + "/transcribe", files={"file": ("a.wav", clip.path.read_bytes())},
                                        verify=tls, timeout=120)

    thread = threading.Thread(target=slow_request)
    thread.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # wait until the model is working on it
        stats = httpx.get(plain_url + "/health").json()["transcriptions"]
        if stats["active_transcriptions"] or stats["queued_transcriptions"]:
            break
        time.sleep(0.02)
    server.proc.send_signal(signal.SIGTERM)
    thread.join(60)
    assert result["response"].status_code == 200, result["response"].text
    assert wer(clip.text, result["response"].json()["text"]) <= 0.15
    assert server.proc.wait(30) == 0
    assert "Traceback" not in server.log()


def _expect_start_failure(server_process, *args) -> str:
    server = server_process(*args)
    assert server.proc.wait(90) == 1, server.log()
    log = server.log()
    assert "Traceback" not in log, log
    return log


def test_tls_start_up_errors(server_process, tmp_path, cert_pair):
    key, cert = cert_pair
    port = str(free_port())
    log = _expect_start_failure(server_process, "--mode", "wss", "--wss-port", port,
                                "--ssl-key", str(tmp_path / "none.pem"), "--ssl-cert", str(cert))
    assert "none.pem" in log and "generate_ssl_cert.py" in log

    other_key, _ = generate_self_signed(tmp_path / "k2.pem", tmp_path / "c2.pem", key_size=2048)
    log = _expect_start_failure(server_process, "--mode", "both", "--ws-port", str(free_port()), "--wss-port", port,
                                "--ssl-key", str(other_key), "--ssl-cert", str(cert))
    assert "does not belong to the certificate" in log

    (tmp_path / "garbage.pem").write_text("-----BEGIN CERTIFICATE-----\nnot a cert\n")
    log = _expect_start_failure(server_process, "--mode", "wss", "--wss-port", port,
                                "--ssl-key", str(key), "--ssl-cert", str(tmp_path / "garbage.pem"))
    assert "garbage.pem" in log
