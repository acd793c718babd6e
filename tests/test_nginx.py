"""deploy/nginx.conf: valid for `nginx -t`, and a real nginx in front of a real server carries REST
uploads and WebSocket streams (LibriVox speech) without writing keys to its access log."""

from __future__ import annotations

import http.server
import re
import socket
import threading

import httpx
import pytest

from .conftest import free_port
from .nginx_support import NGINX_CONF, NginxProxy, find_nginx, render
from .speech import wer
from .ws_support import concat_with_pauses, load, run, stream

pytestmark = pytest.mark.skipif(find_nginx() is None, reason="nginx is not installed (run ./run_tests.sh)")


def test_rendered_config_passes_nginx_t(tmp_path):
    proxy = NginxProxy([free_port(), free_port(), free_port()], tmp_path)
    result = proxy.check()
    assert result.returncode == 0 and "test is successful" in result.stderr, result.stderr
    conf = proxy.conf.read_text()
    assert conf.count("server 127.0.0.1:") == 3 and "replica-1" not in conf
    assert f"listen 127.0.0.1:{proxy.port};" in conf and str(tmp_path / "access.log") in conf


def test_production_file_has_what_the_server_needs():
    conf = NGINX_CONF.read_text()
    for directive in (
        "hash $remote_addr consistent;",
        "max_fails=2 fail_timeout=10s;",
        "proxy_http_version 1.1;",
        "proxy_set_header Upgrade $http_upgrade;",
        "proxy_set_header Connection $connection_upgrade;",
        "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
        "proxy_set_header X-Forwarded-Proto $scheme;",
        "proxy_read_timeout 3600s;",
        "proxy_send_timeout 3600s;",
        "proxy_request_buffering off;",
        "client_max_body_size 101m;",
        "location ~ ^/(ws/transcribe|v1/realtime|v1/listen)$ {",
    ):
        assert directive in conf, directive
    log_format = re.search(r"log_format whisper_stt (.*?);", conf, re.S).group(1)
    for leaky in ("$request ", "$request\"", "$request_uri", "$args", "$query_string", "$http_referer"):
        assert leaky not in log_format, leaky
    # the test rendering changes nothing but ports and paths
    rendered = render([1234], NGINX_CONF.parent, 4321)
    kept = [line for line in conf.splitlines() if "proxy_" in line or "client_max_body_size" in line]
    assert all(line in rendered.splitlines() for line in kept)


class _Replica:
    """A stand-in replica that answers every GET with its own port (no model needed)."""

    def __init__(self) -> None:
        port_text = b""

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                self.send_response(200)
                self.send_header("Content-Length", str(len(port_text)))
                self.end_headers()
                self.wfile.write(port_text)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        port_text = str(self.port).encode()
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def kill(self) -> None:
        if self.thread.is_alive():
            self.server.shutdown()
            self.server.server_close()  # now refused, like a replica killed with -9


def test_client_sticks_to_one_replica_and_moves_when_it_dies(tmp_path):
    replicas = [_Replica(), _Replica()]
    try:
        with NginxProxy([r.port for r in replicas], tmp_path) as proxy:
            with httpx.Client(base_url=proxy.url, timeout=30) as client:
                served = {client.get("/health").text for _ in range(6)}
                assert len(served) == 1  # the hash keeps one client on one replica
                first = int(served.pop())
                next(r for r in replicas if r.port == first).kill()
                after = {client.get("/health").text for _ in range(3)}
            # every request after the death is answered, by the other replica, without an error
            assert after == {str(next(r.port for r in replicas if r.port != first))}
    finally:
        for r in replicas:
            r.kill()


def test_rest_and_stream_through_nginx(server_process, tmp_path, librivox):
    port = free_port()
    server = server_process("--mode", "ws", "--ws-port", str(port), "--host", "127.0.0.1")
    server.wait_http(f"http://127.0.0.1:{port}/health")
    admin = re.search(r"Admin key \(X-Admin-Key\): (sk-[0-9a-f]{48})", server.log()).group(1)
    (tmp_path / "nginx").mkdir()
    with NginxProxy([port], tmp_path / "nginx") as proxy:
        made = httpx.post(proxy.url + "/admin/keys/generate", params={"name": "via-nginx"},
                          headers={"X-Admin-Key": admin}, timeout=30)
        assert made.status_code == 200, made.text
        key = made.json()["api_key"]

        clip = librivox[0]
        with clip.path.open("rb") as fh:
            r = httpx.post(proxy.url + "/transcribe", headers={"X-API-Key": key},
                           files={"file": (clip.path.name, fh, "audio/wav")}, timeout=120)
        assert r.status_code == 200, r.text
        assert wer(clip.text, r.json()["text"]) <= 0.15

        # over client_max_body_size (the server's default 100 MB + envelope): nginx refuses it from the
        # Content-Length alone, before a byte of the body is sent
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=30) as sock:
            sock.sendall(f"POST /transcribe HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\n"
                         f"Content-Type: multipart/form-data; boundary=b\r\n"
                         f"Content-Length: {110 * 1024 * 1024}\r\n\r\n".encode())
            assert sock.recv(4096).startswith(b"HTTP/1.1 413 ")

        # a query string with a key-like value reaches the server but not nginx's access log
        secret = "sk-" + "f" * 48
        assert httpx.get(proxy.url + f"/health?api_key={secret}", timeout=30).status_code == 200

        audio = concat_with_pauses([load(clip.path)], pause_s=0, tail_s=0.5)
        received = run(stream(proxy.ws_url + "/ws/transcribe", audio, api_key=key), 180)
        assert received.of("final"), received.messages
        assert wer(clip.text, received.finals_text()) <= 0.15

        log = proxy.access_log()
        assert '"POST /transcribe HTTP/1.1" 200' in log and '"GET /ws/transcribe HTTP/1.1" 101' in log
        assert "/health" in log and secret not in log and "api_key" not in log
        assert f"upstream=127.0.0.1:{port}" in log
    assert server.stop() == 0
