#!/usr/bin/env python3
"""Shared state and scale-out, measured on this box.

Part 1, key verification: what an API key check adds to a REST request, with the JSON key file and with
Redis (a redis-server this script starts). In-process: p50/p99 of verify + per-key limit check + usage
record, with Redis both within its 1 s verification cache and with the cache cleared on every call. Over
HTTP: p50/p99 of ``GET /v1/models`` (key checked) minus ``GET /`` (no key) on one real server per backend.

Part 2, streams held (``--streams``): N real-time LibriVox streams against one replica, and against two
replicas sharing Redis behind nginx (deploy/nginx.conf), every replica with ``--cpu-threads 1``. Prints final
latency p50/p95 and WER per N; "held" means p95 <= silence threshold + 1 s.

Run: .venv/bin/python bench/bench_scale_out.py [--requests 500] [--streams 4,8,12,16]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import MODELS_DIR, ServerProcess, free_port  # noqa: E402
from tests.nginx_support import NginxProxy  # noqa: E402
from tests.redis_support import RedisServer  # noqa: E402
from whisper_stt.keys import KeyStore  # noqa: E402
from whisper_stt.state import JsonState, Limits  # noqa: E402
from whisper_stt.state.redis_backend import RedisState  # noqa: E402

ADMIN = "bench-admin-secret"


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


async def in_process(state, key: str, n: int, clear_cache: bool) -> list[float]:
    times = []
    for _ in range(n):
        if clear_cache:
            state._cache.clear()
        t = time.perf_counter()
        info = await state.verify(key)
        await state.check_request(info)
        state.record(info.digest, requests=1)
        times.append(time.perf_counter() - t)
    return times


def part1(tmp: Path, redis: RedisServer, n: int) -> None:
    print("## Key verification\n")
    print("| backend | where | p50 | p99 |")
    print("|---|---|---|---|")

    async def measure():
        json_state = JsonState(KeyStore.open(tmp / "keys.json"))
        await json_state.bootstrap(ADMIN)
        limits = Limits(requests_per_minute=10 ** 9, audio_minutes_per_day=10 ** 6)
        key = await json_state.generate("bench", limits)
        rows = [("json", "in-process", await in_process(json_state, key, n * 10, False))]
        redis_state = RedisState(redis.url)
        rkey = await redis_state.generate("bench", limits)
        rows.append(("redis", "in-process, cached (<1 s)", await in_process(redis_state, rkey, n * 10, False)))
        rows.append(("redis", "in-process, uncached", await in_process(redis_state, rkey, n * 10, True)))
        await redis_state.close()
        return rows

    for backend, where, times in asyncio.run(measure()):
        print(f"| {backend} | {where} | {pct(times, 50) * 1e6:.0f} µs | {pct(times, 99) * 1e6:.0f} µs |")

    for backend in ("json", "redis"):
        port = free_port()
        cwd = tmp / f"http-{backend}"
        cwd.mkdir()
        args = ["--mode", "ws", "--ws-port", str(port), "--host", "127.0.0.1", "--admin-key", ADMIN,
                "--models-dir", str(MODELS_DIR)]
        if backend == "redis":
            args += ["--state-url", redis.url]
        server = ServerProcess(args, cwd)
        try:
            base = f"http://127.0.0.1:{port}"
            server.wait_http(base + "/health", timeout=120)
            key = httpx.post(f"{base}/admin/keys/generate?name=b", headers={"X-Admin-Key": ADMIN}).json()["api_key"]
            with httpx.Client() as client:
                def timed(path, headers):
                    out = []
                    for _ in range(n):
                        t = time.perf_counter()
                        client.get(base + path, headers=headers).raise_for_status()
                        out.append(time.perf_counter() - t)
                    return out

                timed("/", {})  # warm-up
                plain = timed("/", {})
                keyed = timed("/v1/models", {"Authorization": f"Bearer {key}"})
            added50 = (pct(keyed, 50) - pct(plain, 50)) * 1e3
            added99 = (pct(keyed, 99) - pct(plain, 99)) * 1e3
            print(f"| {backend} | over HTTP, added to a request ({pct(plain, 50) * 1e3:.2f} ms without a key) | "
                  f"{added50:+.2f} ms | {added99:+.2f} ms |")
        finally:
            server.stop()


def part2(tmp: Path, redis: RedisServer, streams: list[int], threshold: float) -> None:
    spec = importlib.util.spec_from_file_location("bench_load", ROOT / "bench" / "bench_load.py")
    bl = importlib.util.module_from_spec(spec)
    sys.modules["bench_load"] = bl
    spec.loader.exec_module(bl)
    item = bl.speech_item()
    ns = argparse.Namespace(stagger=0.37, silence_threshold=threshold, speed=1.0, chunk_ms=100)

    def start(i: int, state_url=None) -> tuple[ServerProcess, int]:
        port = free_port()
        cwd = tmp / f"replica-{i}-{state_url is not None}"
        cwd.mkdir()
        args = ["--mode", "ws", "--ws-port", str(port), "--host", "127.0.0.1", "--admin-key", ADMIN,
                "--cpu-threads", "1", "--models-dir", str(MODELS_DIR)]
        if state_url:
            args += ["--state-url", state_url]
        proc = ServerProcess(args, cwd)
        proc.wait_http(f"http://127.0.0.1:{port}/health", timeout=120)
        return proc, port

    def ramp(label: str, url: str, base: str) -> None:
        key = httpx.post(f"{base}/admin/keys/generate?name=load", headers={"X-Admin-Key": ADMIN}).json()["api_key"]
        held = 0
        for n in streams:
            async def run():
                async def one(i):
                    await asyncio.sleep(i * ns.stagger)
                    return await bl.bs.replay(url, key, item, ns)
                return await asyncio.gather(*(one(i) for i in range(n)))

            results = asyncio.run(run())
            rows = []
            for res in results:
                res.whole_text = ""
                rows.append(bl.bs.analyse(res))
            lat = [x for r in rows for x in r["final_lat"]]
            p95 = pct(lat, 95)
            err = statistics.mean(r["stream_err"] for r in rows)
            if p95 <= threshold + 1.0:
                held = n
            print(f"| {label} | {n} | {pct(lat, 50):.2f} s | {p95:.2f} s | {err:.1%} |", flush=True)
        print(f"| {label} | held | {held} streams | | |", flush=True)

    print(f"\n## Streams held (silence_threshold {threshold:g} s, --cpu-threads 1 per replica)\n")
    print("| setup | streams | final p50 | final p95 | WER |")
    print("|---|---|---|---|---|")
    one, port = start(0)
    try:
        ramp("1 replica", f"ws://127.0.0.1:{port}/ws/transcribe", f"http://127.0.0.1:{port}")
    finally:
        one.stop()
    replicas = [start(i, redis.url) for i in (1, 2)]
    # Every bench stream comes from 127.0.0.1, so the production hash on the client's address would send
    # them all to one replica; here it hashes on the client's source port instead (nothing else changes).
    proxy = NginxProxy([p for _, p in replicas], tmp / "nginx", hash_key="$remote_port").start()
    try:
        ramp("2 replicas + nginx", proxy.ws_url + "/ws/transcribe", f"http://127.0.0.1:{replicas[0][1]}")
    finally:
        proxy.stop()
        for proc, _ in replicas:
            proc.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--streams", default="", help="e.g. 4,8,12,16 (empty: skip the streams part)")
    ap.add_argument("--silence-threshold", type=float, default=1.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        redis = RedisServer(tmp / "redis").start()
        try:
            part1(tmp, redis, args.requests)
            if args.streams:
                part2(tmp, redis, [int(x) for x in args.streams.split(",")], args.silence_threshold)
        finally:
            redis.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
