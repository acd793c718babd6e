"""Two real replicas sharing a real redis-server, behind a real nginx (deploy/nginx.conf).

What an operator who outgrew one box relies on: keys made anywhere work everywhere, per-key stream limits
hold across replicas, a revocation on one replica ends streams on the other within a second, usage adds up
over replicas, a Redis outage is not an outage, and a replica killed with -9 costs its clients one
reconnect through nginx.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import time

import httpx
import numpy as np
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from whisper_stt.audio import SAMPLE_RATE, float32_to_pcm16

from .conftest import MODELS_DIR, ServerProcess, free_port
from .nginx_support import NginxProxy, find_nginx
from .redis_support import RedisServer
from .speech import wer
from .ws_support import concat_with_pauses, load, recv_json, run

ADMIN = "scale-out-admin-secret"
pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None or find_nginx() is None,
                                reason="redis-server and nginx are needed (run ./run_tests.sh as root)")


class Cluster:
    def __init__(self, root) -> None:
        self.root = root
        self.redis = RedisServer(root / "redis", persist=True).start()
        self.ports = [free_port(), free_port()]
        self.replicas = [self._replica(i) for i in range(2)]
        for port, replica in zip(self.ports, self.replicas):
            replica.wait_http(f"http://127.0.0.1:{port}/health", timeout=120)
        self.nginx = NginxProxy(self.ports, root / "nginx").start()

    def _replica(self, i: int) -> ServerProcess:
        cwd = self.root / f"replica{i}"
        cwd.mkdir(exist_ok=True)
        return ServerProcess(["--mode", "ws", "--ws-port", str(self.ports[i]), "--host", "127.0.0.1",
                              "--state-url", self.redis.url, "--admin-key", ADMIN,
                              "--models-dir", str(MODELS_DIR)], cwd)

    def base(self, i: int) -> str:
        return f"http://127.0.0.1:{self.ports[i]}"

    def ws(self, i: int) -> str:
        return f"ws://127.0.0.1:{self.ports[i]}/ws/transcribe"

    def new_key(self, i: int = 0, **limits) -> dict:
        query = "&".join(f"{k}={v}" for k, v in {"name": "t", **limits}.items())
        r = httpx.post(f"{self.base(i)}/admin/keys/generate?{query}", headers={"X-Admin-Key": ADMIN})
        assert r.status_code == 200, r.text
        key = r.json()["api_key"]
        listing = httpx.get(f"{self.base(i)}/admin/keys", headers={"X-Admin-Key": ADMIN}).json()["keys"]
        key_id = next(k["id"] for k in listing if key.startswith(k["preview"][:7]) and key.endswith(k["preview"][-4:]))
        return {"key": key, "id": key_id}

    def close(self) -> None:
        self.nginx.stop()
        for replica in self.replicas:
            replica.stop()
        self.redis.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("cluster"))
    yield c
    c.close()


@pytest.fixture(scope="module")
def speech(librivox):
    return librivox[0], load(librivox[0].path)


def transcribe(url: str, key: str, clip) -> httpx.Response:
    with clip.path.open("rb") as fh:
        return httpx.post(url + "/transcribe", headers={"X-API-Key": key},
                          files={"file": (clip.path.name, fh, "audio/wav")}, timeout=120)


async def open_stream(url: str, key: str):
    """Authenticate and start; returns (socket, first answer)."""
    ws = await websockets.connect(url, max_size=None, open_timeout=20)
    await ws.send(json.dumps({"api_key": key}))
    answer = await recv_json(ws, 20)
    if answer["type"] == "auth":
        assert (await recv_json(ws, 20))["type"] == "connected"
        await ws.send(json.dumps({"command": "start", "audio_format": "pcm16", "silence_threshold": 1.0}))
        assert (await recv_json(ws, 20))["state"] == "started"
    return ws, answer


async def close_code(ws, timeout: float = 30.0):
    try:
        while True:
            await asyncio.wait_for(ws.recv(), timeout)
    except ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd else None


def test_a_key_made_on_one_replica_works_everywhere(cluster, speech):
    clip, _ = speech
    made = cluster.new_key(0)
    for url in (cluster.nginx.url, cluster.base(1), cluster.base(0)):
        r = transcribe(url, made["key"], clip)
        assert r.status_code == 200, r.text
        assert wer(clip.text, r.json()["text"]) <= 0.15
    health = httpx.get(cluster.base(1) + "/health").json()
    assert health["state"]["backend"] == "redis" and health["state"]["ok"] is True


def test_max_streams_holds_across_replicas(cluster):
    made = cluster.new_key(0, max_streams=2)

    async def go():
        first, a1 = await open_stream(cluster.ws(0), made["key"])
        second, a2 = await open_stream(cluster.ws(1), made["key"])
        assert a1["type"] == a2["type"] == "auth"
        for url in (cluster.ws(0), cluster.ws(1), cluster.nginx.ws_url + "/ws/transcribe"):
            third, answer = await open_stream(url, made["key"])
            assert answer["type"] == "error" and answer["code"] == "QUOTA_EXCEEDED", answer
            assert await close_code(third) == 4029
        await second.close()
        await asyncio.sleep(0.3)
        again, answer = await open_stream(cluster.ws(0), made["key"])  # a slot is free again
        assert answer["type"] == "auth"
        await again.close()
        await first.close()

    run(go(), 120)


def test_revocation_on_one_replica_ends_a_stream_on_the_other(cluster, speech):
    _, audio = speech
    made = cluster.new_key(0)

    async def go():
        ws, answer = await open_stream(cluster.ws(0), made["key"])
        assert answer["type"] == "auth"
        pcm = float32_to_pcm16(np.concatenate([audio, audio]))
        began = time.monotonic()
        revoked_at = None
        messages = []

        async def reader():
            try:
                while True:
                    messages.append((time.monotonic(), json.loads(await ws.recv())))
            except ConnectionClosed as exc:
                return exc.rcvd.code if exc.rcvd else None

        reading = asyncio.create_task(reader())
        for i, pos in enumerate(range(0, len(pcm), 3200)):
            if reading.done():
                break
            try:
                await ws.send(pcm[pos:pos + 3200])
            except ConnectionClosed:
                break
            if i == 20:  # 2 s into the speech, revoke on the OTHER replica
                async with httpx.AsyncClient() as http:
                    r = await http.delete(f"{cluster.base(1)}/admin/keys/{made['id']}",
                                          headers={"X-Admin-Key": ADMIN})
                assert r.status_code == 200
                revoked_at = time.monotonic()
            await asyncio.sleep(max(0.0, began + (i + 1) * 0.1 - time.monotonic()))
        code = await asyncio.wait_for(reading, 30)
        assert code == 4001
        last_t, last = messages[-1]
        assert last["type"] == "error" and last["code"] == "KEY_REVOKED"
        finals = [m for t, m in messages if t >= revoked_at and m["type"] == "final"]
        assert len(finals) <= 1
        elapsed = last_t - revoked_at
        print(f"revoked on replica 2 -> KEY_REVOKED on replica 1 after {elapsed:.2f} s")
        assert elapsed < 10  # a hang guard; the figure is printed (watcher period 0.5 s + the final)

    run(go(), 120)
    r = transcribe(cluster.nginx.url, made["key"], speech[0])
    assert r.status_code == 403


def test_usage_adds_up_over_replicas(cluster, speech):
    clip, audio = speech
    made = cluster.new_key(1)
    assert transcribe(cluster.base(0), made["key"], clip).status_code == 200
    assert transcribe(cluster.base(1), made["key"], clip).status_code == 200
    streamed = concat_with_pauses([audio], pause_s=1.5, lead_s=0.3)

    async def go():
        ws, _ = await open_stream(cluster.ws(1), made["key"])
        pcm = float32_to_pcm16(streamed)
        for pos in range(0, len(pcm), 16000):
            await ws.send(pcm[pos:pos + 16000])
            await asyncio.sleep(0.05)
        await ws.send(json.dumps({"command": "stop"}))
        while (await recv_json(ws, 60)).get("state") != "stopped":
            pass
        await ws.close()

    run(go(), 120)
    expected = 2 * len(audio) / SAMPLE_RATE + len(streamed) / SAMPLE_RATE
    deadline = time.monotonic() + 10
    while True:
        usage = httpx.get(f"{cluster.base(0)}/admin/keys/{made['id']}/usage", headers={"X-Admin-Key": ADMIN}).json()
        if abs(usage["total"]["audio_seconds"] - expected) < 0.05 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert abs(usage["total"]["audio_seconds"] - expected) < 0.05, (usage, expected)
    assert usage["total"]["requests"] == 3 and usage["total"]["streams"] == 1
    assert usage["days"][0]["audio_seconds"] == usage["total"]["audio_seconds"]


def test_a_redis_outage_is_not_an_outage(cluster, speech):
    clip, _ = speech
    made = cluster.new_key(0)
    assert transcribe(cluster.base(0), made["key"], clip).status_code == 200  # verified: cached
    cluster.redis.stop()
    try:
        r = transcribe(cluster.base(0), made["key"], clip)
        assert r.status_code == 200, r.text  # a key verified in the last minute keeps working
        r = httpx.post(f"{cluster.base(0)}/admin/keys/generate?name=x", headers={"X-Admin-Key": ADMIN})
        assert r.status_code == 503 and "Redis" in r.json()["detail"], r.text
        r = httpx.get(f"{cluster.base(1)}/stats", headers={"X-API-Key": "sk-" + "9" * 48})
        assert r.status_code == 503  # an unknown key cannot be checked now: not a 500, not a 403
        health = httpx.get(cluster.base(0) + "/health").json()
        assert health["state"]["ok"] is False
    finally:
        cluster.redis.start()
    deadline = time.monotonic() + 15
    while True:
        usage = httpx.get(f"{cluster.base(0)}/admin/keys/{made['id']}/usage", headers={"X-Admin-Key": ADMIN})
        if usage.status_code == 200 and usage.json()["total"]["requests"] == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert usage.status_code == 200 and usage.json()["total"]["requests"] == 2, usage.text  # caught up
    assert httpx.get(cluster.base(0) + "/health").json()["state"]["ok"] is True
    log = cluster.replicas[0].log() + cluster.replicas[1].log()
    assert "Traceback" not in log


def test_kill_9_of_a_replica_costs_one_reconnect_through_nginx(cluster, speech):
    clip, audio = speech
    made = cluster.new_key(0)
    pcm = float32_to_pcm16(concat_with_pauses([audio, audio], pause_s=1.5, lead_s=0.3, tail_s=1.5))
    half = len(pcm) // 2

    async def stream_part(data: bytes, kill_after_first_final: bool = False):
        ws, answer = await open_stream(cluster.nginx.ws_url + "/ws/transcribe", made["key"])
        assert answer["type"] == "auth", answer
        finals = []
        try:
            for pos in range(0, len(data), 3200):
                await ws.send(data[pos:pos + 3200])
                await asyncio.sleep(0.02)
            if kill_after_first_final:
                while not finals:
                    msg = await recv_json(ws, 60)
                    if msg["type"] == "final":
                        finals.append(msg["text"])
                # mid-stream, the replica nginx chose for this client dies with -9
                landed = [i for i in range(2) if cluster.replicas[i].proc.poll() is None and httpx.get(
                    cluster.base(i) + "/stats", headers={"X-API-Key": made["key"]}).json()["connections"]["active"]]
                assert len(landed) == 1, landed
                victim = cluster.replicas[landed[0]]
                os.kill(victim.proc.pid, signal.SIGKILL)
                victim.proc.wait(10)
                assert await close_code(ws) in (None, 1006, 1011, 1012), "the socket should die with the replica"
                return finals
            await ws.send(json.dumps({"command": "stop"}))
            while True:
                msg = await recv_json(ws, 60)
                if msg["type"] == "final":
                    finals.append(msg["text"])
                if msg.get("state") == "stopped":
                    return finals
        finally:
            await ws.close()

    async def go():
        first = await stream_part(pcm[:half], kill_after_first_final=True)
        second = await stream_part(pcm[half:])  # the reconnect lands on the live replica
        return first, second

    first, second = run(go(), 240)
    text = " ".join(first + second)
    assert wer(" ".join([clip.text, clip.text]), text) <= 0.2, text
