"""Hostile input: each defect found by a hostile tester, with the request that used to break the server.

No 500, no close 1011, no secret in a log line; the session that received the bad input lives on.
"""

from __future__ import annotations

import asyncio
import json

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from whisper_stt.untrusted import InvalidJSON, dumps, echo, parse_json, scrub

from .speech import wer
from .ws_support import connect, recv_json, run

NESTED = "[" * 1000 + "]" * 1000
NESTED_OBJECT = '{"command": "start", "language": ' + "[" * 5000 + "]" * 5000 + "}"
SURROGATE_LANGUAGE = '{"audio": "AAAA", "language": "\\ud800"}'  # JSON escape: a lone surrogate


async def closed_with(ws, timeout: float = 15.0):
    try:
        while True:
            await asyncio.wait_for(ws.recv(), timeout)
    except ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd else None


async def still_alive(ws) -> None:
    await ws.send(json.dumps({"command": "ping"}))
    while True:
        msg = await recv_json(ws, 10)
        if msg["type"] == "pong":
            return


# --- pure helpers ------------------------------------------------------------------------------------
def test_parse_json_turns_every_failure_into_invalid_json():
    for bad in (NESTED, NESTED_OBJECT, "{", b"\xff\xfe", "1" * 5000 + "e", ""):
        with pytest.raises(InvalidJSON):
            parse_json(bad)
    assert parse_json('{"a": [1]}') == {"a": [1]}


def test_echo_is_short_ascii_and_shows_escapes():
    assert echo("\ud800") == "'\\ud800'"
    assert echo("x" * 1000).endswith("...") and len(echo("x" * 1000)) < 50
    assert echo(["nested"]) == "<list>"
    assert echo("한국어").isascii()


def test_dumps_never_fails_on_lone_surrogates():
    text = dumps({"message": "bad \ud800 value", "list": ["\udfff"], "ok": "한국어"})
    text.encode("utf-8")
    assert json.loads(text) == {"message": "bad \ufffd value", "list": ["\ufffd"], "ok": "한국어"}
    assert scrub({"\ud800": 1}) == {"\ufffd": 1}


# --- 1. deeply nested JSON ---------------------------------------------------------------------------
def test_nested_json_body_is_400_not_500(client, app_handle):
    r = client.post("/transcribe/base64", content=NESTED, headers={**app_handle.auth,
                                                                   "Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    assert "nested too deeply" in r.json()["detail"]


def test_nested_json_before_auth_is_an_error_not_1011(live):
    handle, server = live()

    async def go():
        async with websockets.connect(server.url) as ws:
            await ws.send(NESTED)
            msg = await recv_json(ws, 10)
            assert msg["type"] == "error" and msg["code"] == "AUTH_ERROR"
            assert await closed_with(ws) == 4003

    run(go(), 60)


def test_nested_json_command_keeps_the_session(live):
    handle, server = live()

    async def go():
        ws = await connect(server.url, handle.api_key)
        try:
            for bad in (NESTED, NESTED_OBJECT):
                await ws.send(bad)
                msg = await recv_json(ws, 10)
                assert msg["type"] == "error" and msg["code"] == "BAD_MESSAGE", msg
            await still_alive(ws)
        finally:
            await ws.close()

    run(go(), 60)


# --- 2/3. lone surrogates in client text ---------------------------------------------------------------
def test_lone_surrogate_language_is_400_with_escaped_echo(client, app_handle):
    r = client.post("/transcribe/base64", content=SURROGATE_LANGUAGE,
                    headers={**app_handle.auth, "Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    detail = r.json()["detail"]
    assert "Unsupported language '\\ud800'" in detail
    assert detail.isascii()


def _multipart(fields: dict[str, bytes], audio: bytes) -> tuple[bytes, str]:
    boundary = "hostileboundary"
    parts = [b"--%s\r\nContent-Disposition: form-data; name=\"%s\"\r\n\r\n%s\r\n"
             % (boundary.encode(), name.encode(), value) for name, value in fields.items()]
    parts.append(b"--%s\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n"
                 b"Content-Type: audio/wav\r\n\r\n%s\r\n" % (boundary.encode(), audio))
    return b"".join(parts) + b"--%s--\r\n" % boundary.encode(), f"multipart/form-data; boundary={boundary}"


def test_invalid_utf8_in_v1_form_fields(client, app_handle, librivox):
    audio = librivox[0].path.read_bytes()
    for field in ("language", "response_format", "temperature"):
        body, content_type = _multipart({field: b"\xed\xa0\x80\xff"}, audio)
        r = client.post("/v1/audio/transcriptions", content=body,
                        headers={"Authorization": f"Bearer {app_handle.api_key}", "Content-Type": content_type})
        assert r.status_code == 400, (field, r.status_code, r.text)
        assert r.json()["error"]["param"] == field


def test_lone_surrogates_over_websocket_keep_the_session(live):
    handle, server = live()

    async def go():
        async with websockets.connect(server.url) as ws:  # as the auth message: a failed key, not 1011
            await ws.send('{"api_key": "\\ud800"}')
            msg = await recv_json(ws, 10)
            assert msg["code"] in ("AUTH_FAILED", "AUTH_ERROR")
            assert await closed_with(ws) in (4001, 4003)
        ws = await connect(server.url, handle.api_key)
        try:
            for text in ('{"command": "start", "language": "\\ud800"}',
                         '{"command": "start", "audio_format": "\\udfff"}',
                         '{"command": "\\ud800"}',
                         '{"command": "transcribe_file", "language": "\\udbff\\udfff\\ud800"}'):
                await ws.send(text)
                msg = await recv_json(ws, 10)
                assert msg["type"] == "error", msg
                assert msg["message"].isascii()
            await still_alive(ws)
        finally:
            await ws.close()

    run(go(), 60)


# --- 4. decompression bombs ----------------------------------------------------------------------------
def _wav_1hz(n: int = 20000) -> bytes:
    """8-bit WAV at 1 Hz: 20 KB that decode to 5.6 hours at 16 kHz."""
    import struct

    return (b"RIFF" + struct.pack("<I", 36 + n) + b"WAVE" + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, 1, 1, 1, 8)
            + b"data" + struct.pack("<I", n) + bytes([128]) * n)


@pytest.fixture(scope="module")
def silence_10min_flac(tmp_path_factory):
    import shutil
    import subprocess

    if not shutil.which("sox"):
        pytest.skip("sox is not installed (run ./run_tests.sh)")
    path = tmp_path_factory.mktemp("bomb") / "silence.flac"
    subprocess.run(["sox", "-n", "-r", "16000", "-c", "1", "-b", "16", str(path), "trim", "0", "600"], check=True)
    return path


def test_decode_matches_a_whole_file_decode(librivox):
    import numpy as np
    from faster_whisper.audio import decode_audio

    from whisper_stt.audio import decode_file

    for clip in librivox[:2]:
        ours, plain = decode_file(str(clip.path), 3600), decode_audio(str(clip.path))
        assert len(ours) == len(plain) and np.array_equal(ours, plain)


def test_decode_refuses_while_decoding_when_nothing_is_declared(silence_10min_flac, monkeypatch):
    from whisper_stt import audio

    monkeypatch.setattr(audio, "_declared_seconds", lambda container, stream: 0.0)
    with pytest.raises(audio.AudioTooLong) as exc:
        audio.decode_file(str(silence_10min_flac), 30)
    assert "0:30 min" in str(exc.value)
    assert len(audio.decode_file(str(silence_10min_flac), 700)) == 600 * 16000


def test_bombs_are_refused_with_413_on_every_route(make_app, silence_10min_flac):
    handle = make_app(max_audio_duration_s=60)
    flac = silence_10min_flac.read_bytes()
    with handle.client() as client:
        for name, data in (("silence.flac", flac), ("tiny.wav", _wav_1hz())):
            r = client.post("/transcribe", files={"file": (name, data)}, headers=handle.auth)
            assert r.status_code == 413, r.text
            assert "longer than this server accepts" in r.json()["detail"] and "1:00 min" in r.json()["detail"]
            r = client.post("/v1/audio/transcriptions", files={"file": (name, data)},
                            headers={"Authorization": f"Bearer {handle.api_key}"})
            assert r.status_code == 413 and "longer than" in r.json()["error"]["message"], r.text
        import base64

        r = client.post("/transcribe/base64", json={"audio": base64.b64encode(_wav_1hz()).decode()},
                        headers=handle.auth)
        assert r.status_code == 413, r.text


def test_bomb_over_websocket_file_mode(live, silence_10min_flac):
    handle, server = live(max_audio_duration_s=60)

    async def go():
        ws = await connect(server.url, handle.api_key)
        try:
            await ws.send(json.dumps({"command": "transcribe_file"}))
            assert (await recv_json(ws, 10))["state"] == "receiving_file"
            await ws.send(silence_10min_flac.read_bytes())
            await ws.send(json.dumps({"command": "transcribe_file_end"}))
            while True:
                msg = await recv_json(ws, 60)
                if msg["type"] == "error":
                    assert msg["code"] == "AUDIO_TOO_LONG", msg
                    break
                assert msg["type"] == "status", msg
            await still_alive(ws)
        finally:
            await ws.close()

    run(go(), 120)


def test_default_duration_limit_follows_the_device(app_handle):
    ctx = app_handle.app.state.ctx
    assert ctx.engine.device == "cpu" and ctx.max_audio_s == 3600.0


# --- 9. audio_format auto with undecidable input ---------------------------------------------------
def test_undecidable_auto_input_is_bounded_and_nothing_is_lost(monkeypatch):
    from whisper_stt.streaming import formats

    looked_at = []
    real_add = formats._Evidence.add
    monkeypatch.setattr(formats._Evidence, "add", lambda self, words: (looked_at.append(len(words)),
                                                                       real_add(self, words))[1])
    decoder = formats.AudioDecoder("auto")
    out = [decoder.feed(b"\x01\x00\x00\x00")]
    peak = 0
    for _ in range(2000):  # 8 MB of zeros after one odd word: the pattern that used to grow without bound
        out.append(decoder.feed(bytes(4096)))
        peak = max(peak, decoder.pending_bytes)
    out.append(decoder.flush())
    assert decoder.format == "pcm16" and decoder.fell_back
    assert peak <= formats.UNDECIDED_LIMIT + 4096
    assert sum(len(o) for o in out) == (4 + 2000 * 4096) // 2  # every byte became a sample
    assert sum(looked_at) <= formats.UNDECIDED_LIMIT // 4 + 1024  # each word examined once, then decided


def test_undecidable_auto_stream_says_so_and_keeps_working(live):
    handle, server = live(max_audio_buffer_s=10)

    async def go():
        ws = await connect(server.url, handle.api_key)
        try:
            await ws.send(json.dumps({"command": "start", "audio_format": "auto"}))
            assert (await recv_json(ws, 10))["state"] == "started"
            await ws.send(b"\x01\x00\x00\x00")
            for _ in range(40):
                await ws.send(bytes(32000))  # 40 s of pcm16 zeros, faster than real time
            conns = handle.app.state.ctx.websockets
            assert all(c.session.decoder.pending_bytes < 70000 for c in conns if c.session)
            await ws.send(json.dumps({"command": "stop"}))
            states = []
            while "stopped" not in states:
                msg = await recv_json(ws, 60)
                assert msg["type"] != "error" or msg["code"] == "BUFFER_FULL", msg
                if msg["type"] == "status":
                    states.append(msg["state"])
                    if msg["state"] == "format_detected":
                        assert msg["audio_format"] == "pcm16"
            assert "format_detected" in states
        finally:
            await ws.close()

    run(go(), 120)


# --- 8. unauthenticated sockets cannot take the authenticated slots --------------------------------
def test_unauthenticated_sockets_have_their_own_budget(live):
    handle, server = live(max_connections=2, max_unauthenticated_connections=3, auth_timeout_s=30)
    stats = handle.app.state.ctx.stats

    async def go():
        idle = [await websockets.connect(server.url) for _ in range(3)]  # never send a key
        assert server.wait_for(lambda: stats.pending == 3)
        # The pending budget is spent: a real client still gets in, the longest-waiting idle socket goes.
        real = [await connect(server.url, handle.api_key) for _ in range(2)]
        assert stats.active == 2 and stats.load() == "2/2" and stats.pending == 2
        msg = await recv_json(idle[0], 10)
        assert msg["code"] == "AUTH_TIMEOUT", msg
        assert await closed_with(idle[0]) == 4002
        async with websockets.connect(server.url) as third_real:  # the authenticated limit holds
            await third_real.send(json.dumps({"api_key": handle.api_key}))
            assert (await recv_json(third_real, 10))["type"] == "auth"
            msg = await recv_json(third_real, 10)
            assert msg["code"] == "MAX_CONNECTIONS"
            assert await closed_with(third_real) == 1013
        for ws in idle[1:] + real:
            await ws.close()

    run(go(), 60)
    assert server.wait_for(lambda: not stats.connections)


def test_sockets_without_keys_do_not_lock_out_real_clients(live):
    """20 sockets that never authenticate, reopened as they are closed: every real client gets in."""
    handle, server = live(max_connections=5, max_unauthenticated_connections=8, auth_timeout_s=2)

    async def go():
        stop = asyncio.Event()

        async def squatter():
            while not stop.is_set():
                try:
                    async with websockets.connect(server.url) as ws:
                        await ws.wait_closed()
                except (OSError, ConnectionClosed, websockets.InvalidHandshake):
                    pass
                await asyncio.sleep(0.5)  # reopened as soon as it is closed (0.5 s later)

        squatters = [asyncio.create_task(squatter()) for _ in range(20)]
        await asyncio.sleep(2.5)
        refusals = []
        for _ in range(10):
            async with websockets.connect(server.url) as ws:
                await ws.send(json.dumps({"api_key": handle.api_key}))
                answer = await recv_json(ws, 20)
                if answer["type"] != "auth":
                    refusals.append(answer)
        stop.set()
        for task in squatters:
            task.cancel()
        await asyncio.gather(*squatters, return_exceptions=True)
        assert refusals == []

    run(go(), 120)


# --- 5. revoking a key ends its open streams ---------------------------------------------------------
def test_revoking_a_key_ends_its_streams_after_their_final(live, librivox):
    import time

    import httpx

    from whisper_stt.audio import float32_to_pcm16

    from .ws_support import load

    handle, server = live()
    with handle.client() as client:
        doomed = client.post("/admin/keys/generate?name=doomed", headers=handle.admin).json()["api_key"]
    audio = max((load(c.path) for c in librivox), key=len)  # the longest clip: speech for ~50 s

    async def go():
        ws = await connect(server.url, doomed)
        other = await connect(server.url, handle.api_key)  # another key's stream is not touched
        try:
            await ws.send(json.dumps({"command": "start", "audio_format": "pcm16", "silence_threshold": 1.0}))
            assert (await recv_json(ws, 10))["state"] == "started"
            received = []

            async def reader():
                try:
                    while True:
                        message = json.loads(await ws.recv())
                        received.append((time.monotonic(), message))
                except ConnectionClosed as exc:
                    return exc.rcvd.code if exc.rcvd else None

            reading = asyncio.create_task(reader())
            data = float32_to_pcm16(audio)
            step = 3200  # 0.1 s
            revoked_at = None
            began = time.monotonic()
            for i, pos in enumerate(range(0, len(data), step)):
                if reading.done():
                    break
                try:
                    await ws.send(data[pos:pos + step])
                except ConnectionClosed:
                    break
                partials = [m for _, m in received if m["type"] == "partial"]
                if revoked_at is None and len(partials) >= 2 and received[-1][1]["type"] == "partial":
                    # mid-utterance: the speaker is a second or more into a sentence
                    revoked_at = time.monotonic()
                    async with httpx.AsyncClient() as http:
                        r = await http.delete(f"http://127.0.0.1:{server.port}/admin/keys/{doomed}",
                                              headers=handle.admin)
                    assert r.status_code == 200 and r.json()["streams_ended"] == 1, r.text
                await asyncio.sleep(max(0.0, began + (i + 1) * 0.1 - time.monotonic()))
            code = await asyncio.wait_for(reading, 30)
            assert code == 4001
            after = [m for t, m in received if t >= revoked_at]
            kinds = [m["type"] for m in after if m["type"] != "partial"]
            assert kinds[-1] == "error" and after[-1]["code"] == "KEY_REVOKED", after
            assert kinds.count("final") == 1, [(round(t - revoked_at, 2), m["type"], m.get("text")) for t, m in received]
            final = next(m for m in after if m["type"] == "final")
            assert final["reason"] == "stop" and len(final["text"].split()) >= 3, final
            closed_after = received[-1][0] - revoked_at
            print(f"revocation -> final, KEY_REVOKED, close 4001 in {closed_after:.2f} s")
            assert closed_after < 10, closed_after  # a hang guard, not a speed target
            assert all(m["type"] != "partial" for m in after[after.index(next(m for m in after if m["type"] == "final")):])
            await still_alive(other)
        finally:
            await ws.close()
            await other.close()

    run(go(), 120)
    assert server.wait_for(lambda: len(handle.app.state.ctx.stats.connections) == 0)


# --- 7. temp files left by killed key writes -------------------------------------------------------
def test_stale_key_temp_files_are_removed_at_start(tmp_path):
    import os
    import time

    from whisper_stt.keys import KeyStore

    key_file = tmp_path / "api_keys.json"
    store = KeyStore.open(key_file)
    store.bootstrap("sk-" + "b" * 48)
    old = time.time() - 60
    stale = []
    for suffix in ("abcd1234", "x_Y9zz00", "00000000"):
        path = tmp_path / f".api_keys.json.{suffix}"
        path.write_text("{partial")
        os.utime(path, (old, old))
        stale.append(path)
    fresh = tmp_path / ".api_keys.json.fresh123"
    fresh.write_text("{being written")
    unrelated = [tmp_path / ".api_keys.json.bak", tmp_path / "notes.txt", tmp_path / ".other.json.abcd1234"]
    for path in unrelated:
        path.write_text("keep")
        os.utime(path, (old, old))
    reopened = KeyStore.open(key_file)
    assert len(reopened) == 1
    assert not any(p.exists() for p in stale)
    assert fresh.exists() and all(p.exists() for p in unrelated)


# --- 6. no secret in any log line ------------------------------------------------------------------
def test_no_secret_reaches_the_log(server_process, librivox):
    import httpx

    from .conftest import free_port

    port = free_port()
    admin = "operator-chosen-admin-secret"  # no sk- prefix: masked by value, not by shape
    server = server_process("--mode", "ws", "--ws-port", str(port), "--host", "127.0.0.1",
                            "--admin-key", admin, "--log-level", "debug")
    base = f"http://127.0.0.1:{port}"
    server.wait_http(base + "/health")
    made = httpx.post(base + "/admin/keys/generate?name=x", headers={"X-Admin-Key": admin}).json()["api_key"]
    custom_token = "Zq8XcVbN3mLkJhGf5dSa2pOi"  # a token without any known prefix, in a query string

    async def sockets():
        for query in (f"api_key={made}", f"token={custom_token}", f"key={made}&language=en"):
            async with websockets.connect(f"ws://127.0.0.1:{port}/ws/transcribe?{query}") as ws:
                await ws.send(json.dumps({"api_key": made}))
                assert (await recv_json(ws, 10))["type"] == "auth"

    run(sockets(), 60)
    with librivox[0].path.open("rb") as fh:
        r = httpx.post(f"{base}/transcribe?api_key={made}", headers={"X-API-Key": made},
                       files={"file": ("a.wav", fh, "audio/wav")}, timeout=120)
    assert r.status_code == 200
    httpx.get(f"{base}/stats", headers={"Authorization": f"Bearer {made}"})
    httpx.delete(f"{base}/admin/keys/{admin}", headers={"X-Admin-Key": admin})  # a key pasted in the wrong place
    httpx.delete(f"{base}/admin/keys/{made}", headers={"X-Admin-Key": admin})
    assert server.stop() == 0
    log = server.log()
    assert "WebSocket /ws/transcribe?api_key=***" in log  # uvicorn's own line is there, masked
    assert "/admin/keys/***" in log
    for secret in (admin, made, custom_token, made[3:]):
        assert secret not in log, f"{secret[:6]}... appears in the log"


# --- a second hostile tester (2026-12-04) ------------------------------------------------------------------
def _raw_wav_header(rate: int, code: int = 1, bits: int = 16) -> bytes:
    """A 44-byte RIFF/WAVE header of a mono stream with an open-ended data chunk."""
    import struct

    block = bits // 8
    return (b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVE" + b"fmt " + struct.pack("<I", 16)
            + struct.pack("<HHIIHH", code, 1, rate, (rate * block) & 0xFFFFFFFF, block, bits)
            + b"data" + struct.pack("<I", 0xFFFFFFFF))


def test_realtime_format_of_the_wrong_type_is_an_error_event_not_1011(live):
    handle, server = live()
    url = f"ws://127.0.0.1:{server.port}/v1/realtime?intent=transcription"
    auth = {"Authorization": f"Bearer {handle.api_key}"}
    updates = [
        {"type": "session.update", "session": {"type": "transcription", "audio": {"input": {"format": {"type": []}}}}},
        {"type": "session.update", "session": {"type": "transcription", "audio": {"input": {"format": {"type": {}}}}}},
        {"type": "transcription_session.update", "session": {"input_audio_format": ["pcm16"]}},
        {"type": "transcription_session.update", "session": {"input_audio_format": {"a": 1}}},
    ]

    async def main():
        async with websockets.connect(url, additional_headers=auth) as ws:
            assert json.loads(await ws.recv())["type"] == "session.created"
            for update in updates:
                await ws.send(json.dumps(update))
                msg = json.loads(await asyncio.wait_for(ws.recv(), 10))
                assert msg["type"] == "error" and "format" in msg["error"]["param"], msg
            # the session lives on and still takes a valid update
            await ws.send(json.dumps({"type": "transcription_session.update",
                                      "session": {"input_audio_format": "pcm16"}}))
            msg = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert msg["type"] == "transcription_session.updated", msg

    run(main(), 60)


def test_deepgram_wav_header_rate_out_of_range_is_refused_before_any_resampling(live):
    handle, server = live()
    url = f"ws://127.0.0.1:{server.port}/v1/listen"
    auth = {"Authorization": f"Token {handle.api_key}"}

    async def main():
        # 1 Hz would be upsampled 16000x: one 64 KiB frame took the server to 5 GB and froze it for 10 s
        for rate, code in ((0, 1), (1, 1), (0, 7), (4_000_000_000, 1), (7999, 1), (48001, 1)):
            async with websockets.connect(url, additional_headers=auth) as ws:
                await ws.send(_raw_wav_header(rate, code, 16 if code == 1 else 8) + b"\x01\x00" * 32768)
                msg = json.loads(await asyncio.wait_for(ws.recv(), 10))
                assert msg["type"] == "Error" and "sample rate" in msg["description"], (rate, msg)
                await ws.send(json.dumps({"type": "KeepAlive"}))
                await ws.send(json.dumps({"type": "CloseStream"}))
                assert await closed_with(ws) in (1000, None)

    run(main(), 120)
    stats = handle.app.state.ctx.stats
    assert stats.total_errors == 0
    assert server.wait_for(lambda: not handle.app.state.ctx.websockets)


def test_resampler_refuses_rates_no_protocol_accepts():
    from whisper_stt.streaming.codecs import PCMStream

    for rate in (0, 1, 7999, 48001, 10**9):
        with pytest.raises(ValueError, match="sample rate"):
            PCMStream("pcm16", rate)
    assert len(PCMStream("pcm16", 8000).feed(b"\x00\x00" * 8000)) > 10000  # 1 s at 8 kHz, upsampled


def test_client_that_hangs_up_mid_body_is_not_a_500(live, caplog):
    import logging
    import socket

    handle, server = live()
    caplog.set_level(logging.INFO)
    for path in ("/transcribe/base64", f"/admin/keys/{handle.api_key}"):
        method = "PATCH" if path.startswith("/admin") else "POST"
        with socket.create_connection(("127.0.0.1", server.port)) as s:
            s.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      f"X-API-Key: {handle.api_key}\r\nX-Admin-Key: {handle.admin_key}\r\n"
                      "Content-Length: 1000\r\n\r\n{\"audio\":\"".encode())
    assert server.wait_for(lambda: sum("disconnected before its body" in r.getMessage() for r in caplog.records) == 2)
    assert handle.app.state.ctx.stats.total_errors == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]


def test_admin_limits_must_be_finite_and_bounded(client, app_handle):
    admin = app_handle.admin
    for query in ("audio_minutes_per_day=inf", "audio_minutes_per_day=1e400", "max_streams=99999999999999999999999",
                  "requests_per_minute=2000000000"):
        r = client.post(f"/admin/keys/generate?{query}", headers=admin)
        assert r.status_code == 422, (query, r.status_code, r.text)
    key_id = client.post("/admin/keys/generate?max_streams=2", headers=admin).json()["api_key"]
    for body in (b'{"audio_minutes_per_day": Infinity}', b'{"max_streams": 1e400}', b'{"max_streams": -1}',
                 b'{"requests_per_minute": 1' + b"0" * 30 + b"}", b'{"max_streams": NaN}'):
        r = client.patch(f"/admin/keys/{key_id}", content=body, headers=admin)
        assert r.status_code == 400 and "from 0 to" in r.json()["detail"], (body[:40], r.status_code, r.text)
    r = client.patch(f"/admin/keys/{key_id}", content=b'{"audio_minutes_per_day": 90.5}', headers=admin)
    assert r.status_code == 200 and r.json()["limits"]["audio_minutes_per_day"] == 90.5
    listing = client.get("/admin/keys", headers=admin)
    assert listing.status_code == 200
    assert app_handle.app.state.ctx.stats.total_errors == 9  # the refusals above, and nothing else


def test_a_stored_infinite_limit_reads_as_unlimited():
    from whisper_stt.state import Limits

    limits = Limits.from_mapping({"audio_minutes_per_day": float("inf"), "max_streams": 3,
                                  "requests_per_minute": "1e400"})
    assert limits.public() == {"max_streams": 3, "requests_per_minute": None, "audio_minutes_per_day": None}


def test_a_language_the_model_has_no_token_for_is_refused(client, app_handle, engine, librivox):
    # faster-whisper lists yue for every multilingual model; the base model has no <|yue|> token, and
    # decoding with it looped for ~40x the CPU of a real language.
    assert "yue" not in engine.supported_languages and {"en", "zh", "ko"} <= engine.supported_languages
    audio = librivox[1].path.read_bytes()
    r = client.post("/transcribe", files={"file": ("a.wav", audio, "audio/wav")}, data={"language": "yue"},
                    headers=app_handle.auth)
    assert r.status_code == 400 and "Unsupported language 'yue'" in r.json()["detail"], r.text
    r = client.post("/v1/audio/transcriptions", files={"file": ("a.wav", audio, "audio/wav")},
                    data={"model": "whisper-1", "language": "yue"}, headers=app_handle.auth)
    assert r.status_code == 400, r.text


def test_model_languages_keeps_only_codes_with_a_token():
    from whisper_stt.engine.core import model_languages

    class Tokenizer:
        def token_to_id(self, token):
            return {"<|en|>": 1, "<|zh|>": 2}.get(token)

    class Model:
        supported_languages = ["en", "zh", "yue"]
        hf_tokenizer = Tokenizer()

    assert model_languages(Model()) == {"en", "zh"}


def test_special_tokens_in_a_prompt_are_plain_text(client, app_handle, librivox):
    from whisper_stt.untrusted import plain_prompt

    assert plain_prompt("<|endoftext|>Dashwood, <|en|>Norland<|notimestamps|>") == "Dashwood,  Norland"
    assert plain_prompt("a <b> | c") == "a <b> | c"
    clip = librivox[1]
    for prompt in ("<|endoftext|><|startoftranscript|><|en|><|notimestamps|>" * 50,
                   "Dashwood <|endoftext|>" * 30):
        r = client.post("/v1/audio/transcriptions", headers=app_handle.auth,
                        files={"file": ("a.wav", clip.path.read_bytes(), "audio/wav")},
                        data={"model": "whisper-1", "language": "en", "prompt": prompt})
        assert r.status_code == 200, r.text
        # such a prompt used to end the transcript before it began (an empty text)
        assert wer(clip.text, r.json()["text"]) < 0.3, r.json()


def test_a_nine_channel_recording_is_mixed_down_not_refused(client, app_handle, librivox, tmp_path):
    # FFmpeg has no channel layout for 9 channels, so its downmix refused the file (a decode 400)
    import wave

    import numpy as np

    from whisper_stt.audio import decode_file, float32_to_pcm16

    clip = librivox[1]
    mono = decode_file(str(clip.path))
    pcm = np.frombuffer(float32_to_pcm16(mono), dtype="<i2")
    channels = np.zeros((len(pcm), 9), dtype="<i2")
    channels[:, 0] = pcm  # the voice on one channel, the other eight silent (a multitrack recorder's file)
    channels[:, 4] = pcm
    path = tmp_path / "nine.wav"
    with wave.open(str(path), "wb") as out:
        out.setnchannels(9)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(channels.tobytes())
    mixed = decode_file(str(path))
    assert len(mixed) == len(mono)
    assert np.abs(mixed * 9 / 2 - mono).max() < 0.01  # the channels' mean
    r = client.post("/transcribe", headers=app_handle.auth, files={"file": ("nine.wav", path.read_bytes(), "audio/wav")})
    assert r.status_code == 200, r.text
    assert wer(clip.text, r.json()["text"]) < 0.3, r.json()
