"""The connection state all three streaming protocols share (routes/live_socket.py), without a model or a
network: sending to a socket that is gone, the flush's grace, and the end of a connection whose key store
fails."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace

from starlette.websockets import WebSocketState

from whisper_stt.routes.live_socket import CLOSE_GOING_AWAY, LiveSocket
from whisper_stt.routes.stream_socket import StreamSocket
from whisper_stt.routes.ws import Connection


class FakeWebSocket:
    def __init__(self, state=WebSocketState.CONNECTED, fail=None):
        self.application_state = state
        self.fail = fail
        self.sent: list[str] = []
        self.closed: list[tuple[int, str]] = []

    async def send_text(self, text):
        if self.fail is not None:
            raise self.fail
        self.sent.append(text)

    async def close(self, code, reason=""):
        self.closed.append((code, reason))
        self.application_state = WebSocketState.DISCONNECTED


class FakeSession:
    def __init__(self, drain_s: float):
        self.drain_s = drain_s
        self.stopped = False
        self.closed = False
        self.next_utterance_id = 7

    def stop(self):
        self.stopped = True

    async def drain(self):
        await asyncio.sleep(self.drain_s)

    async def close(self):
        self.closed = True


class FakeState:
    def __init__(self, fail: bool):
        self.fail = fail
        self.recorded: list[tuple[str, float]] = []
        self.released: list[str] = []

    def record(self, digest, audio_s=0.0, **_):
        self.recorded.append((digest, audio_s))

    async def close_stream(self, key_info, stream_id):
        if self.fail:
            raise ConnectionError("backend went away")
        self.released.append(stream_id)


def make(ws=None, state=None) -> LiveSocket:
    info = SimpleNamespace(id="ws-1", audio_seconds=12.5)
    ctx = SimpleNamespace(state=state)

    def record_stream_audio(conn):
        seconds = conn.info.audio_seconds - conn.recorded_audio_s
        conn.recorded_audio_s += seconds
        state.record(conn.key_info.digest, audio_s=seconds)

    ctx.record_stream_audio = record_stream_audio
    return LiveSocket(ws or FakeWebSocket(), ctx, info)


def test_every_protocol_shares_the_connection_state():
    assert issubclass(Connection, LiveSocket) and issubclass(StreamSocket, LiveSocket)


def test_sending_to_a_socket_that_is_gone_is_not_an_error():
    gone = make(FakeWebSocket(state=WebSocketState.DISCONNECTED))
    asyncio.run(gone.send_text("x"))
    assert gone.ws.sent == []
    broken = make(FakeWebSocket(fail=OSError("reset")))
    asyncio.run(broken.send_text("x"))  # swallowed: the client vanished mid-send
    ok = make()
    asyncio.run(ok.send_text("hello"))
    assert ok.ws.sent == ["hello"]


def test_shutdown_waits_for_the_final_at_most_its_grace_then_closes_1001():
    conn = make()
    conn.session = FakeSession(drain_s=5.0)

    async def run():
        loop = asyncio.get_running_loop()
        started = loop.time()
        await conn.shutdown(0.2)
        return loop.time() - started

    took = asyncio.run(run())
    assert conn.session.stopped
    assert 0.15 < took < 2.0
    assert conn.ws.closed == [(CLOSE_GOING_AWAY, "server shutting down")]
    asyncio.run(conn.close(1000))  # closing twice sends nothing more
    assert len(conn.ws.closed) == 1


def test_end_session_keeps_the_utterance_numbering():
    conn = make()
    session = conn.session = FakeSession(drain_s=0.0)
    asyncio.run(conn.end_session())
    assert session.closed and conn.session is None and conn.next_utterance_id == 7


def test_release_key_counts_the_audio_and_survives_a_backend_that_went_away(caplog):
    for fail in (False, True):
        state = FakeState(fail)
        conn = make(state=state)
        conn.key_info = SimpleNamespace(digest="d1")
        with caplog.at_level(logging.WARNING, logger="whisper_stt.routes.live_socket"):
            asyncio.run(conn.release_key())
        assert state.recorded == [("d1", 12.5)]
        assert state.released == ([] if fail else ["ws-1"])
        assert ("could not release the stream slot of ws-1" in caplog.text) == fail
    no_key = make(state=FakeState(True))
    asyncio.run(no_key.release_key())  # an unauthenticated socket has nothing to release
    assert no_key.ctx.state.recorded == []
