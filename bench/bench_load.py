#!/usr/bin/env python3
"""How many real-time streams one box holds: N concurrent WebSocket clients replaying real speech.

First it opens 200 idle connections (started, no audio) and reports the memory they add. Then for each
N in the ramp, N clients stream the LibriVox clips (read speech with natural 2.5 s pauses) at
real-time pace, staggered, to a freshly started server (bundled base model). Per N it prints: final
latency p50/p95 (end of speech -> final), latency in the first vs the second half of the run (growing lag
shows as a larger second half), partials per second of speech, the finals' word error rate, the server's
CPU use (cores) and resident memory.

The same run then measures the original server's way of streaming as the baseline, in-process on the
same model: every 1 s chunk of every stream is transcribed on its own (full 30 s window, beam 5, one call
at a time); it reports the p50/p95 delay from a chunk's end to its text, the delay growth, and the word
error rate of the concatenated chunk texts.

Run: .venv/bin/python bench/bench_load.py [--streams 1,4,8,12,16,20] [--baseline-streams 1,2,4]

Before/after on the same box: ``git worktree add /tmp/base <commit>`` and add ``--against /tmp/base``; each N
then runs against both servers back to back (this tree's first), both started fresh from the same client
and clips, and a ratio table follows (new / against). ``--baseline-streams 0`` skips the original's
algorithm. ``--cpu-sample`` prints each server's busiest threads per N (from /proc, so no profiler needed).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.speech import librivox_clips, wer  # noqa: E402
from whisper_stt.audio import SAMPLE_RATE, decode_file  # noqa: E402

_spec = importlib.util.spec_from_file_location("bench_streaming", Path(__file__).with_name("bench_streaming.py"))
bs = importlib.util.module_from_spec(_spec)
sys.modules["bench_streaming"] = bs  # its dataclasses look their module up
_spec.loader.exec_module(bs)


def speech_item() -> "bs.Item":
    clips = librivox_clips()
    if not clips:
        sys.exit("needs Debian's pocketsphinx-testdata (LibriVox clips)")
    gap = np.zeros(int(2.5 * SAMPLE_RATE), dtype=np.float32)
    parts = [gap[:8000]]
    for clip in clips:
        parts += [decode_file(str(clip.path)), gap]
    return bs.Item("librivox", np.concatenate(parts), " ".join(c.text for c in clips), "en")


def pct(values, q):
    return float(np.percentile(values, q)) if values else float("nan")


class ProcWatch:
    """CPU seconds and peak RSS of a process, from /proc."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_rss_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def _poll(self) -> None:
        while not self._stop.wait(0.5):
            self.peak_rss_mb = max(self.peak_rss_mb, self.rss_mb())

    def __enter__(self):
        self.peak_rss_mb = self.rss_mb()
        self._cpu0, self._t0 = self.cpu_seconds(), time.monotonic()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._stop.clear()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(2)
        self.cores = (self.cpu_seconds() - self._cpu0) / (time.monotonic() - self._t0)


async def idle_connections(url: str, n: int, watch: ProcWatch) -> tuple[int, float]:
    """Open ``n`` connections that only say start (no audio); the server's RSS growth they cause."""
    import json

    import websockets

    before = watch.rss_mb()
    conns = []
    try:
        for _ in range(n):
            ws = await websockets.connect(url, open_timeout=30)
            await asyncio.wait_for(ws.recv(), 30)  # connected
            await ws.send(json.dumps({"command": "start"}))
            await asyncio.wait_for(ws.recv(), 30)  # status
            conns.append(ws)
        await asyncio.sleep(2)
        return len(conns), watch.rss_mb() - before
    finally:
        for ws in conns:
            await ws.close()


async def run_streams(url: str, item, n: int, args) -> list:
    async def one(i: int):
        await asyncio.sleep(i * args.stagger)
        return await bs.replay(url, None, item, args)

    # A stream that fails (closed by the server, timed out) is counted as dropped, not fatal to the run.
    return await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread ("name/tid") of a process, from /proc (Python threads all show as the
    interpreter's name unless they set one; the main thread's tid is the pid)."""
    out: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[f"{name}/{task.name}"] = (int(fields[11]) + int(fields[12])) / tick
    return out


def measure_server(n: int, url: str, item, args, watch: ProcWatch) -> dict:
    threads0 = thread_cpu(watch.pid) if args.cpu_sample else {}
    began = time.monotonic()
    with watch:
        results = asyncio.run(run_streams(url, item, n, args))
    wall = time.monotonic() - began
    if args.cpu_sample:
        threads1 = thread_cpu(watch.pid)
        busy = sorted(((threads1[k] - threads0.get(k, 0.0)) / wall, k) for k in threads1)[::-1]
        print(f"    N={n} threads (cores): " + ", ".join(f"{k} {c:.2f}" for c, k in busy[:8] if c >= 0.01),
              file=sys.stderr, flush=True)
    dropped = [r for r in results if isinstance(r, BaseException)]
    for exc in dropped[:3]:
        print(f"    dropped stream: {exc!r}", file=sys.stderr, flush=True)
    rows = []
    for res in results:
        if isinstance(res, BaseException):
            continue
        res.whole_text = ""
        rows.append(bs.analyse(res))
    if not rows:
        nan = float("nan")
        return {"n": n, "p50": nan, "p95": nan, "first_half": nan, "second_half": nan, "partials": nan,
                "err": nan, "finals": 0, "cpu": watch.cores, "rss": watch.peak_rss_mb, "first_p50": nan,
                "first_p95": nan, "dropped": len(dropped), "cpu_per_min": nan}
    lat = [x for r in rows for x in r["final_lat"]]
    first = [x for r in rows for x in r["first_lat"]]
    halves = [[], []]
    for r in rows:
        k = len(r["final_lat"])
        halves[0] += r["final_lat"][: k // 2]
        halves[1] += r["final_lat"][k // 2:]
    return {
        "n": n,
        "p50": pct(lat, 50), "p95": pct(lat, 95),
        "first_half": statistics.mean(halves[0]) if halves[0] else float("nan"),
        "second_half": statistics.mean(halves[1]) if halves[1] else float("nan"),
        "partials": statistics.mean(r["partials_per_s"] for r in rows),
        "err": statistics.mean(r["stream_err"] for r in rows),
        "finals": sum(r["finals"] for r in rows),
        "cpu": watch.cores, "rss": watch.peak_rss_mb,
        "first_p50": pct(first, 50), "first_p95": pct(first, 95), "dropped": len(dropped),
        # CPU seconds the server spent per minute of one stream's audio: the cost of a stream, which other
        # load on the box inflates much less than it does latency (capacity ~ cores * 60 / this)
        "cpu_per_min": watch.cores * wall / (n * len(item.audio) / SAMPLE_RATE / 60),
    }


def measure_baseline(n: int, item, model, max_wall: float) -> dict:
    """The original's algorithm: each 1 s chunk alone, full window, one model call at a time."""
    audio = item.audio
    chunks = [audio[i:i + SAMPLE_RATE] for i in range(0, len(audio), SAMPLE_RATE)]
    pool = ThreadPoolExecutor(max_workers=1)
    lock = threading.Lock()
    delays: list[list[float]] = [[] for _ in range(n)]
    texts: list[list[str]] = [[""] * len(chunks) for _ in range(n)]
    began = time.monotonic()

    def work(stream: int, idx: int, ready: float) -> None:
        segments, _ = model.transcribe(chunks[idx], beam_size=5, language="en", vad_filter=False)
        text = "".join(s.text for s in segments).strip()
        with lock:
            texts[stream][idx] = text
            delays[stream].append(time.monotonic() - ready)

    futures = []
    stop_at = began + max_wall
    # chunks become ready at real-time pace; streams are staggered by 0.37 s
    events = sorted((s * 0.37 + (i + 1), s, i) for s in range(n) for i in range(len(chunks)))
    for at, s, i in events:
        now = time.monotonic() - began
        if at > now:
            time.sleep(at - now)
        if time.monotonic() > stop_at:
            break
        futures.append(pool.submit(work, s, i, began + at))
    pool.shutdown(wait=False, cancel_futures=True)
    deadline = time.monotonic() + 30
    for f in futures:
        if f.cancelled():
            continue
        try:
            f.result(timeout=max(0.0, deadline - time.monotonic()))
        except Exception:
            break
    with lock:
        flat = [d for ds in delays for d in ds]
        halves = [d for ds in delays for d in ds[: len(ds) // 2]], [d for ds in delays for d in ds[len(ds) // 2:]]
        done = sum(len(ds) for ds in delays)
        errs = [wer(item.reference, " ".join(t for t in texts[s] if t)) for s in range(n)]
    return {
        "n": n, "p50": pct(flat, 50), "p95": pct(flat, 95),
        "first_half": statistics.mean(halves[0]) if halves[0] else float("nan"),
        "second_half": statistics.mean(halves[1]) if halves[1] else float("nan"),
        "done": done, "submitted": len(futures), "err": statistics.mean(errs),
    }


def soak(url: str, item, args, watch: ProcWatch, idle_rss: float) -> None:
    print(f"Soak: {args.soak_streams} streams of {len(item.audio) / SAMPLE_RATE:.0f} s LibriVox speech, round "
          f"after round for {args.soak_minutes:g} min; server RSS after start {idle_rss:.0f} MB", flush=True)
    print(f"{'round':>5} {'minute':>6} {'final p95':>9} {'WER':>6} {'RSS MB':>7}", flush=True)
    began = time.monotonic()
    k = 0
    while time.monotonic() - began < args.soak_minutes * 60:
        k += 1
        row = measure_server(args.soak_streams, url, item, args, watch)
        print(f"{k:>5} {(time.monotonic() - began) / 60:>6.1f} {row['p95']:>9.2f} {row['err']:>6.3f} "
              f"{watch.rss_mb():>7.0f}", flush=True)


class Server:
    """A fresh WebSocket server from the checkout at ``root`` (its own code, this client and clips)."""

    def __init__(self, root: Path, args) -> None:
        tmp = Path(tempfile.mkdtemp(prefix="bench_load_"))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.proc = subprocess.Popen(
            [sys.executable, str(root / "whisper_server.py"), "--mode", "ws", "--ws-port", str(port), "--no-auth",
             "--models-dir", args.models_dir, "--host", "127.0.0.1", "--log-level", "warning",
             *args.server_args.split()],
            cwd=tmp, stdout=open(tmp / "server.log", "wb"), stderr=subprocess.STDOUT,
        )
        self.url = f"ws://127.0.0.1:{port}/ws/transcribe"
        self.http = f"http://127.0.0.1:{port}"
        self.watch = ProcWatch(self.proc.pid)

    def wait_ready(self) -> None:
        for _ in range(240):
            try:
                httpx.get(f"{self.http}/health", timeout=2)
                return
            except httpx.HTTPError:
                time.sleep(0.5)

    def idle_memory(self, args) -> tuple[float, int, float]:
        idle_rss = self.watch.rss_mb()
        conns, delta = asyncio.run(idle_connections(self.url, args.idle, self.watch)) if args.idle else (0, 0.0)
        return idle_rss, conns, delta

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def print_rows(rows: list[dict]) -> None:
    print(f"{'streams':>7} {'final p50':>9} {'p95':>6} {'1st half':>8} {'2nd half':>8} {'1st partial p50':>15} "
          f"{'p95':>5} {'partials/s':>10} {'WER':>6} {'finals':>6} {'dropped':>7} {'CPU cores':>9} "
          f"{'CPU s/stream-min':>16} {'RSS MB':>7}")
    for r in rows:
        print(f"{r['n']:>7} {r['p50']:>9.2f} {r['p95']:>6.2f} {r['first_half']:>8.2f} {r['second_half']:>8.2f} "
              f"{r['first_p50']:>15.2f} {r['first_p95']:>5.2f} {r['partials']:>10.2f} {r['err']:>6.3f} "
              f"{r['finals']:>6} {r['dropped']:>7} {r['cpu']:>9.2f} {r['cpu_per_min']:>16.2f} {r['rss']:>7.0f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", default="1,4,8,12,16,20")
    ap.add_argument("--baseline-streams", default="1,2,4")
    ap.add_argument("--silence-threshold", type=float, default=2.0)
    ap.add_argument("--stagger", type=float, default=0.37, help="seconds between stream starts")
    ap.add_argument("--idle", type=int, default=200, help="idle connections for the memory check")
    ap.add_argument("--soak-minutes", type=float, default=0.0,
                    help="instead of the ramp: replay --soak-streams streams round after round for this long, "
                    "printing latency and the server's RSS per round (memory growth check)")
    ap.add_argument("--soak-streams", type=int, default=8)
    ap.add_argument("--models-dir", default=str(ROOT / "models"))
    ap.add_argument("--against", default="",
                    help="other checkouts, comma-separated (e.g. a git worktree of the baseline commit): their "
                    "servers run the same ramp right after this tree's, per N, and ratio tables follow")
    ap.add_argument("--server-args", default="", help="extra server flags for every tree, e.g. \"--cpu-threads 1\"")
    ap.add_argument("--cpu-sample", action="store_true", help="print CPU cores per server thread name per N")
    args = ap.parse_args()
    args.speed, args.chunk_ms = 1.0, 100

    item = speech_item()
    trees = [("this tree", ROOT)] + [(f"against {k + 1}" if "," in args.against else "against", Path(d).resolve())
                                     for k, d in enumerate(x for x in args.against.split(",") if x)]
    servers = [Server(root, args) for _, root in trees]
    rows: list[list[dict]] = [[] for _ in trees]
    lanes = []
    try:
        for server in servers:
            server.wait_ready()
        idle = [server.idle_memory(args) for server in servers]
        if args.soak_minutes:
            soak(servers[0].url, item, args, servers[0].watch, idle[0][0])
            return 0
        for n in (int(x) for x in args.streams.split(",")):
            for k, server in enumerate(servers):
                row = measure_server(n, server.url, item, args, server.watch)
                rows[k].append(row)
                print(f"  {trees[k][0]} N={n}: p95 {row['p95']:.2f} s, first partial p95 {row['first_p95']:.2f} s, "
                      f"dropped {row['dropped']}, load average {os.getloadavg()[0]:.2f}", file=sys.stderr, flush=True)
        lanes = []
        for server in servers:
            figures = httpx.get(f"{server.http}/health").json()["transcriptions"]
            lanes.append(dict(figures["stream_lane"], careful_decodes=figures.get("careful_decodes")))
    finally:
        for server in servers:
            server.stop()

    audio_s = len(item.audio) / SAMPLE_RATE
    for k, (label, root) in enumerate(trees):
        idle_rss, idle_conns, idle_delta = idle[k]
        print(f"\n[{label}: {root}] Real-time streams on this box ({os.cpu_count()} cores), bundled base int8, "
              f"silence_threshold {args.silence_threshold} s, {audio_s:.0f} s of LibriVox speech per stream, "
              f"server idle RSS {idle_rss:.0f} MB; {idle_conns} idle connections (started, no audio) added "
              f"{idle_delta:.1f} MB; load average at the end {os.getloadavg()[0]:.2f}")
        print_rows(rows[k])
        print(f"stream lane at the end: {lanes[k] if lanes else None}")
    for k in range(1, len(trees)):
        print(f"\nRatios, this tree / {trees[k][0]} (same run, back to back per N; < 1 is better except CPU cores)")
        print(f"{'streams':>7} {'final p50':>9} {'p95':>6} {'1st partial p95':>15} {'CPU cores':>9} {'CPU s/stream-min':>16}")
        for a, b in zip(rows[0], rows[k]):
            print(f"{a['n']:>7} {a['p50'] / b['p50']:>9.2f} {a['p95'] / b['p95']:>6.2f} "
                  f"{a['first_p95'] / b['first_p95']:>15.2f} {a['cpu'] / b['cpu']:>9.2f} "
                  f"{a['cpu_per_min'] / b['cpu_per_min']:>16.2f}")
    if args.baseline_streams.strip() in ("", "0"):
        return 0

    from faster_whisper import WhisperModel

    model = WhisperModel(str(Path(args.models_dir) / "base"), device="cpu", compute_type="int8")
    print("\nBaseline: the original's algorithm (each 1 s chunk alone, full 30 s window, beam 5, one call at a time)")
    print(f"{'streams':>7} {'delay p50':>9} {'p95':>6} {'1st half':>8} {'2nd half':>8} {'chunks done':>11} {'WER':>6}")
    for n in (int(x) for x in args.baseline_streams.split(",")):
        b = measure_baseline(n, item, model, max_wall=audio_s + 5)
        print(f"{b['n']:>7} {b['p50']:>9.2f} {b['p95']:>6.2f} {b['first_half']:>8.2f} {b['second_half']:>8.2f} "
              f"{b['done']:>5}/{b['submitted']:<5} {b['err']:>6.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
