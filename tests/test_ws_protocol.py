"""/ws/transcribe protocol: auth, limits, errors, file-mode errors. Few or no model calls."""

from __future__ import annotations

import asyncio
import json

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from .ws_support import connect, recv_json, run


async def expect_close(ws, timeout: float = 15.0) -> int:
    try:
        while True:
            await asyncio.wait_for(ws.recv(), timeout)
    except ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd else None


def test_auth_success_then_connected(live):
    handle, server = live()

    async def go():
        async with websockets.connect(server.url) as ws:
            await ws.send(json.dumps({"api_key": handle.api_key}))
            auth = await recv_json(ws, 10)
            assert auth == {"type": "auth", "status": "success", "message": auth["message"]}
            connected = await recv_json(ws, 10)
            assert connected["type"] == "connected"
            assert {"message", "model", "device", "server_load"} <= connected.keys()
            assert connected["server_load"] == "1/200"

    run(go(), 60)
    assert server.wait_for(lambda: not handle.app.state.ctx.stats.connections)


@pytest.mark.parametrize(
    "first,code,close_code",
    [
        ({"api_key": "sk-" + "0" * 48}, "AUTH_FAILED", 4001),
        ("not json", "AUTH_ERROR", 4003),
        ({"key": "x"}, "AUTH_ERROR", 4003),
        (b"\x00\x01", "AUTH_ERROR", 4003),
    ],
)
def test_auth_failures_close_with_codes(live, first, code, close_code):
    handle, server = live()

    async def go():
        async with websockets.connect(server.url) as ws:
            await ws.send(first if isinstance(first, (str, bytes)) else json.dumps(first))
            msg = await recv_json(ws, 10)
            assert msg["type"] == "error" and msg["code"] == code and msg["message"]
            assert await expect_close(ws) == close_code

    run(go(), 60)
    assert server.wait_for(lambda: not handle.app.state.ctx.stats.connections)


def test_auth_timeout_closes_4002(live):
    handle, server = live(auth_timeout_s=0.5)

    async def go():
        async with websockets.connect(server.url) as ws:
            msg = await recv_json(ws, 10)
            assert msg["type"] == "error" and msg["code"] == "AUTH_TIMEOUT"
            assert await expect_close(ws) == 4002

    run(go(), 60)


def test_max_connections_1013(live):
    handle, server = live(no_auth=True, max_connections=1)

    async def go():
        first = await connect(server.url)
        async with websockets.connect(server.url) as second:
            msg = await recv_json(second, 10)
            assert msg["type"] == "error" and msg["code"] == "MAX_CONNECTIONS"
            assert await expect_close(second) == 1013
        await first.close()

    run(go(), 60)
    assert server.wait_for(lambda: not handle.app.state.ctx.stats.connections)


def test_malformed_messages_get_errors_and_session_lives(live):
    handle, server = live(no_auth=True)

    async def go():
        ws = await connect(server.url)
        try:
            cases = [
                ("{not json", "BAD_MESSAGE"),
                ("[1, 2]", "BAD_MESSAGE"),
                (json.dumps({"foo": 1}), "BAD_MESSAGE"),
                (json.dumps({"command": "dance"}), "UNKNOWN_COMMAND"),
                (json.dumps({"command": "start", "silence_threshold": "long"}), "BAD_MESSAGE"),
                (json.dumps({"command": "start", "language": "xx"}), "BAD_MESSAGE"),
                (json.dumps({"command": "start", "audio_format": "mp3"}), "BAD_MESSAGE"),
                (b"\x00" * 100, "NOT_STARTED"),
                (json.dumps({"command": "transcribe_file_end"}), "NOT_STARTED"),
            ]
            for payload, code in cases:
                await ws.send(payload)
                msg = await recv_json(ws, 10)
                assert msg["type"] == "error" and msg["code"] == code and msg["message"], (payload, msg)
            await ws.send(json.dumps({"command": "ping"}))
            assert (await recv_json(ws, 10))["type"] == "pong"
            # Still usable: a valid start works, with the threshold clamped into 0.2-10 s.
            await ws.send(json.dumps({"command": "start", "silence_threshold": 50, "language": "", "x": 1}))
            status = await recv_json(ws, 10)
            assert status["type"] == "status" and status["silence_threshold"] == 10.0
            await ws.send(json.dumps({"command": "stop"}))
            assert (await recv_json(ws, 30))["state"] == "stopped"
        finally:
            await ws.close()

    run(go(), 90)


def test_idle_timeout_closes(live):
    handle, server = live(no_auth=True, idle_timeout_s=0.5)

    async def go():
        ws = await connect(server.url)
        msg = await recv_json(ws, 10)
        assert msg["type"] == "error" and msg["code"] == "IDLE_TIMEOUT"
        assert await expect_close(ws) == 1000

    run(go(), 60)
    assert server.wait_for(lambda: not handle.app.state.ctx.stats.connections)


def test_file_mode_errors(live):
    handle, server = live(no_auth=True, max_upload_mb=0.01)  # ~10 KB

    async def go():
        ws = await connect(server.url)
        try:
            # no bytes
            await ws.send(json.dumps({"command": "transcribe_file"}))
            assert (await recv_json(ws))["type"] == "status"
            await ws.send(json.dumps({"command": "transcribe_file_end"}))
            msg = await recv_json(ws)
            assert msg["type"] == "error" and msg["code"] == "EMPTY_FILE"
            # too large, in several frames
            await ws.send(json.dumps({"command": "transcribe_file", "language": "en"}))
            assert (await recv_json(ws))["type"] == "status"
            for _ in range(3):
                await ws.send(b"\x01" * 6000)
            msg = await recv_json(ws)
            assert msg["type"] == "error" and msg["code"] == "FILE_TOO_LARGE"
            await ws.send(json.dumps({"command": "transcribe_file_end"}))
            assert (await recv_json(ws))["code"] == "FILE_TOO_LARGE"
            # not audio
            await ws.send(json.dumps({"command": "transcribe_file"}))
            assert (await recv_json(ws))["type"] == "status"
            await ws.send(b"this is not an audio file at all")
            await ws.send(json.dumps({"command": "transcribe_file_end"}))
            assert (await recv_json(ws))["state"] == "transcribing_file"
            msg = await recv_json(ws, 30)
            assert msg["type"] == "error" and msg["code"] == "DECODE_ERROR"
            # bad language
            await ws.send(json.dumps({"command": "transcribe_file", "language": "zz"}))
            assert (await recv_json(ws))["type"] == "error"
            await ws.send(json.dumps({"command": "ping"}))
            assert (await recv_json(ws))["type"] == "pong"
        finally:
            await ws.close()

    run(go(), 90)


def test_streaming_and_file_upload_take_turns(live, librivox):
    """Binary frames belong to one mode at a time: a start during an upload, or an upload during a
    stream, is refused (BUSY) instead of sending one mode's bytes to the other."""
    handle, server = live(no_auth=True)
    wav = librivox[1].path.read_bytes()

    async def go():
        ws = await connect(server.url)
        try:
            await ws.send(json.dumps({"command": "transcribe_file", "language": "en"}))
            assert (await recv_json(ws))["type"] == "status"
            await ws.send(wav[:20000])
            await ws.send(json.dumps({"command": "start"}))
            msg = await recv_json(ws)
            assert msg["type"] == "error" and msg["code"] == "BUSY" and "transcribe_file_end" in msg["message"]
            await ws.send(wav[20000:])  # still the file's bytes: the upload is whole
            await ws.send(json.dumps({"command": "transcribe_file_end"}))
            assert (await recv_json(ws))["state"] == "transcribing_file"
            result = await recv_json(ws, 60)
            assert result["type"] == "file_result" and "young man" in result["text"], result
            await ws.send(json.dumps({"command": "start", "language": "en"}))
            assert (await recv_json(ws))["type"] == "status"
            await ws.send(json.dumps({"command": "transcribe_file"}))
            msg = await recv_json(ws)
            assert msg["type"] == "error" and msg["code"] == "BUSY" and "stop" in msg["message"]
            await ws.send(json.dumps({"command": "stop"}))
            while (msg := await recv_json(ws, 30))["type"] != "status":
                pass
            await ws.send(json.dumps({"command": "transcribe_file"}))
            assert (await recv_json(ws))["type"] == "status"  # after stop, an upload is welcome
        finally:
            await ws.close()

    run(go(), 120)
