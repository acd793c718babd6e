"""Job webhooks: the signature, which URLs are refused, the secret file, and delivery with retries against a
real HTTP receiver; then the real app, whose jobs call a receiver that verifies every signature."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest

from whisper_stt.jobs import webhook
from whisper_stt.jobs.base import Job, JobStatus, WebhookAttempt
from whisper_stt.jobs.webhook import WebhookRefused, check_url, sign, verify

SECRET = "test-secret-0123456789"


# --- signing --------------------------------------------------------------------------------------------


def test_sign_is_hmac_sha256_over_timestamp_dot_body():
    import hashlib
    import hmac

    body = b'{"type":"job.succeeded"}'
    expected = hmac.new(SECRET.encode(), b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign(SECRET, 1700000000, body) == "v1=" + expected
    assert sign(SECRET, "1700000000", body.decode()) == "v1=" + expected  # str and bytes agree


def test_verify_accepts_only_the_right_secret_body_and_a_recent_time():
    body = b'{"type":"job.failed","job":{"id":"job_1"}}'
    now = int(time.time())
    headers = {"X-Whisper-Timestamp": str(now), "X-Whisper-Signature": sign(SECRET, now, body)}
    assert verify(SECRET, headers, body)
    assert verify(SECRET, {k.lower(): v for k, v in headers.items()}, body)  # header names in any case
    assert not verify("other-secret", headers, body)
    assert not verify(SECRET, headers, body + b" ")
    assert not verify(SECRET, {**headers, "X-Whisper-Timestamp": str(now + 1)}, body)  # timestamp is signed
    assert not verify(SECRET, {"X-Whisper-Timestamp": str(now)}, body)
    assert not verify(SECRET, {**headers, "X-Whisper-Timestamp": "soon"}, body)
    # a genuine but old delivery replayed later is refused; within the tolerance it passes
    old = now - 400
    replay = {"X-Whisper-Timestamp": str(old), "X-Whisper-Signature": sign(SECRET, old, body)}
    assert not verify(SECRET, replay, body)
    assert verify(SECRET, replay, body, tolerance_s=600)
    # while secrets rotate, a header may carry several signatures
    rotated = {**headers, "X-Whisper-Signature": sign("old", now, body) + ", " + sign(SECRET, now, body)}
    assert verify(SECRET, rotated, body)


# --- which URLs are refused -----------------------------------------------------------------------------


@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.1.2.3", "::1", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254",
    "0.0.0.0", "::", "224.0.0.1", "ff02::1", "240.0.0.1", "255.255.255.255", "100.64.0.1", "fe80::1",
    "fe80::1%eth0", "fc00::1", "fd12:3456::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1",
    "::ffff:169.254.169.254", "2002:7f00:1::1", "2002:a9fe:a9fe::1", "64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe",
    "2001:0:4136:e378:8000:63bf:80ff:fffe",
])
def test_non_public_addresses_are_refused(address):
    assert webhook.address_refused(address)
    host = f"[{address.split('%')[0]}]" if ":" in address else address
    with pytest.raises(WebhookRefused, match="non-public|this machine"):
        check_url(f"http://{host}:8080/hook", allow_private=False)


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111",
                                     "2a00:1450:4001:81c::200e"])
def test_public_addresses_pass(address):
    assert webhook.address_refused(address) is None


@pytest.mark.parametrize("url", [
    "http://2130706433/",  # 127.0.0.1 as one decimal number
    "http://0x7f.1/",  # and in hex shorthand: the resolver still says 127.0.0.1
    "http://017700000001/",  # octal
    "http://localhost:9000/hook",
    "http://LOCALHOST./hook",
    "http://api.localhost/hook",
])
def test_disguised_loopback_hosts_are_refused(url):
    with pytest.raises(WebhookRefused):
        check_url(url, allow_private=False)


@pytest.mark.parametrize("url, why", [
    ("ftp://example.com/x", "http"),
    ("file:///etc/passwd", "http"),
    ("gopher://example.com/", "http"),
    ("javascript:alert(1)", "http"),
    ("example.com/hook", "http"),
    ("http:///hook", "no host"),
    ("http://exa mple.com/", "spaces"),
    ("http://example.com:99999/", "not a valid URL"),
    ("http://example.com/" + "a" * 3000, "longer"),
    ("", "empty"),
])
def test_malformed_urls_are_refused(url, why):
    with pytest.raises(WebhookRefused, match=why):
        check_url(url, allow_private=True)  # refused whatever the operator allows


def test_a_name_is_judged_by_every_address_it_resolves_to(monkeypatch):
    answers = {"good.example": ["93.184.216.34"], "mixed.example": ["93.184.216.34", "10.1.1.1"]}

    def fake_getaddrinfo(host, port, *args, **kwargs):
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in answers[host]]

    monkeypatch.setattr(webhook.socket, "getaddrinfo", fake_getaddrinfo)
    assert check_url("https://good.example/hooks?t=1", False) == "https://good.example/hooks?t=1"
    with pytest.raises(WebhookRefused, match="10.1.1.1"):
        check_url("https://mixed.example/hook", False)
    with pytest.raises(WebhookRefused, match="does not resolve"):
        check_url("https://nowhere.example/hook", False)
    # the operator's allowance skips the address rule, never the URL rules
    assert check_url("http://10.0.0.5:8000/hook", True) == "http://10.0.0.5:8000/hook"
    assert check_url("http://localhost:8000/hook", True) == "http://localhost:8000/hook"


# --- the secret file ------------------------------------------------------------------------------------


def test_generated_secret_is_kept_0600_and_shared_by_everyone_using_the_dir(tmp_path: Path):
    settings = SimpleNamespace(jobs_dir=tmp_path / "jobs", webhook_secret=None)
    with ThreadPoolExecutor(8) as pool:  # processes starting together agree on one secret
        values = set(pool.map(lambda _: webhook.webhook_secret(settings), range(16)))
    assert len(values) == 1
    value = values.pop()
    assert len(value) >= 32
    path = tmp_path / "jobs" / "webhook_secret"
    assert path.read_text().strip() == value
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["webhook_secret"]  # no temporary files left
    assert webhook.webhook_secret(settings) == value  # a restart reads it back

    from pydantic import SecretStr

    given = SimpleNamespace(jobs_dir=tmp_path / "other", webhook_secret=SecretStr("from-settings"))
    assert webhook.webhook_secret(given) == "from-settings"
    assert not (tmp_path / "other").exists()


# --- delivery against a real receiver -------------------------------------------------------------------


class Receiver:
    """An HTTP server in a thread that answers with the given statuses in turn (then 200) and keeps
    every request it got: (headers, body, signature valid?)."""

    def __init__(self, statuses=(), secret=SECRET, delay_s: float = 0.0, extra_headers=None,
                 tls=None, port: int = 0) -> None:
        self.statuses = list(statuses)
        self.requests: list[tuple[dict, bytes, bool]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                headers = dict(self.headers.items())
                receiver.requests.append((headers, body, verify(secret, headers, body)))
                if delay_s:
                    time.sleep(delay_s)
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                for k, v in (extra_headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        if tls is not None:  # (certificate, key): answer over HTTPS
            import ssl

            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.url = f"{'https' if tls else 'http'}://localhost:{self.port}/hook?token=abc"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "Receiver":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def wait(self, count: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.requests) < count and time.monotonic() < deadline:
            time.sleep(0.05)


class FakeStore:
    def __init__(self) -> None:
        self.attempts: list[WebhookAttempt] = []

    async def add_webhook_attempt(self, job_id, attempt):
        self.attempts.append(attempt)


def _settings(tmp_path: Path, **overrides):
    values = dict(jobs_dir=tmp_path, webhook_secret=None, webhook_allow_private=True, webhook_max_attempts=5,
                  webhook_timeout_s=5.0, webhook_backoff_s=0.05)
    values.update(overrides)
    return SimpleNamespace(**values)


def _ended_job(url: str, status=JobStatus.SUCCEEDED) -> Job:
    job = Job(id="job_test", owner="o", filename="a.wav", upload="u/a.wav", webhook_url=url, status=status,
              response_format="text", result=None)
    if status is JobStatus.SUCCEEDED:
        job.result = {"text": "hello there", "language": "en", "language_probability": 1.0, "duration": 1.0,
                      "segments": []}
    job.finished_at = time.time()
    return job


def deliver(store, url: str, tmp_path: Path, status=JobStatus.SUCCEEDED, **settings) -> None:
    asyncio.run(webhook.deliver_job_webhook(store, _ended_job(url, status), _settings(tmp_path, **settings)))


def test_delivery_is_signed_pinned_and_sent_once(tmp_path: Path):
    settings = _settings(tmp_path)
    store = FakeStore()
    secret = webhook.webhook_secret(settings)  # generated into the jobs dir, where the operator reads it
    assert secret == (tmp_path / "webhook_secret").read_text().strip()
    with Receiver(secret=secret) as rx:
        asyncio.run(webhook.deliver_job_webhook(store, _ended_job(rx.url), settings))
    assert len(rx.requests) == 1
    headers, body, valid = rx.requests[0]
    assert valid
    data = json.loads(body)
    assert data["type"] == "job.succeeded"
    assert data["job"]["id"] == "job_test" and data["job"]["status"] == "succeeded"
    assert "owner" not in data["job"] and "upload" not in data["job"]
    # connected to the address checked, and still named the host the URL named
    assert headers["Host"] == f"localhost:{rx.port}"
    assert headers["X-Whisper-Delivery"] == "job_test.job.succeeded" and headers["X-Whisper-Attempt"] == "1"
    assert [(a.status, a.error) for a in store.attempts] == [(200, None)]


def test_failures_are_retried_with_growing_waits_then_recorded(tmp_path: Path):
    settings = _settings(tmp_path, webhook_secret="s3cret", webhook_backoff_s=0.2)
    store = FakeStore()
    with Receiver([500, 503], secret="s3cret") as rx:
        started = time.monotonic()
        asyncio.run(webhook.deliver_job_webhook(store, _ended_job(rx.url, JobStatus.FAILED), settings))
        took = time.monotonic() - started
    assert [(a.status, a.error) for a in store.attempts] == [(500, "HTTP 500"), (503, "HTTP 503"),
                                                             (200, None)]
    assert all(valid for _, _, valid in rx.requests) and len(rx.requests) == 3
    assert [h["X-Whisper-Attempt"] for h, _, _ in rx.requests] == ["1", "2", "3"]
    assert len({h["X-Whisper-Delivery"] for h, _, _ in rx.requests}) == 1  # one delivery id for all three
    assert json.loads(rx.requests[0][1])["type"] == "job.failed"
    # waits of 0.2 * (1, 2) with jitter in [0.5, 1.5): at least 0.3 s in all
    assert took >= 0.3


def test_client_errors_and_redirects_are_not_retried(tmp_path: Path):
    for status in (400, 404, 410, 302):
        store = FakeStore()
        extra = {"Location": "http://169.254.169.254/latest/meta-data/"} if status == 302 else None
        with Receiver([status], extra_headers=extra) as rx:
            deliver(store, rx.url, tmp_path)
        assert len(rx.requests) == 1, status  # the redirect's target was never asked
        assert [a.status for a in store.attempts] == [status]
        assert store.attempts[0].error.startswith(f"HTTP {status}")


def test_attempts_stop_at_the_maximum_and_timeouts_count(tmp_path: Path):
    store = FakeStore()
    with Receiver([500] * 10) as rx:
        deliver(store, rx.url, tmp_path, webhook_max_attempts=3)
    assert len(rx.requests) == 3 and [a.status for a in store.attempts] == [500, 500, 500]

    store = FakeStore()
    with Receiver(delay_s=1.0) as rx:
        asyncio.run(webhook.deliver_job_webhook(
            store, _ended_job(rx.url), _settings(tmp_path, webhook_max_attempts=2, webhook_timeout_s=0.3)))
    assert [(a.status, a.error) for a in store.attempts] == [(None, "timed out"), (None, "timed out")]

    # nobody listening: connection errors are retried and recorded too
    port = rx.port
    store = FakeStore()
    asyncio.run(webhook.deliver_job_webhook(
        store, _ended_job(f"http://127.0.0.1:{port}/hook"), _settings(tmp_path, webhook_max_attempts=2)))
    assert [a.status for a in store.attempts] == [None, None]
    assert all("Connect" in a.error for a in store.attempts)


def test_a_name_repointed_after_submission_is_refused_at_delivery(tmp_path: Path, monkeypatch):
    """DNS rebinding: the name was public when the job was submitted, private when the job ends."""
    with Receiver() as rx:
        answers = ["93.184.216.34"]
        real = socket.getaddrinfo

        def fake_getaddrinfo(host, port, *args, **kwargs):
            if host == "rebind.example":
                return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (answers[0], port))]
            return real(host, port, *args, **kwargs)

        monkeypatch.setattr(webhook.socket, "getaddrinfo", fake_getaddrinfo)
        url = check_url(f"http://rebind.example:{rx.port}/hook", allow_private=False)
        answers[0] = "127.0.0.1"
        store = FakeStore()
        deliver(store, url, tmp_path, webhook_allow_private=False)
    assert rx.requests == []
    assert len(store.attempts) == 1  # refused for good: no retries
    assert store.attempts[0].status is None and "127.0.0.1 is loopback" in store.attempts[0].error


def test_the_secret_never_reaches_the_log(tmp_path: Path, caplog):
    caplog.set_level("DEBUG")
    settings = _settings(tmp_path, webhook_secret="do-not-log-me", webhook_max_attempts=2)
    with Receiver([500, 200], secret="do-not-log-me") as rx:
        asyncio.run(webhook.deliver_job_webhook(FakeStore(), _ended_job(rx.url), settings))
    assert len(rx.requests) == 2
    assert "do-not-log-me" not in caplog.text
    assert "token=abc" not in caplog.text  # nor the receiver's own token in its URL
    assert "localhost" in caplog.text


def test_429_waits_at_least_retry_after(tmp_path: Path):
    store = FakeStore()
    with Receiver([429], extra_headers={"Retry-After": "1"}) as rx:
        started = time.monotonic()
        deliver(store, rx.url, tmp_path, webhook_backoff_s=0.01)
        took = time.monotonic() - started
    assert [a.status for a in store.attempts] == [429, 200]
    assert took >= 1.0


# --- the real app: jobs end, receivers are called ----------------------------------------------------------


def _wait_job(base: str, headers: dict, job_id: str, until, timeout: float = 90.0) -> dict:
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        job = httpx.get(f"{base}/v1/jobs/{job_id}", headers=headers, timeout=10).json()
        if until(job) or time.monotonic() > deadline:
            return job
        time.sleep(0.2)


def test_jobs_call_their_webhooks_signed_once_and_retried(live, librivox, tmp_path):
    import httpx

    from .speech import wer

    handle, server = live(jobs_dir=tmp_path / "jobs", webhook_allow_private=True, webhook_backoff_s=0.1)
    base = f"http://127.0.0.1:{server.port}"
    secret = webhook.webhook_secret(handle.settings)  # what the operator hands to receivers
    clip = librivox[1]
    with Receiver(secret=secret) as good, Receiver([500, 502], secret=secret) as flaky:
        ids = {}
        for name, rx in (("good", good), ("flaky", flaky)):
            with clip.path.open("rb") as fh:
                r = httpx.post(f"{base}/v1/jobs", headers=handle.auth, timeout=30,
                               files={"file": (clip.path.name, fh)},
                               data={"language": "en", "response_format": "text", "webhook_url": rx.url})
            assert r.status_code == 202, r.text
            ids[name] = r.json()["id"]
        done = {name: _wait_job(base, handle.auth, job_id,
                                lambda j: j["status"] != "queued" and j["status"] != "running"
                                and (j["webhook"]["attempts"] or [{}])[-1].get("status") == 200)
                for name, job_id in ids.items()}
        time.sleep(1.0)  # room for a duplicate delivery to show up
    assert done["good"]["status"] == "succeeded", done["good"]
    # exactly one delivery, signed with the operator's secret, carrying the job as GET shows it
    assert len(good.requests) == 1
    headers, body, valid = good.requests[0]
    assert valid
    event = json.loads(body)
    assert event["type"] == "job.succeeded" and event["job"]["id"] == ids["good"]
    assert event["job"]["status"] == "succeeded" and event["job"]["progress"] == 1
    assert wer(clip.text, event["job"]["result"]) <= 0.15, event
    assert [a["status"] for a in done["good"]["webhook"]["attempts"]] == [200]
    # the flaky receiver: two failures then success, three attempts in the job record, all signed alike
    attempts = done["flaky"]["webhook"]["attempts"]
    assert [(a["status"], a["error"]) for a in attempts] == [(500, "HTTP 500"), (502, "HTTP 502"),
                                                             (200, None)]
    assert len(flaky.requests) == 3 and all(valid for _, _, valid in flaky.requests)
    assert len({b for _, b, _ in flaky.requests}) == 1  # the same body each time


def test_private_webhook_urls_are_refused_with_400(live, librivox, tmp_path):
    import httpx

    handle, server = live(jobs_dir=tmp_path / "jobs")  # the default: private addresses refused
    base = f"http://127.0.0.1:{server.port}"
    for url, why in [("http://127.0.0.1:9/hook", "non-public"),
                     ("http://169.254.169.254/latest/", "non-public"),
                     ("http://[::ffff:10.0.0.1]/", "non-public"), ("http://localhost:8080/", "this machine"),
                     ("file:///etc/passwd", "http:// or https://")]:
        with librivox[1].path.open("rb") as fh:
            r = httpx.post(f"{base}/v1/jobs", headers=handle.auth, timeout=30,
                           files={"file": ("a.wav", fh)}, data={"webhook_url": url})
        assert r.status_code == 400, (url, r.text)
        assert why in r.json()["error"]["message"], (url, r.text)
    listed = httpx.get(f"{base}/v1/jobs", headers=handle.auth, timeout=10).json()
    assert listed["data"] == []  # nothing was queued
    assert not list((tmp_path / "jobs").rglob("*.wav"))  # and no upload kept


def test_start_up_line_names_where_the_secret_is_never_its_value(tmp_path: Path):
    from pydantic import SecretStr

    settings = SimpleNamespace(jobs_dir=tmp_path / "jobs", webhook_secret=None)
    line = webhook.ensure_webhook_secret(settings)
    value = (tmp_path / "jobs" / "webhook_secret").read_text().strip()
    assert str(tmp_path / "jobs" / "webhook_secret") in line and value not in line
    given = SimpleNamespace(jobs_dir=tmp_path / "x", webhook_secret=SecretStr("given-secret"))
    line = webhook.ensure_webhook_secret(given)
    assert "--webhook-secret" in line and "given-secret" not in line


def test_https_goes_to_the_checked_address_and_verifies_the_urls_name(tmp_path: Path, monkeypatch):
    """The connection is pinned to the address that was checked, yet TLS verifies the certificate against
    the URL's host name: a name the certificate does not carry fails even though the address matches."""
    import sys

    from .conftest import ROOT

    sys.path.insert(0, str(ROOT))
    from generate_ssl_cert import generate_self_signed

    key, cert = generate_self_signed(tmp_path / "key.pem", tmp_path / "cert.pem", names=("hooks.example",),
                                     key_size=2048)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the operator's CA bundle: here the receiver's own cert
    real = socket.getaddrinfo

    def fake_getaddrinfo(host, port, *args, **kwargs):
        if host in ("hooks.example", "other.example"):
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(webhook.socket, "getaddrinfo", fake_getaddrinfo)
    with Receiver(tls=(cert, key)) as rx:
        store = FakeStore()
        url = f"https://hooks.example:{rx.port}/hook"
        deliver(store, url, tmp_path)
        assert [(a.status, a.error) for a in store.attempts] == [(200, None)]
        assert len(rx.requests) == 1 and rx.requests[0][0]["Host"] == f"hooks.example:{rx.port}"

        store = FakeStore()
        url = f"https://other.example:{rx.port}/hook"
        deliver(store, url, tmp_path, webhook_max_attempts=1)
        assert len(store.attempts) == 1 and store.attempts[0].status is None
        assert "Hostname mismatch" in store.attempts[0].error, store.attempts[0].error
        assert len(rx.requests) == 1  # nothing reached the handler


def test_a_cancelled_job_calls_its_webhook_with_job_cancelled(live, librivox, tmp_path):
    import httpx

    # --job-workers 0: this process accepts jobs and runs none, so the job is surely still queued
    handle, server = live(jobs_dir=tmp_path / "jobs", webhook_allow_private=True, job_workers=0)
    base = f"http://127.0.0.1:{server.port}"
    secret = webhook.webhook_secret(handle.settings)
    with Receiver(secret=secret) as rx:
        with librivox[1].path.open("rb") as fh:
            r = httpx.post(f"{base}/v1/jobs", headers=handle.auth, timeout=30,
                           files={"file": ("a.wav", fh)}, data={"webhook_url": rx.url})
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        r = httpx.delete(f"{base}/v1/jobs/{job_id}", headers=handle.auth, timeout=10)
        assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
        rx.wait(1, timeout=20)
        job = _wait_job(base, handle.auth, job_id, lambda j: j["webhook"]["attempts"], timeout=20)
    assert len(rx.requests) == 1 and rx.requests[0][2]  # signed
    event = json.loads(rx.requests[0][1])
    assert event["type"] == "job.cancelled" and event["job"]["status"] == "cancelled"
    assert "result" not in event["job"] or event["job"]["result"] is None
    assert [a["status"] for a in job["webhook"]["attempts"]] == [200]


def test_the_job_service_names_the_secret_file_when_it_starts(live, tmp_path, caplog):
    import httpx

    caplog.set_level("INFO", logger="whisper_stt")
    handle, server = live(jobs_dir=tmp_path / "jobs")
    r = httpx.get(f"http://127.0.0.1:{server.port}/v1/jobs", headers=handle.auth, timeout=10)  # starts jobs
    assert r.status_code == 200, r.text
    path = tmp_path / "jobs" / "webhook_secret"
    assert path.is_file() and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert f"webhook secret: in {path}" in caplog.text
    assert path.read_text().strip() not in caplog.text


def test_an_unreachable_first_address_falls_back_to_the_next_checked_one(tmp_path: Path, monkeypatch):
    """Names often resolve to an IPv6 address without a route first; the next address is tried at once."""
    real = socket.getaddrinfo

    def fake_getaddrinfo(host, port, *args, **kwargs):
        if host == "two.example":  # nothing listens on 127.0.0.2; the receiver is on 127.0.0.1
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in ("127.0.0.2", "127.0.0.1")]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(webhook.socket, "getaddrinfo", fake_getaddrinfo)
    with Receiver() as rx:
        store = FakeStore()
        deliver(store, f"http://two.example:{rx.port}/hook", tmp_path, webhook_secret=SECRET)
    assert [(a.status, a.error) for a in store.attempts] == [(200, None)]
    assert len(rx.requests) == 1 and rx.requests[0][2]


def test_a_webhook_owed_when_the_server_is_killed_is_delivered_once_after_restart(server_process, librivox,
                                                                                   tmp_path):
    """The receiver is down when the job ends; the server is killed with -9 after a failed attempt is
    recorded. Started again, the server (its sweep of owed webhooks) delivers it: one request, signed, with
    the same delivery id, numbered after the attempts before the crash, all of which the job record shows."""
    import re
    import signal

    import httpx

    from .conftest import ADMIN_KEY, free_port
    from .speech import wer

    port, hook_port = free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    args = ("--mode", "ws", "--ws-port", str(port), "--host", "127.0.0.1", "--admin-key", ADMIN_KEY,
            "--jobs-dir", str(tmp_path / "jobs"), "--beam-size", "1", "--webhook-allow-private",
            "--webhook-backoff-s", "1", "--webhook-max-attempts", "10")
    t0 = time.monotonic()
    first = server_process(*args, "--generate-key", "jobs")
    first.wait_http(base + "/health")
    key = re.search(r"New API key \(--generate-key\): (sk-[0-9a-f]{48})", first.log()).group(1)
    auth = {"Authorization": f"Bearer {key}"}
    clip = librivox[1]
    with clip.path.open("rb") as fh:
        r = httpx.post(f"{base}/v1/jobs", headers=auth, timeout=30, files={"file": (clip.path.name, fh)},
                       data={"language": "en", "response_format": "text",
                             "webhook_url": f"http://127.0.0.1:{hook_port}/hook"})  # nobody listens yet
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    job = _wait_job(base, auth, job_id, lambda j: j["webhook"]["attempts"], timeout=60)
    os.kill(first.proc.pid, signal.SIGKILL)  # between a failed attempt and the retry
    first.proc.wait(10)
    assert job["status"] == "succeeded" and job["webhook"]["state"] == "pending", job
    assert all(a["status"] is None and "Connect" in a["error"] for a in job["webhook"]["attempts"]), job

    secret = (tmp_path / "jobs" / "webhook_secret").read_text().strip()
    with Receiver(secret=secret, port=hook_port) as rx:
        second = server_process(*args)
        second.wait_http(base + "/health")
        job = _wait_job(base, auth, job_id, lambda j: j["webhook"]["state"] != "pending", timeout=30)
        time.sleep(1.5)  # room for a duplicate delivery to show up
        job = httpx.get(f"{base}/v1/jobs/{job_id}", headers=auth, timeout=10).json()
    print(f"delivered after the restart; {time.monotonic() - t0:.1f} s in all")
    assert job["webhook"]["state"] == "delivered", (job, second.log()[-3000:])
    assert len(rx.requests) == 1, rx.requests
    headers, body, valid = rx.requests[0]
    assert valid
    event = json.loads(body)
    assert event["type"] == "job.succeeded" and event["job"]["id"] == job_id
    assert wer(clip.text, event["job"]["result"]) <= 0.15, event
    attempts = job["webhook"]["attempts"]
    assert len(attempts) >= 2 and attempts[-1]["status"] == 200 and attempts[-1]["error"] is None, attempts
    assert all(a["status"] is None for a in attempts[:-1]), attempts  # the failures before the crash
    assert headers["X-Whisper-Attempt"] == str(len(attempts))
    assert headers["X-Whisper-Delivery"] == f"{job_id}.job.succeeded"
    stats = httpx.get(f"{base}/stats", headers=auth, timeout=10).json()["jobs"]
    assert stats["webhooks_pending"] == 0
    assert second.stop() == 0 and "Traceback" not in second.log(), second.log()[-3000:]


def test_durable_delivery_one_sender_among_many_and_a_dead_senders_retry_is_taken_over(tmp_path: Path):
    """Against the real SQLite store: four processes' deliverers race for one owed webhook and the receiver
    gets one POST; a sender that died while waiting to retry is taken over when the retry falls due, with
    the attempt count and delivery id going on."""
    from whisper_stt.jobs.base import WEBHOOK_DELIVERED, WEBHOOK_PENDING
    from whisper_stt.jobs.sqlite_store import SqliteJobStore

    settings = _settings(tmp_path, webhook_secret=SECRET, webhook_backoff_s=0.3)

    async def ended(store, url: str) -> Job:
        job = _ended_job(url)
        job.id, job.status = f"job_{os.urandom(6).hex()}", JobStatus.QUEUED
        job.finished_at, job.result = None, None
        await store.create(job, None)
        await store.claim("runner")
        await store.finish(job.id, "runner", JobStatus.SUCCEEDED, result=_ended_job(url).result)
        return job

    def send(store, job, worker):
        return webhook.deliver_job_webhook(store, job, settings, worker=worker)

    async def go(rx_ok: Receiver, rx_flaky: Receiver):
        store = SqliteJobStore(tmp_path / "jobs", lease_s=0.2)
        try:
            job = await ended(store, rx_ok.url)
            await asyncio.sleep(0.25)  # the finishing worker never came to send it
            outcomes = await asyncio.gather(*[send(store, job, f"w{i}") for i in range(4)])
            assert sorted(outcomes, key=str) == [None, None, None, WEBHOOK_DELIVERED], outcomes
            assert (await store.get(job.id)).webhook_state == WEBHOOK_DELIVERED

            job = await ended(store, rx_flaky.url)
            first = asyncio.create_task(webhook.deliver_job_webhook(store, job, settings, worker="runner"))
            while not (await store.get(job.id)).webhook_attempts:
                await asyncio.sleep(0.01)
            first.cancel()  # the holder dies while waiting to retry
            await asyncio.gather(first, return_exceptions=True)
            got = await store.get(job.id)
            assert got.webhook_state == WEBHOOK_PENDING and await store.due_webhooks() == []  # not due yet
            assert await send(store, job, "other") is None  # too early
            await asyncio.sleep(0.5)  # the retry falls due (0.3 s x jitter <= 0.45 s)
            assert await store.due_webhooks() == [job.id]
            assert await send(store, job, "other") == WEBHOOK_DELIVERED
            return await store.get(job.id)
        finally:
            await store.close()

    with Receiver(secret=SECRET) as ok, Receiver([503], secret=SECRET) as flaky:
        done = asyncio.run(go(ok, flaky))
    assert len(ok.requests) == 1 and ok.requests[0][2]
    assert [(a.status, a.error) for a in done.webhook_attempts] == [(503, "HTTP 503"), (200, None)]
    assert [h["X-Whisper-Attempt"] for h, _, _ in flaky.requests] == ["1", "2"]
    assert len({h["X-Whisper-Delivery"] for h, _, _ in flaky.requests}) == 1
    assert len({b for _, b, _ in flaky.requests}) == 1  # the same bytes from both senders
