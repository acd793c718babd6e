"""Jobs on workers anywhere: a real redis-server, one HTTP replica that only accepts jobs
(``--job-workers 0``), and two ``--worker`` processes, all sharing one jobs directory.

Each of 6 jobs (real LibriVox speech) is transcribed exactly once, by a worker; a worker killed with -9
while it holds a job loses it to the other worker after the lease, and the job completes with the right
words on its second attempt; a worker stopped with SIGTERM mid-job hands its job back and exits 0.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from whisper_stt.jobs.base import JobStatus
from whisper_stt.jobs.redis_store import RedisJobStore

from .conftest import MODELS_DIR, ROOT, ServerProcess, free_port
from .redis_support import RedisServer
from .speech import wer, write_wav
from .ws_support import concat_with_pauses, load

ADMIN = "job-workers-admin-secret"
LEASE_S = 3  # short, so the killed worker's job moves within seconds
pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None,
                                reason="redis-server is needed (run ./run_tests.sh, which installs it)")


def _wav(path: Path, clips) -> str:
    audio = concat_with_pauses([load(c.path) for c in clips], pause_s=1.0)
    write_wav(path, audio)
    return " ".join(c.text for c in clips)


def _worker_id(proc: ServerProcess, timeout: float = 90.0) -> str:
    """Wait until the worker says it takes jobs; its id (host:pid:random) from that line."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.proc.poll() is not None:
            raise AssertionError(f"worker exited with {proc.proc.returncode}:\n{proc.log()}")
        m = re.search(r"Worker (\S+): taking up to", proc.log())
        if m:
            return m.group(1)
        time.sleep(0.2)
    raise AssertionError(f"worker not ready within {timeout} s:\n{proc.log()}")


def _record(url: str, job_id: str):
    async def read():
        store = RedisJobStore(url)
        try:
            return await store.get(job_id)
        finally:
            await store.close()

    return asyncio.run(read())


def _ended_lines(proc: ServerProcess, job_id: str) -> int:
    return len(re.findall(rf"Job {job_id} (succeeded|failed|cancelled)\b", proc.log()))


class Setup:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.redis = RedisServer(root / "redis").start()
        self.jobs_dir = root / "jobs"  # one directory for all: the shared volume of a real deployment
        self.port = free_port()
        # CPU even where a GPU is: a job must still be running when the test catches a worker holding it
        common = ["--state-url", self.redis.url, "--jobs-dir", str(self.jobs_dir), "--models-dir", str(MODELS_DIR),
                  "--job-lease-s", str(LEASE_S), "--device", "cpu"]
        self.http = ServerProcess(["--mode", "ws", "--ws-port", str(self.port), "--host", "127.0.0.1",
                                   "--admin-key", ADMIN, "--job-workers", "0", *common], self._dir("http"))
        self.workers = [ServerProcess(["--worker", *common], self._dir(f"worker{i}")) for i in range(2)]
        self.http.wait_http(f"{self.base}/health", timeout=120)
        self.worker_ids = [_worker_id(w) for w in self.workers]
        r = httpx.post(f"{self.base}/admin/keys/generate?name=jobs", headers={"X-Admin-Key": ADMIN})
        assert r.status_code == 200, r.text
        key = r.json()["api_key"]
        self.auth = {"X-API-Key": key}
        listing = httpx.get(f"{self.base}/admin/keys", headers={"X-Admin-Key": ADMIN}).json()["keys"]
        self.key_id = next(k["id"] for k in listing if k["name"] == "jobs")

    def audio_seconds_used(self) -> float:
        r = httpx.get(f"{self.base}/admin/keys/{self.key_id}/usage", headers={"X-Admin-Key": ADMIN}, timeout=10)
        assert r.status_code == 200, r.text
        return r.json()["total"]["audio_seconds"]

    def _dir(self, name: str) -> Path:
        path = self.root / name
        path.mkdir()
        return path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def submit(self, path: Path) -> str:
        with path.open("rb") as fh:
            r = httpx.post(f"{self.base}/v1/jobs", headers=self.auth, timeout=30,
                           files={"file": (path.name, fh, "audio/wav")})
        assert r.status_code == 202, r.text
        assert r.json()["status"] == "queued"
        return r.json()["id"]

    def job(self, job_id: str) -> dict:
        r = httpx.get(f"{self.base}/v1/jobs/{job_id}", headers=self.auth, timeout=10)
        assert r.status_code == 200, r.text
        return r.json()

    def wait_ended(self, ids: list[str], timeout: float) -> dict[str, dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            jobs = {i: self.job(i) for i in ids}
            if all(JobStatus(j["status"]).ended for j in jobs.values()):
                return jobs
            time.sleep(0.3)
        raise AssertionError(f"jobs not done within {timeout} s: {[(i, j['status']) for i, j in jobs.items()]}\n"
                             + "\n".join(w.log()[-3000:] for w in self.workers))

    def close(self) -> None:
        for proc in [*self.workers, self.http]:
            proc.stop()
        self.redis.stop()


@pytest.fixture
def setup(tmp_path):
    s = Setup(tmp_path)
    yield s
    s.close()


def test_workers_share_the_queue_and_take_over_a_killed_workers_job(setup, librivox, tmp_path):
    clips = list(librivox)
    # --- 6 jobs, one LibriVox clip each (3-7 s of speech): each done once, by the workers ---------------
    files = []
    for i in range(6):
        chosen = [clips[i % len(clips)]]
        path = tmp_path / f"job{i}.wav"
        files.append((path, _wav(path, chosen)))
    t0 = time.monotonic()
    ids = [setup.submit(path) for path, _ in files]
    jobs = setup.wait_ended(ids, timeout=150)
    print(f"6 jobs done in {time.monotonic() - t0:.1f} s")
    by_worker = {w: 0 for w in setup.worker_ids}
    for job_id, (_, reference) in zip(ids, files):
        job = jobs[job_id]
        assert job["status"] == "succeeded", job
        assert job["attempts"] == 1, job
        assert wer(reference, job["result"]["text"]) <= 0.15, (reference, job["result"]["text"])
        record = _record(setup.redis.url, job_id)
        assert record.worker in by_worker  # finished by a worker, not the HTTP replica (it runs none)
        by_worker[record.worker] += 1
        # Reported done exactly once over all processes
        assert sum(_ended_lines(w, job_id) for w in setup.workers) == 1
        assert _ended_lines(setup.http, job_id) == 0
    assert all(n >= 1 for n in by_worker.values()), by_worker  # both workers took jobs
    # The workers count the jobs' audio against the key, in Redis, where the replicas read it
    total = sum(jobs[i]["duration"] for i in ids)
    deadline = time.monotonic() + 10  # usage is written to Redis within a second or so
    while setup.audio_seconds_used() < total - 0.5 and time.monotonic() < deadline:
        time.sleep(0.3)
    assert setup.audio_seconds_used() == pytest.approx(total, abs=0.5)

    # --- kill -9 the worker holding a job: the other one finishes it ------------------------------
    long_path = tmp_path / "long.wav"
    reference = _wav(long_path, clips[:3])  # about 17 s: running long enough to be caught holding it
    job_id = setup.submit(long_path)
    deadline = time.monotonic() + 60
    holder = None
    while time.monotonic() < deadline and holder is None:
        record = _record(setup.redis.url, job_id)
        if record.status is JobStatus.RUNNING and record.worker in setup.worker_ids:
            holder = setup.worker_ids.index(record.worker)
        else:
            time.sleep(0.05)
    assert holder is not None, "no worker took the job"
    setup.workers[holder].proc.send_signal(signal.SIGKILL)
    setup.workers[holder].proc.wait(10)
    survivor = 1 - holder
    t0 = time.monotonic()
    [job] = setup.wait_ended([job_id], timeout=90).values()
    print(f"killed worker's job done by the other {time.monotonic() - t0:.1f} s after the kill")
    assert job["status"] == "succeeded", job
    assert job["attempts"] == 2, job
    assert wer(reference, job["result"]["text"]) <= 0.15, (reference, job["result"]["text"])
    assert _record(setup.redis.url, job_id).worker == setup.worker_ids[survivor]
    assert _ended_lines(setup.workers[survivor], job_id) == 1
    assert _ended_lines(setup.workers[holder], job_id) == 0

    # --- SIGTERM mid-job: the job is handed back at once, the worker exits 0 without a traceback ----
    job_id = setup.submit(long_path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and _record(setup.redis.url, job_id).status is not JobStatus.RUNNING:
        time.sleep(0.05)
    assert _record(setup.redis.url, job_id).worker == setup.worker_ids[survivor]
    t0 = time.monotonic()
    code = setup.workers[survivor].stop(timeout=30)
    print(f"worker stopped {time.monotonic() - t0:.1f} s after SIGTERM")
    log = setup.workers[survivor].log()
    assert code == 0, log
    assert "Traceback" not in log, log
    back = _record(setup.redis.url, job_id)
    assert back.status is JobStatus.QUEUED and back.worker is None and back.attempts == 1, back


@pytest.mark.parametrize("args, says", [
    (["--state-url", "redis://:s3cret@127.0.0.1:{port}/0"], "Worker not started: The job store (Redis at "
                                                              "redis://:***@127.0.0.1:{port}/0) is unavailable"),
    (["--state-url", "http://example.com"], "Cannot open the job store: Redis URL must specify"),
    (["--job-workers", "0"], "--worker needs --job-workers 1 or more"),
])
def test_a_worker_that_cannot_work_says_why_in_one_line(tmp_path, args, says):
    port = free_port()  # nothing listens there
    args = [a.format(port=port) for a in args]
    proc = subprocess.run([sys.executable, str(ROOT / "whisper_server.py"), "--worker", "--jobs-dir",
                           str(tmp_path / "jobs"), "--models-dir", str(MODELS_DIR), *args],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert says.format(port=port) in out, out
    assert "Traceback" not in out and "s3cret" not in out
    assert "loaded on" not in out  # refused before loading the model
