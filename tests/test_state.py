"""The state backends' rules, without the model: keys, limits, usage, Redis outages.

The same behavioural checks run against the JSON key file and a real redis-server.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from whisper_stt.keys import KeyStore
from whisper_stt.state import JsonState, Limits, QuotaExceeded, StateUnavailable, validate_limit_changes
from whisper_stt.state.redis_backend import RedisState, bootstrap_sync, redacted
from whisper_stt.state.usage import UsageBuffer

from .redis_support import redis_server  # noqa: F401  (fixture)

ADMIN = "sk-" + "c" * 48


def run(coro):
    return asyncio.run(coro)


@pytest.fixture(params=["json", "redis"])
def backend_factory(request, tmp_path):
    """A factory: each call gives a new backend object on the same shared store (like another replica)."""
    if request.param == "json":
        store = KeyStore.open(tmp_path / "keys.json")
        state = JsonState(store)
        return lambda: state  # one process, one object
    server = request.getfixturevalue("redis_server")
    return lambda: RedisState(server.url, admin_override=ADMIN)


def test_limit_changes_are_validated():
    assert validate_limit_changes({"max_streams": 2, "audio_minutes_per_day": None}) == \
        {"max_streams": 2, "audio_minutes_per_day": None}
    for bad in ({}, [], {"max_streams": "two"}, {"max_streams": -1}, {"colour": 1}, {"max_streams": True}):
        with pytest.raises(ValueError):
            validate_limit_changes(bad)


def test_usage_buffer_survives_a_failed_write():
    buf = UsageBuffer()
    buf.add("d1", requests=1, audio_s=2.5, day="2026-01-01")
    buf.add("d1", audio_s=0.5, day="2026-01-01")
    taken = buf.take()
    assert taken == {("d1", "2026-01-01"): {"requests": 1, "audio_seconds": 3.0, "streams": 0}}
    assert len(buf) == 0
    buf.add("d1", streams=1, day="2026-01-01")
    buf.restore(taken)  # the write failed: nothing is lost, nothing counted twice
    assert buf.take() == {("d1", "2026-01-01"): {"requests": 1, "audio_seconds": 3.0, "streams": 1}}


def test_redis_url_passwords_are_never_shown():
    assert redacted("redis://:hunter2@cache:6379/0") == "redis://:***@cache:6379/0"
    assert redacted("redis://user:hunter2@cache/1") == "redis://user:***@cache/1"
    assert redacted("redis://cache:6379/0") == "redis://cache:6379/0"


def test_keys_limits_and_usage(backend_factory):
    async def go():
        state = backend_factory()
        await state.bootstrap(ADMIN)
        assert await state.verify_admin(ADMIN) and not await state.verify_admin("sk-wrong")
        key = await state.generate("tenant", Limits(max_streams=1, requests_per_minute=3,
                                                    audio_minutes_per_day=0.5))
        info = await state.verify(key)
        assert info is not None and info.name == "tenant" and info.limits.max_streams == 1
        assert await state.verify("sk-" + "0" * 48) is None

        for _ in range(3):
            await state.check_request(info)
        with pytest.raises(QuotaExceeded) as exc:
            await state.check_request(info)
        assert exc.value.limit == "requests_per_minute" and 1 <= exc.value.retry_after <= 61

        await state.open_stream(info, "s1")
        with pytest.raises(QuotaExceeded) as exc:
            await state.open_stream(info, "s2")
        assert exc.value.limit == "max_streams"
        await state.close_stream(info, "s1")
        await state.open_stream(info, "s2")
        await state.close_stream(info, "s2")

        state.record(info.digest, requests=2, audio_s=20.0, streams=1)
        await state.check_audio(info)  # 20 s of 30 s used
        state.record(info.digest, audio_s=10.0)
        with pytest.raises(QuotaExceeded) as exc:
            await state.check_audio(info)
        assert exc.value.limit == "audio_minutes_per_day"
        await state.flush()
        usage = await state.usage(info.id)
        assert usage["total"] == {"requests": 2, "audio_seconds": 30.0, "streams": 1}
        assert len(usage["days"]) == 1 and usage["days"][0]["audio_seconds"] == 30.0

        listed = {k["id"]: k for k in await state.list_keys()}
        assert listed[info.id]["limits"] == {"max_streams": 1, "requests_per_minute": 3,
                                             "audio_minutes_per_day": 0.5}
        assert listed[info.id]["usage"]["audio_seconds"] == 30.0
        assert key not in json.dumps(listed)

        assert await state.update_limits(info.id, {"audio_minutes_per_day": None, "max_streams": 3}) == \
            {"max_streams": 3, "requests_per_minute": 3, "audio_minutes_per_day": None}
        assert await state.update_limits("0" * 16, {"max_streams": 1}) is None
        other = backend_factory()  # another replica sees the new limits (after its short cache)
        await asyncio.sleep(1.1)
        info2 = await other.verify(key)
        assert info2.limits.max_streams == 3 and info2.limits.audio_minutes_per_day is None

        assert await state.revoke(info.id) == info.digest
        await asyncio.sleep(1.1)  # the verification cache's bound
        assert await other.verify(key) is None
        assert (await other.is_active([info.digest])) == {info.digest: False}
        assert await state.revoke(info.id) is None
        for s in {state, other}:
            await s.close()

    run(go())


def test_streams_are_counted_across_replicas_and_leases_lapse(redis_server, monkeypatch):
    from whisper_stt.state import redis_backend

    monkeypatch.setattr(redis_backend, "STREAM_LEASE_S", 1.0)
    monkeypatch.setattr(redis_backend, "STREAM_RENEW_S", 0.2)

    async def go():
        a, b = RedisState(redis_server.url), RedisState(redis_server.url)
        await a.start()  # a renews its leases; b will die without renewing or closing
        key = await a.generate("two", Limits(max_streams=2))
        info = await a.verify(key)
        await a.open_stream(info, "c1")
        await b.open_stream(info, "c1")  # the same local id on another replica is another stream
        for replica in (a, b):
            with pytest.raises(QuotaExceeded):
                await replica.open_stream(info, "c2")
        await b._redis.aclose()  # kill -9: nothing closed, nothing renewed
        await asyncio.sleep(1.5)
        c = RedisState(redis_server.url)
        await c.open_stream(info, "x")  # b's lapsed slot came back; a's renewed one is still held
        with pytest.raises(QuotaExceeded):
            await c.open_stream(info, "y")
        await c.close_stream(info, "x")
        await a.close()
        await c.close()

    run(go())


def test_redis_outage_keeps_recent_keys_and_buffers_usage(redis_server):
    async def go():
        state = RedisState(redis_server.url, admin_override=ADMIN)
        key = await state.generate("k")
        info = await state.verify(key)
        redis_server.stop()
        assert (await state.verify(key)).digest == info.digest  # verified recently: keeps working
        with pytest.raises(StateUnavailable) as exc:
            await state.verify("sk-" + "1" * 48)  # never seen: cannot be checked now
        assert "Redis at redis://127.0.0.1" in str(exc.value)
        with pytest.raises(StateUnavailable):
            await state.generate("during outage")
        await state.check_request(info)  # limits cannot be counted: served, not refused
        state.record(info.digest, requests=1, audio_s=12.5)
        with pytest.raises(StateUnavailable):
            await state.flush()
        assert state.health()["ok"] is False and state.health()["pending_usage_entries"] == 1
        redis_server.start()
        await state.flush()  # back: the buffered usage is written, nothing lost
        assert state.health()["ok"] is True
        # a fresh Redis lost its data (no persistence in this test), so only the buffered usage is there
        raw = await state._redis.hgetall(f"wstt:usage:{info.digest}")
        assert float(raw["audio_seconds"]) == 12.5 and int(raw["requests"]) == 1
        await state.close()

    run(go())


def test_bootstrap_and_import(redis_server, tmp_path):
    from whisper_stt.state.importer import import_keys

    created, generated = bootstrap_sync(redis_server.url, None, "ci")
    assert set(created) == {"admin", "api"} and generated.startswith("sk-")
    again, _ = bootstrap_sync(redis_server.url, None, None)
    assert again == {}  # the admin key and a default key exist already

    store = KeyStore.open(tmp_path / "api_keys.json")
    store.bootstrap("sk-" + "d" * 48)
    old = store.generate("legacy", {"max_streams": 4})
    copied, skipped, admin = asyncio.run(import_keys(tmp_path / "api_keys.json", redis_server.url))
    assert copied == 2 and skipped == 0 and admin is False  # Redis had an admin key already

    async def check():
        state = RedisState(redis_server.url)
        info = await state.verify(old)
        assert info is not None and info.name == "legacy" and info.limits.max_streams == 4
        assert await state.verify(generated) is not None
        await state.close()

    asyncio.run(check())
    copied, skipped, _ = asyncio.run(import_keys(tmp_path / "api_keys.json", redis_server.url))
    assert copied == 0 and skipped == 2


def test_json_usage_survives_a_clean_stop_and_reaches_the_file_within_seconds(tmp_path):
    from whisper_stt.state import json_backend

    async def go():
        state = JsonState(KeyStore.open(tmp_path / "keys.json"))
        await state.start()
        key = await state.generate("k")
        info = await state.verify(key)
        state.record(info.digest, requests=1, audio_s=4.0)
        await asyncio.sleep(json_backend.FLUSH_S + 1.0)  # the flush loop writes it: a kill -9 now loses nothing
        on_disk = json.loads((tmp_path / "keys.json").read_text())
        entry = next(e for e in on_disk["keys"] if e["name"] == "k")
        assert entry["usage"]["total"]["audio_seconds"] == 4.0
        state.record(info.digest, audio_s=1.5, streams=1)
        await state.close()  # a clean stop writes the rest
        return info.id

    key_id = run(go())
    reopened = JsonState(KeyStore.open(tmp_path / "keys.json"))
    usage = run(reopened.usage(key_id))
    assert usage["total"] == {"requests": 1, "audio_seconds": 5.5, "streams": 1}
