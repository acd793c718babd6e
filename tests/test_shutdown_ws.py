"""SIGTERM with a live stream: the open utterance is flushed as a final, the socket closes with 1001,
the process exits 0."""

from __future__ import annotations

import asyncio
import json
import signal

import websockets

from whisper_stt.audio import decode_file, float32_to_pcm16

from .conftest import free_port
from .speech import wer


def test_sigterm_flushes_stream_and_closes_1001(server_process, librivox):
    port = free_port()
    server = server_process("--mode", "ws", "--ws-port", str(port), "--host", "127.0.0.1", "--no-auth")
    server.wait_http(f"http://127.0.0.1:{port}/health")
    clip = librivox[0]
    pcm = float32_to_pcm16(decode_file(str(clip.path)))

    async def run() -> tuple[list[dict], int]:
        messages: list[dict] = []
        async with websockets.connect(f"ws://127.0.0.1:{port}/ws/transcribe", open_timeout=10) as ws:
            messages.append(json.loads(await asyncio.wait_for(ws.recv(), 10)))
            await ws.send(json.dumps({"command": "start", "language": "en", "audio_format": "pcm16"}))
            for i in range(0, len(pcm), 6400):  # whole clip, no trailing silence: the utterance stays open
                await ws.send(pcm[i:i + 6400])
            await asyncio.sleep(1.0)
            server.proc.send_signal(signal.SIGTERM)
            try:
                while True:
                    messages.append(json.loads(await asyncio.wait_for(ws.recv(), 30)))
            except websockets.ConnectionClosed as closed:
                return messages, closed.rcvd.code if closed.rcvd else -1

    messages, code = asyncio.run(run())
    assert code == 1001, (code, messages)
    finals = [m for m in messages if m.get("type") == "final"]
    assert finals, messages
    assert wer(clip.text, " ".join(f["text"] for f in finals)) <= 0.2
    assert server.proc.wait(30) == 0
    assert "Traceback" not in server.log()
