"""POST /v1/jobs end to end with the real model: submit, poll, result in every format (checked by WER),
ownership, cancel, limits, retention, figures, and a server killed with -9 mid-job that resumes the job
from its checkpoints after a restart."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
import wave
from pathlib import Path

import httpx
import numpy as np

from .conftest import ADMIN_KEY, free_port
from .speech import wer, write_wav

ENDED = ("succeeded", "failed", "cancelled")


def _base(server) -> str:
    return f"http://127.0.0.1:{server.port}"


def _submit(base: str, key: str, data: bytes, **form) -> httpx.Response:
    return httpx.post(f"{base}/v1/jobs", headers={"Authorization": f"Bearer {key}"},
                      files={"file": ("speech.wav", data, "audio/wav")}, data=form, timeout=60)


def _wait(base: str, key: str, job_id: str, timeout: float = 120.0, until=ENDED) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        body = httpx.get(f"{base}/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {key}"}, timeout=30).json()
        if body["status"] in until or time.monotonic() > deadline:
            return body
        time.sleep(0.2)


def _joined(clips, pause_s: float, repeat: int = 1) -> tuple[np.ndarray, str]:
    """The clips one after another (``repeat`` rounds) with ``pause_s`` of silence between them."""
    pieces, texts = [], []
    gap = np.zeros(int(pause_s * 16000), dtype=np.float32)
    for _ in range(repeat):
        for clip in clips:
            with wave.open(str(clip.path), "rb") as w:
                assert (w.getframerate(), w.getsampwidth(), w.getnchannels()) == (16000, 2, 1)
                audio = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768
            pieces += [audio, gap]
            texts.append(clip.text)
    return np.concatenate(pieces), " ".join(texts)


def _wav(tmp_path: Path, name: str, audio: np.ndarray) -> bytes:
    return write_wav(tmp_path / name, audio).read_bytes()


def test_submit_poll_and_result_in_every_format(live, librivox, tmp_path):
    handle, server = live()
    base, key = _base(server), handle.keys.generate("jobs")
    submitted = {}
    for fmt, clip in zip(("json", "text", "srt", "vtt", "verbose_json"), librivox):
        r = _submit(base, key, clip.path.read_bytes(), response_format=fmt, language="en",
                    word_timestamps="true" if fmt == "verbose_json" else "false")
        assert r.status_code == 202, r.text
        body = r.json()
        assert body["status"] == "queued" and body["progress"] == 0 and body["response_format"] == fmt
        assert body["id"].startswith("job_") and body["filename"] == "speech.wav" and "owner" not in body
        submitted[fmt] = (body["id"], clip)
    auth = {"Authorization": f"Bearer {key}"}
    for fmt, (job_id, clip) in submitted.items():
        job = _wait(base, key, job_id)
        assert job["status"] == "succeeded", job
        assert job["progress"] == 1 and job["attempts"] == 1 and job["duration"] > 2
        assert job["started_at"] >= job["created_at"] and job["finished_at"] >= job["started_at"]
        raw = httpx.get(f"{base}/v1/jobs/{job_id}/result", headers=auth)
        assert raw.status_code == 200, raw.text
        result = job["result"]
        if fmt == "json":
            assert raw.json() == result and wer(clip.text, result["text"]) <= 0.15, result
        elif fmt == "verbose_json":
            assert raw.json() == result
            assert result["language"] == "english" and result["segments"] and result["words"]
            assert wer(clip.text, " ".join(w["word"] for w in result["words"])) <= 0.15, result
        elif fmt == "text":
            assert raw.text == result and wer(clip.text, result) <= 0.15, result
        else:
            assert raw.text == result
            if fmt == "srt":
                assert result.startswith("1\n00:00:00,") and raw.headers["content-type"].startswith("text/plain")
            else:
                assert result.startswith("WEBVTT\n\n00:00:00.") and raw.headers["content-type"].startswith("text/vtt")
            cues = [line for line in result.splitlines() if line and "-->" not in line
                    and not line.isdigit() and line != "WEBVTT"]
            assert wer(clip.text, " ".join(cues)) <= 0.15, result
    # The key's usage counts the jobs' audio; with the day's audio spent, a new job is refused as REST is.
    admin = {"X-Admin-Key": ADMIN_KEY}
    keys = httpx.get(f"{base}/admin/keys", headers=admin).json()["keys"]
    key_id = next(k["id"] for k in keys if k["name"] == "jobs")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        usage = httpx.get(f"{base}/admin/keys/{key_id}/usage", headers=admin).json()
        if usage["total"]["audio_seconds"] > 20:
            break
        time.sleep(0.3)
    assert usage["total"]["audio_seconds"] > 20, usage  # the five clips are ~25 s
    r = httpx.patch(f"{base}/admin/keys/{key_id}", headers=admin, json={"audio_minutes_per_day": 0.1})
    assert r.status_code == 200, r.text
    r = _submit(base, key, librivox[1].path.read_bytes())
    assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limit_error", r.text


def test_ownership_pagination_and_cancel_of_a_queued_job(live, librivox):
    handle, server = live(job_workers=0)  # nothing runs here: jobs stay queued
    base, key = _base(server), handle.api_key
    other = handle.keys.generate("other")
    data = librivox[1].path.read_bytes()
    ids = [_submit(base, key, data).json()["id"] for _ in range(3)]
    mine = {"Authorization": f"Bearer {key}"}
    theirs = {"Authorization": f"Bearer {other}"}

    page = httpx.get(f"{base}/v1/jobs", params={"limit": 2}, headers=mine).json()
    assert [j["id"] for j in page["data"]] == ids[::-1][:2] and page["has_more"] and page["next"] == ids[1]
    page2 = httpx.get(f"{base}/v1/jobs", params={"limit": 2, "before": page["next"]}, headers=mine).json()
    assert [j["id"] for j in page2["data"]] == [ids[0]] and not page2["has_more"] and page2["next"] is None

    # Another key sees nothing of them.
    assert httpx.get(f"{base}/v1/jobs", headers=theirs).json()["data"] == []
    for method, path in (("GET", ""), ("GET", "/result"), ("DELETE", "")):
        r = httpx.request(method, f"{base}/v1/jobs/{ids[0]}{path}", headers=theirs)
        assert r.status_code == 404 and r.json()["error"]["code"] == "job_not_found", r.text

    folder = handle.settings.jobs_dir / ids[0]
    assert (folder / "upload").read_bytes() == data
    r = httpx.delete(f"{base}/v1/jobs/{ids[0]}", headers=mine)
    assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
    assert not folder.exists()
    r = httpx.get(f"{base}/v1/jobs/{ids[0]}/result", headers=mine)
    assert r.status_code == 409 and r.json()["error"]["code"] == "job_not_succeeded"
    assert httpx.delete(f"{base}/v1/jobs/{ids[0]}", headers=mine).json()["status"] == "cancelled"

    stats = httpx.get(f"{base}/stats", headers=mine).json()["jobs"]
    assert stats["queued"] == 2 and stats["cancelled_total"] == 1 and stats["running"] == 0
    assert stats["oldest_queued_age_s"] > 0
    server.wait_for(lambda: "whisper_jobs_queued 2.0" in httpx.get(f"{base}/metrics").text, 5)
    metrics = httpx.get(f"{base}/metrics").text
    assert "whisper_jobs_queued 2.0" in metrics
    assert 'whisper_jobs_ended_total{status="cancelled"} 1.0' in metrics


def test_requests_are_checked_before_anything_is_queued(live, librivox):
    handle, server = live(job_workers=0, max_queued_jobs_per_key=2, max_upload_mb=0.05)
    base, key = _base(server), handle.api_key
    small = librivox[1].path.read_bytes()[:40000]  # under the 0.05 MB limit, still a WAV header
    cases = [
        (dict(response_format="mp3"), small, 400, "response_format"),
        (dict(language="xx"), small, 400, "language"),
        (dict(webhook_url="http://127.0.0.1:9/hook"), small, 400, "webhook_url"),
        (dict(), b"", 400, "file"),
        (dict(), b"\0" * 60000, 413, "file"),
    ]
    for form, data, status, param in cases:
        r = _submit(base, key, data, **form)
        assert r.status_code == status, (form, r.text)
        assert r.json()["error"]["param"] == param, r.text
        if status == 413:
            assert "0.05 MB" in r.json()["error"]["message"]
    r = httpx.post(f"{base}/v1/jobs", headers={"Authorization": f"Bearer {key}"}, data={"language": "en"})
    assert r.status_code == 422
    assert httpx.post(f"{base}/v1/jobs", files={"file": ("a.wav", small)}).status_code == 401
    assert not any(handle.settings.jobs_dir.glob("job_*"))  # refused uploads leave nothing

    assert _submit(base, key, small).status_code == 202
    assert _submit(base, key, small).status_code == 202
    r = _submit(base, key, small)
    assert r.status_code == 429 and r.headers["retry-after"] == "30"
    assert r.json()["error"]["code"] == "too_many_queued_jobs"
    assert len(list(handle.settings.jobs_dir.glob("job_*"))) == 2


def test_cancel_a_running_job_and_retention(live, librivox, tmp_path):
    handle, server = live()
    base, key = _base(server), handle.api_key
    audio, _ = _joined(librivox, 1.5, repeat=6)  # ~3 min: a few pieces
    job_id = _submit(base, key, _wav(tmp_path, "long.wav", audio), language="en").json()["id"]
    job = _wait(base, key, job_id, until=("running",) + ENDED)
    assert job["status"] == "running", job
    folder = handle.settings.jobs_dir / job_id
    ctx = handle.app.state.ctx
    on_loop = lambda coro: asyncio.run_coroutine_threadsafe(coro, server.loop).result(60)  # noqa: E731

    # A clean stop (what SIGTERM does) hands the running job back at once; started again, it resumes.
    on_loop(ctx.stop_jobs())
    job = _wait(base, key, job_id, timeout=0)
    assert job["status"] == "queued" and job["attempts"] == 1, job
    on_loop(ctx.ensure_jobs())
    job = _wait(base, key, job_id, until=("running",) + ENDED)
    assert job["status"] == "running" and job["attempts"] == 2, job
    r = httpx.delete(f"{base}/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
    assert not folder.exists()
    runner = handle.app.state.ctx.jobs.runner
    assert server.wait_for(lambda: not runner.running, 60), "the runner kept working on a cancelled job"
    time.sleep(0.5)
    job = _wait(base, key, job_id)
    assert job["status"] == "cancelled" and "result" not in job and not folder.exists()

    # A short job that succeeds, then retention: ended jobs older than the retention go with their files.
    done = _submit(base, key, librivox[1].path.read_bytes(), language="en").json()["id"]
    assert _wait(base, key, done)["status"] == "succeeded"
    assert (handle.settings.jobs_dir / done).exists()
    service = handle.app.state.ctx.jobs
    sweep = lambda now: asyncio.run_coroutine_threadsafe(service.sweep(now=now), server.loop).result(30)  # noqa: E731
    assert sweep(time.time()) == 0  # nothing is 7 days old yet
    assert sweep(time.time() + 7 * 86400 + 60) == 2
    assert not (handle.settings.jobs_dir / done).exists()
    r = httpx.get(f"{base}/v1/jobs/{done}", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 404


def test_kill_9_mid_job_resumes_from_checkpoints(server_process, librivox, tmp_path):
    """A ~10-minute recording; the server is killed with -9 while the job runs and started again on the same
    jobs dir and key file: the job completes once, with the right words, resumed where it was."""
    audio, reference = _joined(librivox, 1.5, repeat=19)  # 19 x 5 clips + pauses: ~10 min
    assert 540 < len(audio) / 16000 < 720
    data = _wav(tmp_path, "meeting.wav", audio)
    port = free_port()
    # Greedy decoding keeps the test's ~10 minutes of audio quick on a small CPU; resuming is what is tested.
    args = ("--mode", "ws", "--ws-port", str(port), "--host", "127.0.0.1", "--admin-key", ADMIN_KEY,
            "--jobs-dir", str(tmp_path / "jobs"), "--beam-size", "1")
    first = server_process(*args, "--generate-key", "jobs")
    base = f"http://127.0.0.1:{port}"
    first.wait_http(base + "/health")
    key = re.search(r"New API key \(--generate-key\): (sk-[0-9a-f]{48})", first.log()).group(1)
    job_id = _submit(base, key, data, response_format="verbose_json").json()["id"]

    seen: list[float] = []
    t0 = time.monotonic()
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:  # kill once a few pieces are done (progress past 0.25)
        job = _wait(base, key, job_id, timeout=0)
        seen.append(job["progress"])
        assert job["status"] in ("queued", "running"), job
        if job["progress"] >= 0.25:
            break
        time.sleep(0.3)
    at_kill = seen[-1]
    print(f"killed at progress {at_kill} after {time.monotonic() - t0:.1f} s")
    assert 0.25 <= at_kill < 1, seen
    os.kill(first.proc.pid, signal.SIGKILL)
    first.proc.wait(10)
    pieces = sorted((tmp_path / "jobs" / job_id).glob("piece-*.json"))
    assert len(pieces) >= 2 and (tmp_path / "jobs" / job_id / "plan.json").is_file()

    second = server_process(*args)
    second.wait_http(base + "/health")
    after_restart = None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        job = _wait(base, key, job_id, timeout=0)
        seen.append(job["progress"])
        if after_restart is None:
            after_restart = job["progress"]
        if job["status"] in ENDED:
            break
        time.sleep(0.5)
    print(f"done after {time.monotonic() - t0:.1f} s")
    assert job["status"] == "succeeded", (job, second.log()[-3000:])
    assert all(b >= a for a, b in zip(seen, seen[1:])), seen  # progress never went down
    assert after_restart >= at_kill, (after_restart, at_kill)
    assert job["attempts"] == 2, job
    log = second.log()
    resumed = re.search(r"Job %s resumed: (\d+) of (\d+) pieces from checkpoints" % job_id, log)
    assert resumed and int(resumed.group(1)) >= len(pieces), log[-3000:]
    text = job["result"]["text"]
    assert wer(reference, text) <= 0.15, text[:500]
    assert abs(job["result"]["duration"] - len(audio) / 16000) < 0.1
    starts = [s["start"] for s in job["result"]["segments"]]
    assert starts == sorted(starts) and starts[-1] > 500  # timestamps run over the whole recording
    assert second.stop() == 0 and "Traceback" not in second.log(), second.log()[-3000:]  # a clean SIGTERM


def test_audio_over_the_job_limit_or_undecodable_fails_the_job(live, librivox):
    handle, server = live(max_job_duration_s=2)
    base, key = _base(server), handle.api_key
    long_id = _submit(base, key, librivox[0].path.read_bytes()).json()["id"]  # a 7 s clip
    junk_id = _submit(base, key, b"this is not audio at all").json()["id"]
    job = _wait(base, key, long_id)
    assert job["status"] == "failed" and "--max-job-duration-s" in job["error"] and "result" not in job, job
    job = _wait(base, key, junk_id)
    assert job["status"] == "failed" and "decode" in job["error"].lower(), job
    r = httpx.get(f"{base}/v1/jobs/{junk_id}/result", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 409 and "failed" in r.json()["error"]["message"]
    stats = httpx.get(f"{base}/stats", headers=handle.auth).json()["jobs"]
    assert stats["failed_total"] == 2 and stats["succeeded_total"] == 0
