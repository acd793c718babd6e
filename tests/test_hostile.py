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

from .ws_support import LiveServer, connect, recv_json, run

NESTED = "[" * 1000 + "]" * 1000
NESTED_OBJECT = '{"command": "start", "language": ' + "[" * 5000 + "]" * 5000 + "}"
SURROGATE_LANGUAGE = '{"audio": "AAAA", "language": "\\ud800"}'  # JSON escape: a lone surrogate


@pytest.fixture
def live(make_app):
    servers = []

    def start(**overrides):
        handle = make_app(**overrides)
        server = LiveServer(handle.app).__enter__()
        servers.append(server)
        return handle, server

    yield start
    for server in servers:
        server.__exit__(None, None, None)


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
