"""Fuzzing a live server: thousands of malformed WebSocket frames and hypothesis-generated REST bodies.

Whatever arrives, the server answers with an ``error`` (or closes with a documented code), never with a
5xx or a close 1011, never logs a traceback, and afterwards still transcribes real speech correctly.
Everything is seeded and bounded in count (``WHISPER_FUZZ_FRAMES``, ``WHISPER_FUZZ_EXAMPLES``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import random
import re
import struct
from dataclasses import dataclass, field
from typing import Optional

import httpx
import numpy as np
import pytest
import websockets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed

from .speech import wer
from .ws_support import LiveServer, concat_with_pauses, load, run, stream

SEED = 20261125
FRAMES = int(os.environ.get("WHISPER_FUZZ_FRAMES", "3000"))
FIRST_MESSAGES = int(os.environ.get("WHISPER_FUZZ_FIRST_MESSAGES", "200"))
REST_EXAMPLES = int(os.environ.get("WHISPER_FUZZ_EXAMPLES", "300"))
FRAMES_PER_CONNECTION = 150
SYNC_EVERY = 20

MESSAGE_TYPES = {"auth", "connected", "status", "error", "partial", "final", "file_result", "pong"}
# 1000 normal / idle, 1007 a text frame that is not UTF-8, 1009 a frame over the size limit,
# 4001-4003 authentication. 1011 (internal error) is never acceptable.
ALLOWED_CLOSE_CODES = {1000, 1007, 1009, 4001, 4002, 4003}

COMMANDS = ["start", "stop", "clear", "ping", "transcribe_file", "transcribe_file_end"]
FIELDS = ["command", "language", "audio_format", "silence_threshold", "api_key"]
ODD_STRINGS = [
    r'"\ud800"', r'"\udfff"', r'"a\ud800b"', r'"\udc00\ud800"', r'"\u0000"', r'"\ud83d\ude00"', '"\u202e"',
    '"en"', '""', '"auto"', '"AUTO"', '" en "', '"pcm16"', '"float32"', '"int16"', '"mp3"', '"xx"',
    '"start"', '"stop"', '"\\n"', '"%s%s%n"', '"${jndi:x}"', '"../../etc/passwd"', '"한국어"',
]
ODD_NUMBERS = ["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1e-400", "0", "-1", "0.0", "2.0", "0.2",
               "10", "1e308", "-0", "3.5", "9" * 5000, "1" * 400]


# --- frame generation ----------------------------------------------------------------------------------
def _nested(rng: random.Random) -> str:
    depth = rng.choice([10, 100, 999, 1000, 1001, 5000, 20000])
    if rng.random() < 0.5:
        return "[" * depth + "]" * depth
    return '{"a":' * depth + "1" + "}" * depth


def json_value(rng: random.Random, depth: int = 0) -> str:
    """JSON text of an odd value: wrong types, escapes Python cannot encode, numbers it cannot hold."""
    kind = rng.randrange(11)
    if kind == 0:
        return rng.choice(ODD_STRINGS)
    if kind == 1:
        return rng.choice(ODD_NUMBERS)
    if kind == 2:
        return rng.choice(["null", "true", "false", "[]", "{}"])
    if kind == 3:
        return json.dumps(random_text(rng, rng.randrange(40)), ensure_ascii=rng.random() < 0.5)
    if kind == 4 and depth < 3:
        return "[" + ",".join(json_value(rng, depth + 1) for _ in range(rng.randrange(4))) + "]"
    if kind == 5 and depth < 3:
        return json_object(rng, depth + 1)
    if kind == 6:
        return _nested(rng)
    if kind == 7:
        return '"' + "x" * rng.choice([100, 10_000, 200_000]) + '"'
    if kind == 8:
        return json.dumps(rng.choice(COMMANDS))
    if kind == 9:
        return str(rng.randint(-(2**70), 2**70))
    return json.dumps(rng.random() * rng.choice([1, 1e6, 1e-6]))


def json_object(rng: random.Random, depth: int = 0) -> str:
    members = []
    if depth == 0 and rng.random() < 0.85:
        command = json.dumps(rng.choice(COMMANDS)) if rng.random() < 0.8 else json_value(rng, 3)
        members.append(f'"command": {command}')
    for _ in range(rng.randrange(4)):
        key = rng.choice(FIELDS) if rng.random() < 0.8 else rng.choice(ODD_STRINGS)[1:-1]
        members.append(f'"{key}": {json_value(rng, depth + 1)}')
    rng.shuffle(members)
    return "{" + ", ".join(members) + "}"


def random_text(rng: random.Random, n: int) -> str:
    # Any code point but the surrogates (a text frame must be UTF-8; lone surrogates come as \u escapes).
    alphabet = rng.choice(["ascii", "bmp", "any"])
    chars = []
    for _ in range(n):
        if alphabet == "ascii":
            cp = rng.randrange(0, 128)
        elif alphabet == "bmp":
            cp = rng.randrange(0, 0xD800)
        else:
            cp = rng.choice([rng.randrange(0, 0xD800), rng.randrange(0xE000, 0x110000)])
        chars.append(chr(cp))
    return "".join(chars)


def audio_like(rng: random.Random) -> bytes:
    kind = rng.randrange(7)
    n = rng.choice([1, 2, 3, 4, 5, 7, 160, 1600, 3200, 8191])
    if kind == 0:  # float32 NaN / inf / huge values
        values = rng.choice([float("nan"), float("inf"), -float("inf"), 3.4e38, -3.4e38, 1e-45])
        return struct.pack(f"<{n}f", *([values] * n))
    if kind == 1:  # full-scale pcm16 square wave
        return (np.tile(np.array([32767, -32768], "<i2"), n)).tobytes()
    if kind == 2:  # the format-sniffing trap: looks like neither format, then silence
        return b"\x01\x00\x00\x00" + bytes(n * 2)
    if kind == 3:
        return bytes(n * 2)
    if kind == 4:  # pcm16 white noise
        return np.frombuffer(rng.randbytes(n * 2), "<i2").tobytes()
    if kind == 5:  # the start of real containers, cut short
        return rng.choice([b"RIFF\x24\x00\x00\x00WAVEfmt ", b"ID3\x03\x00", b"fLaC\x00\x00\x00\x22",
                           b"OggS\x00\x02", b"\x1aE\xdf\xa3"]) + rng.randbytes(rng.randrange(64))
    return rng.randbytes(n)


@dataclass
class Frame:
    data: str | bytes
    kind: str
    invalid_utf8: bool = False  # bytes sent as a text frame


def make_frame(rng: random.Random) -> Frame:
    r = rng.random()
    if r < 0.30:
        return Frame(json_object(rng), "json")
    if r < 0.40:
        text = json_object(rng)
        return Frame(text[:rng.randrange(len(text))], "truncated json")
    if r < 0.47:
        return Frame(random_text(rng, rng.choice([0, 1, 5, 50, 500])), "text")
    if r < 0.52:
        return Frame(rng.choice([json_value(rng), "[" + json_object(rng) + "]", "123", '"start"', "null"]),
                     "not an object")
    if r < 0.55:
        return Frame(_nested(rng), "nested")
    if r < 0.72:
        return Frame(audio_like(rng), "audio-like")
    if r < 0.88:
        return Frame(rng.randbytes(rng.choice([0, 1, 2, 3, 100, 1000, 4096])), "binary")
    if r < 0.92:  # commands that change state, so audio and file frames meet every state
        command = {"command": rng.choice(COMMANDS)}
        if command["command"] == "start":
            command["audio_format"] = rng.choice(["auto", "pcm16", "float32"])
        return Frame(json.dumps(command), "command")
    if r < 0.925:
        big = rng.choice([1, 2, 4]) * 1024 * 1024
        return Frame(rng.randbytes(big) if rng.random() < 0.5 else "x" * big, "huge")
    if r < 0.93:
        data = rng.randbytes(rng.randrange(1, 64)) + b"\xff\xfe\xc0"
        return Frame(data, "invalid utf-8", invalid_utf8=True)
    return Frame(rng.choice([r'{"command":"start","language":"\ud800"}',
                             r'{"command":"transcribe_file","language":"\udfff"}',
                             r'{"command":"start","audio_format":"\ud800"}',
                             r'{"\ud800":"start"}', r'{"command":"\ud800"}',
                             r'{"command":"start","silence_threshold":"\ud800"}']), "surrogate")


# --- the server and its log --------------------------------------------------------------------------
@pytest.fixture
def fuzzed(make_app, caplog):
    """A live server with auth on; every WARNING+ record of the server's loggers is captured."""
    handle = make_app()
    server = LiveServer(handle.app).__enter__()
    # uvicorn's loggers stop at "uvicorn" (uvicorn.error propagates to it), short of the root logger
    # that caplog listens on.
    attached = [logging.getLogger("uvicorn")]
    for logger in attached:
        logger.addHandler(caplog.handler)
    caplog.set_level(logging.WARNING)
    try:
        yield handle, server
    finally:
        for logger in attached:
            logger.removeHandler(caplog.handler)
        server.__exit__(None, None, None)


def assert_clean_log(caplog) -> None:
    bad = [r for r in caplog.records
           if r.exc_info or "Traceback" in r.getMessage() or r.levelno >= logging.ERROR]
    assert not bad, "\n".join(f"{r.name} {r.levelname}: {r.getMessage()}\n{r.exc_text or ''}" for r in bad)


# --- WebSocket ------------------------------------------------------------------------------------------
@dataclass
class Tally:
    frames: int = 0
    first_messages: int = 0
    connections: int = 0
    errors: dict = field(default_factory=dict)  # error code -> count
    closes: dict = field(default_factory=dict)  # close code -> count
    kinds: dict = field(default_factory=dict)  # frame kind -> count


class Conversation:
    """One authenticated connection; a reader checks every message the server sends."""

    def __init__(self, ws, tally: Tally) -> None:
        self.ws = ws
        self.tally = tally
        self.synced = asyncio.Queue()  # sync markers echoed back, None once the connection is closed
        self.syncs = 0
        self.closed: Optional[int] = None
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                assert isinstance(raw, str), f"binary message from the server: {raw[:50]!r}"
                message = json.loads(raw)
                assert isinstance(message, dict) and message.get("type") in MESSAGE_TYPES, message
                if message["type"] == "error":
                    code, text = message.get("code"), message.get("message")
                    assert isinstance(code, str) and isinstance(text, str), message
                    self.tally.errors[code] = self.tally.errors.get(code, 0) + 1
                    marker = re.search(r"'sync-(\d+)'", text)
                    if code == "UNKNOWN_COMMAND" and marker:
                        self.synced.put_nowait(int(marker.group(1)))
        except ConnectionClosed:
            pass
        self.closed = close_code(self.ws)
        self.synced.put_nowait(None)

    async def sync(self) -> bool:
        """Wait until the server has handled every frame sent so far: an unknown command with a unique
        name is answered in order. True when the session still answers; False when the server closed it.
        (A ping would not do: the fuzzed frames contain pings too.)"""
        self.syncs += 1
        try:
            await self.ws.send(json.dumps({"command": f"sync-{self.syncs}"}))
        except ConnectionClosed:
            pass
        while True:
            marker = await asyncio.wait_for(self.synced.get(), 120)
            if marker is None:
                return False
            if marker == self.syncs:
                return True

    async def finish(self) -> None:
        await self.ws.close()
        await asyncio.wait_for(self.reader, 60)
        self.reader.result()  # re-raise an assertion from the reader


async def _open(url: str, api_key: str, tally: Tally) -> Conversation:
    ws = await websockets.connect(url, max_size=None, open_timeout=20, ping_interval=None)
    tally.connections += 1
    await ws.send(json.dumps({"api_key": api_key}))
    for expected in ("auth", "connected"):
        message = json.loads(await asyncio.wait_for(ws.recv(), 20))
        assert message["type"] == expected, message
    return Conversation(ws, tally)


def close_code(ws) -> Optional[int]:
    """The code of the close frame the server sent (None: closed without one)."""
    rcvd = ws.protocol.close_rcvd
    return rcvd.code if rcvd is not None else None


def _count(counter: dict, key) -> None:
    counter[key] = counter.get(key, 0) + 1


async def fuzz_frames(url: str, api_key: str, tally: Tally, rng: random.Random) -> None:
    conversation = await _open(url, api_key, tally)
    sent_here = 0
    while tally.frames < FRAMES:
        frame = make_frame(rng)
        tally.frames += 1
        sent_here += 1
        _count(tally.kinds, frame.kind)
        try:
            if frame.invalid_utf8:
                await conversation.ws.send(frame.data, text=True)
            else:
                await conversation.ws.send(frame.data)
        except ConnectionClosed:
            pass
        alive = True
        if frame.invalid_utf8 or frame.kind == "huge" or sent_here % SYNC_EVERY == 0:
            alive = await conversation.sync()
        if not alive or sent_here >= FRAMES_PER_CONNECTION:
            if alive:
                await conversation.finish()
            else:
                await asyncio.wait_for(conversation.reader, 60)
                conversation.reader.result()
            code = conversation.closed
            _count(tally.closes, code)
            assert code != 1011, f"close 1011 after a {frame.kind} frame: {frame.data[:200]!r}"
            assert code is None or code in ALLOWED_CLOSE_CODES, (code, frame.kind, frame.data[:200])
            if not alive:  # only a frame that breaks the WebSocket protocol itself may end the session
                assert frame.invalid_utf8 or frame.kind == "huge", (code, frame.kind, frame.data[:200])
            conversation = await _open(url, api_key, tally)
            sent_here = 0
    assert await conversation.sync()
    await conversation.finish()
    _count(tally.closes, conversation.closed)


async def fuzz_first_messages(url: str, tally: Tally, rng: random.Random) -> None:
    """Before authentication: one malformed first message per connection, answered by an error + close."""
    for _ in range(FIRST_MESSAGES):
        frame = make_frame(rng)
        if frame.kind == "huge":
            continue
        tally.first_messages += 1
        async with websockets.connect(url, max_size=None, open_timeout=20, ping_interval=None) as ws:
            tally.connections += 1
            try:
                if frame.invalid_utf8:
                    await ws.send(frame.data, text=True)
                else:
                    await ws.send(frame.data)
                async for raw in ws:
                    message = json.loads(raw)
                    assert message["type"] == "error", message
                    assert message["code"] in ("AUTH_ERROR", "AUTH_FAILED"), message
            except ConnectionClosed:
                pass
            code = close_code(ws)
            _count(tally.closes, code)
            expected = code in (4001, 4003) or (frame.invalid_utf8 and code == 1007)
            assert expected, (code, frame.kind, frame.data[:200])


def test_malformed_websocket_frames(fuzzed, caplog, librivox):
    handle, server = fuzzed
    tally = Tally()
    rng = random.Random(SEED)
    run(fuzz_first_messages(server.url, tally, rng), 600)
    run(fuzz_frames(server.url, handle.api_key, tally, rng), 900)
    print(f"\nfuzz: {tally.frames} frames on {tally.connections} connections, {tally.first_messages} "
          f"first messages; kinds {tally.kinds}; errors {tally.errors}; closes {tally.closes}")
    assert tally.frames == FRAMES and tally.errors.get("BAD_MESSAGE", 0) > FRAMES // 20
    assert server.wait_for(lambda: not handle.app.state.ctx.stats.connections, 30)

    # The same server still transcribes real speech as it should.
    clips = [librivox[1], librivox[4]]
    audio = concat_with_pauses([load(c.path) for c in clips], pause_s=2.5, tail_s=0.5)
    received = run(stream(server.url, audio, api_key=handle.api_key), 240)
    reference = " ".join(c.text for c in clips)
    score = wer(reference, received.finals_text())
    print(f"after the fuzz: {len(received.of('final'))} finals, WER {score:.3f}: {received.finals_text()}")
    assert len(received.of("final")) == 2, received.finals_text()
    assert score <= 0.1, received.finals_text()
    assert_clean_log(caplog)


# --- REST ---------------------------------------------------------------------------------------------
def _json_text(seed: int) -> str:
    return json_object(random.Random(seed))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: (st.lists(children, max_size=4)
                      | st.dictionaries(st.text(max_size=8), children, max_size=4)),
    max_leaves=12,
)
base64_bodies = st.one_of(
    st.binary(max_size=3000),
    st.text(max_size=300).map(lambda t: t.encode("utf-8")),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.integers(0, 2**32).map(lambda s: _json_text(s).encode()),
    st.fixed_dictionaries({"audio": json_values}, optional={"language": json_values}).map(
        lambda d: json.dumps(d).encode()),
    st.tuples(st.binary(max_size=3000), st.sampled_from(["", "en", "auto", "xx", None]),
              st.sampled_from(["", "data:audio/wav;base64,", "data:;base64,", " \n"])).map(
        lambda t: json.dumps({"audio": t[2] + base64.b64encode(t[0]).decode(), "language": t[1]}).encode()),
    st.integers(0, 2**32).map(lambda s: json_value(random.Random(s)).encode()),
    st.sampled_from([
        b'{"audio":"AAAA","language":"\\ud800"}', b'{"audio":"\\ud800"}',
        b'{"audio":"AAAA","language":1e999}',
        b'{"audio": ' + b"9" * 5000 + b"}", b'{"audio":"' + b"A" * 100_000 + b'"}', b"\xff\xfe{}",
        ("[" * 1000 + "]" * 1000).encode(), b'{"audio":"=","language":""}', b"",
    ]),
)
content_types = st.sampled_from(["application/json", "application/json; charset=latin-1", "text/plain",
                                 "multipart/form-data", None])
FORM_FIELDS = ["model", "language", "prompt", "response_format", "temperature", "timestamp_granularities[]",
               "timestamp_granularities", "stream", "file"]
form_values = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["json", "text", "srt", "vtt", "verbose_json", "true", "1", "nan", "inf", "-1", "1e999",
                     "word", "segment", "\u202e", "en", "xx", "9" * 5000]),
)


def _multipart(fields: list[tuple[str, str]], file: Optional[tuple[str, bytes]], boundary: str) -> bytes:
    parts = []
    for name, value in fields:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
                     + value.encode("utf-8", "surrogateescape") + b"\r\n")
    if file is not None:
        filename, data = file
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
                     f"Content-Type: application/octet-stream\r\n\r\n".encode("utf-8", "surrogateescape")
                     + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode()


openai_requests = st.one_of(
    st.tuples(
        st.lists(st.tuples(st.sampled_from(FORM_FIELDS) | st.text(max_size=10), form_values), max_size=6),
        st.none() | st.tuples(st.text(max_size=30).filter(lambda n: '"' not in n and "\r" not in n
                                                          and "\n" not in n),
                              st.binary(max_size=3000)),
        st.sampled_from(["b0undary", "x" * 70, "----whisper"]),
    ).map(lambda t: (_multipart(t[0], t[1], t[2]), f"multipart/form-data; boundary={t[2]}")),
    st.tuples(st.binary(max_size=2000),
              st.sampled_from(["multipart/form-data", "multipart/form-data; boundary=",
                               "multipart/form-data; boundary=zz", "application/json",
                               "application/x-www-form-urlencoded"])),
)


def _check_rest(r: httpx.Response, openai: bool) -> None:
    assert r.status_code < 500, (r.status_code, r.text[:500])
    if r.status_code >= 400:
        body = r.json()
        if openai:
            assert isinstance(body["error"]["message"], str), body
        else:
            assert isinstance(body["detail"], str), body


def test_hypothesis_rest_bodies(fuzzed, caplog):
    handle, server = fuzzed
    base = f"http://127.0.0.1:{server.port}"
    sent = {"base64": 0, "openai": 0}
    with httpx.Client(base_url=base, timeout=120) as client:

        @given(body=base64_bodies, content_type=content_types)
        @settings(max_examples=REST_EXAMPLES, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        def base64_route(body, content_type):
            headers = {"X-API-Key": handle.api_key}
            if content_type:
                headers["Content-Type"] = content_type
            sent["base64"] += 1
            _check_rest(client.post("/transcribe/base64", content=body, headers=headers), openai=False)

        @given(request=openai_requests,
               path=st.sampled_from(["/v1/audio/transcriptions", "/v1/audio/translations"]))
        @settings(max_examples=REST_EXAMPLES, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        def openai_routes(request, path):
            body, content_type = request
            headers = {"Authorization": f"Bearer {handle.api_key}", "Content-Type": content_type}
            sent["openai"] += 1
            _check_rest(client.post(path, content=body, headers=headers), openai=True)

        base64_route()
        openai_routes()
    print(f"\nREST fuzz: {sent['base64']} bodies to /transcribe/base64, {sent['openai']} to /v1/audio/*")
    assert_clean_log(caplog)
