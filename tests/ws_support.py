"""Helpers for the /ws/transcribe tests: a live uvicorn server in a thread and a streaming client.

A real server (not Starlette's TestClient) lets every wait carry a timeout and exercises the real
WebSocket framing, close codes included.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import uvicorn
import websockets

from whisper_stt.audio import SAMPLE_RATE, decode_file, float32_to_pcm16

from .conftest import free_port


class LiveServer:
    """Serve an app with uvicorn in a background thread (same process, so stats stay inspectable)."""

    def __init__(self, app) -> None:
        self.app = app
        self.port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off",
                                ws_max_size=64 * 1024 * 1024)
        self.server = uvicorn.Server(config)
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self.thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)

    async def _serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        await self.server.serve()

    def task_names(self) -> list[str]:
        """Names of the tasks alive on the server's event loop (to find leftovers)."""

        async def names():
            return [t.get_name() for t in asyncio.all_tasks() if t is not asyncio.current_task()]

        return asyncio.run_coroutine_threadsafe(names(), self.loop).result(10)

    def wait_for(self, predicate, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.05)
        return predicate()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/transcribe"

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)


def load(path: Path) -> np.ndarray:
    return decode_file(str(path))


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SAMPLE_RATE), dtype=np.float32)


def concat_with_pauses(parts: list[np.ndarray], pause_s: float, lead_s: float = 0.5, tail_s: float = 0.0) -> np.ndarray:
    pieces = [silence(lead_s)]
    for i, p in enumerate(parts):
        pieces.append(p)
        pieces.append(silence(pause_s if i < len(parts) - 1 else tail_s))
    return np.concatenate(pieces)


def encode(samples: np.ndarray, fmt: str) -> bytes:
    if fmt == "float32":
        return samples.astype("<f4").tobytes()
    return float32_to_pcm16(samples)


@dataclass
class Received:
    messages: list = field(default_factory=list)  # (monotonic time, dict)

    def of(self, kind: str) -> list[dict]:
        return [m for _, m in self.messages if m.get("type") == kind]

    def finals_text(self) -> str:
        return " ".join(m["text"] for m in self.of("final"))


async def recv_json(ws, timeout: float = 30.0) -> dict:
    raw = await asyncio.wait_for(ws.recv(), timeout)
    return json.loads(raw)


async def connect(url: str, api_key: Optional[str] = None):
    """Open, authenticate if a key is given, and consume the connected message."""
    ws = await websockets.connect(url, max_size=None, open_timeout=20)
    if api_key is not None:
        await ws.send(json.dumps({"api_key": api_key}))
        assert (await recv_json(ws, 20))["type"] == "auth"
    msg = await recv_json(ws, 20)
    assert msg["type"] == "connected", msg
    return ws


async def stream(
    url: str,
    audio: np.ndarray,
    *,
    api_key: Optional[str] = None,
    start: Optional[dict] = None,
    fmt: str = "pcm16",
    chunk_s: float = 0.1,
    speed: float = 0.0,  # 1.0 = real time; 0 = as fast as possible (yielding between chunks)
    stop: bool = True,
    timeout: float = 120.0,
    chunk_bytes: Optional[list[int]] = None,  # send the bytes in frames of these sizes (cycled)
) -> Received:
    """Stream audio over one connection and collect every message until the stop status."""
    received = Received()
    ws = await connect(url, api_key)
    try:
        await ws.send(json.dumps(start or {"command": "start", "audio_format": "auto"}))
        status = await recv_json(ws, 20)
        assert status["type"] == "status", status
        done = asyncio.Event()

        async def reader():
            while True:
                msg = await recv_json(ws, timeout)
                received.messages.append((time.monotonic(), msg))
                if msg.get("type") == "status" and msg.get("state") == "stopped":
                    done.set()
                    return

        reader_task = asyncio.create_task(reader())
        data = encode(audio, fmt)
        bytes_per_s = len(data) / max(len(audio) / SAMPLE_RATE, 1e-9)
        began = time.monotonic()
        if chunk_bytes:
            sizes, pos, k = chunk_bytes, 0, 0
            while pos < len(data):
                n = sizes[k % len(sizes)]
                await ws.send(data[pos:pos + n])
                pos += n
                k += 1
                await asyncio.sleep(0)
        else:
            step = max(1, int(bytes_per_s * chunk_s))
            step -= step % (4 if fmt == "float32" else 2)
            for i, pos in enumerate(range(0, len(data), step)):
                await ws.send(data[pos:pos + step])
                if speed > 0:
                    target = began + (i + 1) * chunk_s / speed
                    await asyncio.sleep(max(0.0, target - time.monotonic()))
                else:
                    await asyncio.sleep(0)
        if stop:
            await ws.send(json.dumps({"command": "stop"}))
            await asyncio.wait_for(done.wait(), timeout)
        reader_task.cancel()
        try:
            await reader_task
        except (asyncio.CancelledError, Exception):
            pass
    finally:
        await ws.close()
    return received


def run(coro, timeout: float = 300.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))
