"""GET /metrics: Prometheus text that moves with real requests on the real model."""

from __future__ import annotations

import threading

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from whisper_stt.cli import parse
from whisper_stt.config import Settings

from .ws_support import LiveServer


def scrape(get) -> dict[tuple, float]:
    """{(sample name, sorted labels): value} from one /metrics answer."""
    r = get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_counters_and_histograms_move_after_a_transcription(app_handle, client, librivox, engine):
    clip = librivox[0]
    before = scrape(client.get)
    with open(clip.path, "rb") as fh:
        r = client.post("/transcribe", headers=app_handle.auth, files={"file": (clip.path.name, fh)})
    assert r.status_code == 200, r.text
    duration = r.json()["duration"]
    assert "dashwood" in r.json()["text"].lower()
    after = scrape(client.get)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("whisper_http_requests_total", method="POST", route="/transcribe", status="200") == 1
    assert delta("whisper_transcriptions_completed_total") == 1
    assert delta("whisper_audio_processed_seconds_total") == pytest.approx(duration, abs=0.01)
    assert delta("whisper_model_processing_seconds_total") > 0
    assert delta("whisper_transcription_processing_seconds_count", route="/transcribe") == 1
    assert delta("whisper_transcription_real_time_factor_count", route="/transcribe") == 1
    assert delta("whisper_transcription_audio_seconds_sum", route="/transcribe") == pytest.approx(duration, abs=0.01)
    rtf = delta("whisper_transcription_real_time_factor_sum", route="/transcribe")
    assert 0 < rtf < 5, rtf
    # The real-time factor landed in the bucket that holds it, and not in the ones below.
    assert delta("whisper_transcription_real_time_factor_bucket", route="/transcribe", le="+Inf") == 1
    assert delta("whisper_http_request_duration_seconds_count", method="POST", route="/transcribe") == 1

    assert value(after, "whisper_model_info", model=engine.model_name, device=engine.device,
                 compute_type=engine.compute_type) == 1
    assert value(after, "whisper_transcriptions_active") == 0
    assert value(after, "whisper_transcriptions_queued") == 0
    assert value(after, "whisper_transcriptions_max_concurrent") == engine.max_concurrent
    if hasattr(engine, "streams"):  # the real-time lane's scheduler
        assert ("whisper_stream_lane_pending", (("kind", "final"),)) in after
        assert ("whisper_stream_lane_jobs_completed_total", (("kind", "partial"),)) in after
    assert value(after, "process_resident_memory_bytes") > 0


def test_errors_by_route_and_status(app_handle, client):
    before = scrape(client.get)
    assert client.post("/transcribe", files={"file": ("a.wav", b"x")}).status_code == 401
    assert client.get("/admin/keys/sk-whatever-it-is").status_code in (403, 405)
    assert client.get("/no/such/path/123").status_code == 404
    assert client.get("/v1/models").status_code == 401
    after = scrape(client.get)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("whisper_http_errors_total", method="POST", route="/transcribe", status="401") == 1
    assert delta("whisper_http_requests_total", method="POST", route="/transcribe", status="401") == 1
    assert delta("whisper_http_errors_total", method="GET", route="/v1/models", status="401") == 1
    # Unknown paths share one label (no label per scanned URL); the key in the path never shows up.
    assert delta("whisper_http_errors_total", method="GET", route="<unmatched>", status="404") >= 1
    assert "sk-whatever" not in client.get("/metrics").text


def test_refused_oversized_upload_is_counted_under_its_route(make_app):
    """The 413 comes from the body-size middleware, before routing: still labelled /transcribe."""
    small = make_app(max_upload_mb=0.01)
    with small.client() as c:
        r = c.post("/transcribe", headers=small.auth, files={"file": ("big.wav", b"\0" * 300_000)})
        assert r.status_code == 413
        after = scrape(c.get)
    assert value(after, "whisper_http_errors_total", method="POST", route="/transcribe", status="413") == 1


def test_websocket_connection_gauge(app_handle, client):
    before = scrape(client.get)
    with client.websocket_connect("/ws/transcribe") as ws:
        ws.send_json({"api_key": app_handle.api_key})
        assert ws.receive_json()["type"] == "auth"
        assert ws.receive_json()["type"] == "connected"
        during = scrape(client.get)
        assert value(during, "whisper_websocket_connections_active") == 1
        assert (value(during, "whisper_websocket_connections_accepted_total")
                - value(before, "whisper_websocket_connections_accepted_total")) == 1
    after = scrape(client.get)
    assert value(after, "whisper_websocket_connections_active") == 0
    assert value(after, "whisper_websocket_connections_max") == app_handle.settings.max_connections


def test_active_and_queued_transcriptions_are_visible_while_they_run(make_app, librivox, engine):
    """Two uploads at once on the one CPU model slot: a scrape sees one running and one waiting."""
    if engine.max_concurrent != 1:
        pytest.skip("needs the CPU default of one model call at once")
    handle = make_app()
    seen = {"active": 0.0, "queued": 0.0}
    with LiveServer(handle.app) as server:
        base = f"http://127.0.0.1:{server.port}"
        results = []

        def upload(clip):
            with open(clip.path, "rb") as fh:
                results.append(httpx.post(f"{base}/v1/audio/transcriptions", files={"file": fh},
                                          headers={"Authorization": f"Bearer {handle.api_key}"}, timeout=120))

        threads = [threading.Thread(target=upload, args=(c,)) for c in librivox[:2]]
        for t in threads:
            t.start()

        def both_seen():
            s = scrape(lambda path: httpx.get(base + path, timeout=10))
            seen["active"] = max(seen["active"], value(s, "whisper_transcriptions_active"))
            seen["queued"] = max(seen["queued"], value(s, "whisper_transcriptions_queued"))
            return seen["active"] == 1 and seen["queued"] == 1

        assert server.wait_for(both_seen, timeout=30), seen
        for t in threads:
            t.join(120)
        assert [r.status_code for r in results] == [200, 200]
        final = scrape(lambda path: httpx.get(base + path, timeout=10))
        assert value(final, "whisper_transcriptions_active") == 0
        assert value(final, "whisper_transcriptions_queued") == 0
        assert value(final, "whisper_transcription_processing_seconds_count",
                     route="/v1/audio/transcriptions") == 2


def test_metrics_require_key(make_app):
    open_app = make_app()
    with open_app.client() as c:
        assert c.get("/metrics").status_code == 200  # open by default, like /health

    locked = make_app(metrics_require_key=True)
    with locked.client() as c:
        assert c.get("/metrics").status_code == 401
        assert c.get("/metrics", headers={"X-API-Key": "sk-" + "0" * 48}).status_code == 403
        assert c.get("/metrics", headers=locked.auth).status_code == 200
        r = c.get("/metrics", headers={"Authorization": f"Bearer {locked.api_key}"})
        assert r.status_code == 200 and "whisper_model_info" in r.text
        assert c.get("/health").status_code == 200

    # --no-auth turns every key check off, this one included.
    with make_app(metrics_require_key=True, no_auth=True).client() as c:
        assert c.get("/metrics").status_code == 200


def test_metrics_require_key_flag_and_env(monkeypatch):
    assert Settings().metrics_require_key is False
    assert parse(["--metrics-require-key"])[0].metrics_require_key is True
    monkeypatch.setenv("WHISPER_METRICS_REQUIRE_KEY", "true")
    assert Settings().metrics_require_key is True
    assert parse([])[0].metrics_require_key is True


def test_each_app_has_its_own_registry(make_app):
    """Apps in one process do not share (or collide on) metrics."""
    first, second = make_app(), make_app()
    with first.client() as a, second.client() as b:
        for _ in range(3):
            a.get("/health")
        b.get("/health")
        assert value(scrape(a.get), "whisper_http_requests_total", method="GET", route="/health", status="200") == 3
        assert value(scrape(b.get), "whisper_http_requests_total", method="GET", route="/health", status="200") == 1
