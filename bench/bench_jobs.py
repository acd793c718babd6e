#!/usr/bin/env python3
"""Durable jobs vs direct requests: what the queue costs, and how soon an idle server starts a job.

One whisper_server.py process (bundled base model, --no-auth, its own jobs dir) serves both paths, so both
see the same model, threads and box:

* throughput: N files of real speech (LibriVox sentences joined with half-second pauses, 30-60 s each)
  through the queue (submit all to POST /v1/jobs, poll until all ended) and the same files through
  POST /transcribe with as many requests at once as the server runs jobs at once (--job-workers, default 1:
  one after another). The two are alternated for --rounds rounds so a drift of the box hits both; the ratio
  queue / direct of each round and of the medians is printed (the queue should cost under 5 %).
* paired: each file once directly and once as a lone job, one right after the other (which goes first
  alternates), so the two times of a pair meet the same load; on a shared box this ratio is steadier than
  the batch one.
* start latency: on the idle server, one short job at a time; the time from the 202 answer (and from the
  start of the upload) to the first GET /v1/jobs/{id} that says "running" (polled every 5 ms), median of
  --samples jobs.

Word error rates of both paths are printed so a fast wrong answer cannot pass for throughput.
Run: .venv/bin/python bench/bench_jobs.py [--files 8] [--rounds 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import wave
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import ServerProcess, free_port  # noqa: E402
from tests.speech import librivox_clips, wer  # noqa: E402
from whisper_stt.audio import SAMPLE_RATE, decode_file  # noqa: E402

ENDED = ("succeeded", "failed", "cancelled")


def make_files(out: Path, count: int) -> list[tuple[Path, str, float]]:
    """``count`` WAVs of 6-11 LibriVox sentences each (about 33-60 s): (path, reference text, seconds)."""
    clips = librivox_clips()
    if not clips:
        sys.exit("needs Debian's pocketsphinx-testdata (LibriVox clips)")
    audio = [decode_file(str(c.path)) for c in clips]
    pause = np.zeros(SAMPLE_RATE // 2, np.float32)
    files = []
    for i in range(count):
        picks = [(i + j) % len(clips) for j in range(6 + (i * 5) % 6)]
        samples = np.concatenate([part for k in picks for part in (audio[k], pause)])
        path = out / f"speech_{i:02d}.wav"
        with wave.open(str(path), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(SAMPLE_RATE)
            w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
        files.append((path, " ".join(clips[k].text for k in picks), len(samples) / SAMPLE_RATE))
    return files


class Bench:
    def __init__(self, base: str) -> None:
        self.base = base
        self.client = httpx.Client(timeout=600, limits=httpx.Limits(max_connections=64))

    def direct(self, path: Path) -> str:
        with path.open("rb") as fh:
            r = self.client.post(self.base + "/transcribe", files={"file": (path.name, fh)})
        r.raise_for_status()
        return r.json()["text"]

    def submit(self, path: Path) -> str:
        with path.open("rb") as fh:
            r = self.client.post(self.base + "/v1/jobs", files={"file": (path.name, fh)})
        if r.status_code != 202:
            raise RuntimeError(f"submit: {r.status_code} {r.text[:300]}")
        return r.json()["id"]

    def job(self, job_id: str) -> dict:
        r = self.client.get(f"{self.base}/v1/jobs/{job_id}")
        r.raise_for_status()
        return r.json()

    def wait_all(self, ids: list[str], poll_s: float = 0.1) -> dict[str, dict]:
        """One GET /v1/jobs (the key's list) per poll, not one GET per job: on a 2-core box eight jobs polled
        one by one every 0.1 s are 80 requests a second taken from the transcription being measured."""
        wanted = set(ids)
        while True:
            r = self.client.get(f"{self.base}/v1/jobs", params={"limit": max(len(ids), 1)})
            r.raise_for_status()
            status = {j["id"]: j["status"] for j in r.json()["data"] if j["id"] in wanted}
            if len(status) == len(wanted) and all(s in ENDED for s in status.values()):
                break
            time.sleep(poll_s)
        return {job_id: self.job(job_id) for job_id in ids}

    def through_queue(self, paths: list[Path]) -> tuple[float, list[str]]:
        began = time.perf_counter()
        ids = [self.submit(p) for p in paths]
        done = self.wait_all(ids)
        took = time.perf_counter() - began
        bad = [j for j in done.values() if j["status"] != "succeeded"]
        if bad:
            raise RuntimeError(f"jobs did not succeed: {bad[:2]}")
        return took, [done[i]["result"]["text"] for i in ids]

    def through_direct(self, paths: list[Path], concurrency: int) -> tuple[float, list[str]]:
        began = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            texts = list(pool.map(self.direct, paths))
        return time.perf_counter() - began, texts

    def one_job(self, path: Path) -> tuple[float, str]:
        """Submit, poll every 20 ms until it ended: (seconds from upload start to seen ended, text)."""
        began = time.perf_counter()
        job_id = self.submit(path)
        while True:
            job = self.job(job_id)
            if job["status"] in ENDED:
                break
            time.sleep(0.02)
        if job["status"] != "succeeded":
            raise RuntimeError(f"job did not succeed: {job}")
        return time.perf_counter() - began, job["result"]["text"]

    def one_direct(self, path: Path) -> tuple[float, str]:
        began = time.perf_counter()
        text = self.direct(path)
        return time.perf_counter() - began, text

    def start_latency(self, path: Path) -> tuple[float, float]:
        """(202 answer -> seen running, upload start -> seen running), seconds."""
        sent = time.perf_counter()
        job_id = self.submit(path)
        answered = time.perf_counter()
        while True:
            job = self.job(job_id)
            if job["status"] != "queued":
                seen = time.perf_counter()
                break
            time.sleep(0.005)
        self.wait_all([job_id], 0.05)  # idle again before the next sample
        return seen - answered, seen - sent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2, help="queue / direct pairs, alternated (default 2)")
    ap.add_argument("--samples", type=int, default=7, help="jobs for the start latency (default 7)")
    ap.add_argument("--job-workers", type=int, default=1, help="the server's --job-workers (default 1)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench_jobs_"))
    files = make_files(tmp, args.files)
    paths = [f[0] for f in files]
    audio_s = sum(f[2] for f in files)
    port = free_port()
    server = ServerProcess(
        ["--mode", "ws", "--ws-port", str(port), "--host", "127.0.0.1", "--no-auth", "--models-dir",
         str(ROOT / "models"), "--device", args.device, "--key-file", str(tmp / "keys.json"),
         "--jobs-dir", str(tmp / "jobs"), "--job-workers", str(args.job_workers), "--log-level", "warning"],
        tmp,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        server.wait_http(base + "/health", timeout=120)
        bench = Bench(base)
        bench.direct(paths[0])  # warm-up: both paths once
        bench.through_queue(paths[:1])

        rounds = []
        for r in range(args.rounds):
            # alternate which path goes first, so neither always meets a warmer or cooler box
            order = ("queue", "direct") if r % 2 == 0 else ("direct", "queue")
            got = {}
            for name in order:
                got[name] = (bench.through_queue(paths) if name == "queue"
                             else bench.through_direct(paths, args.job_workers))
            rounds.append(got)
            print(f"round {r + 1}: queue {got['queue'][0]:.2f} s, direct {got['direct'][0]:.2f} s, "
                  f"queue/direct {got['queue'][0] / got['direct'][0]:.3f}", flush=True)

        pairs = []
        for i, path in enumerate(paths):
            if i % 2 == 0:
                d_s, _ = bench.one_direct(path)
                q_s, _ = bench.one_job(path)
            else:
                q_s, _ = bench.one_job(path)
                d_s, _ = bench.one_direct(path)
            pairs.append((q_s, d_s))
        print("paired (job / direct per file): " + ", ".join(f"{q / d:.3f}" for q, d in pairs), flush=True)

        latencies = [bench.start_latency(paths[0]) for _ in range(args.samples)]

        refs = [f[1] for f in files]
        last = rounds[-1]
        wer_queue = statistics.mean(wer(ref, text) for ref, text in zip(refs, last["queue"][1]))
        wer_direct = statistics.mean(wer(ref, text) for ref, text in zip(refs, last["direct"][1]))
        same = sum(a == b for a, b in zip(last["queue"][1], last["direct"][1]))
        q = statistics.median(r["queue"][0] for r in rounds)
        d = statistics.median(r["direct"][0] for r in rounds)
        print()
        print(f"{args.files} files, {audio_s:.0f} s of real speech ({min(f[2] for f in files):.0f}-"
              f"{max(f[2] for f in files):.0f} s each), bundled base model on {args.device} "
              f"({os.cpu_count()} cores), --job-workers {args.job_workers}, direct requests "
              f"{args.job_workers} at a time; median of {args.rounds} alternated rounds")
        print(f"  queue (submit all, poll until all ended): {q:7.2f} s  ({audio_s / q:5.1f}x real time)  "
              f"mean WER {wer_queue:.3f}")
        print(f"  direct POST /transcribe:                  {d:7.2f} s  ({audio_s / d:5.1f}x real time)  "
              f"mean WER {wer_direct:.3f}")
        print(f"  queue / direct: {q / d:.3f}  (per round: "
              + ", ".join(f"{r['queue'][0] / r['direct'][0]:.3f}" for r in rounds) + ")")
        print(f"  identical texts on both paths: {same}/{args.files}")
        q_sum, d_sum = sum(q for q, _ in pairs), sum(d for _, d in pairs)
        print(f"  paired, each file as a lone job right next to the same file direct: job {q_sum:.2f} s, "
              f"direct {d_sum:.2f} s, ratio {q_sum / d_sum:.3f}; median of the per-file ratios "
              f"{statistics.median(q / d for q, d in pairs):.3f}")
        after_answer = [a for a, _ in latencies]
        after_send = [b for _, b in latencies]
        print(f"  submit -> running on the idle server ({args.samples} jobs, {files[0][2]:.0f} s file): "
              f"median {statistics.median(after_answer) * 1000:.0f} ms after the 202 "
              f"(min {min(after_answer) * 1000:.0f}, max {max(after_answer) * 1000:.0f}), "
              f"{statistics.median(after_send) * 1000:.0f} ms after the upload began")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
