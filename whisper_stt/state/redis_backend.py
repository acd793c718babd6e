"""Redis: keys, limits, usage and open-stream leases shared by every replica.

Layout (all under ``wstt:``; the database number in the URL keeps deployments apart):

``wstt:admin``                 the admin key's SHA-256 (when no --admin-key is given)
``wstt:keys``                  hash: key SHA-256 -> JSON record (id, preview, name, created_at, limits)
``wstt:ids``                   hash: public 16-hex id -> key SHA-256
``wstt:usage:<sha>``           hash: total counters (requests, audio_seconds, streams)
``wstt:usage:<sha>:<day>``     hash: the same per UTC day (kept 400 days)
``wstt:streams:<sha>``         sorted set: open stream id -> lease expiry (unix time)
``wstt:rpm:<sha>:<minute>``    counter of requests in that minute (expires after 2 minutes)

Verification asks Redis at most once per ``VERIFY_CACHE_S`` per key and replica, so a revocation anywhere
is seen everywhere within that time. If Redis is unreachable, keys verified in the last
``OUTAGE_GRACE_S`` keep working, limits are not enforced (they cannot be counted), admin writes get a 503
naming the backend, and usage waits in memory until Redis is back.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from typing import Optional
from urllib.parse import urlsplit, urlunsplit

from ..keys import hash_key, new_key, preview_of
from .base import (
    OUTAGE_GRACE_S,
    STREAM_LEASE_S,
    STREAM_RENEW_S,
    VERIFY_CACHE_S,
    KeyInfo,
    Limits,
    QuotaExceeded,
    StateUnavailable,
    today,
)
from .json_backend import usage_report
from .usage import UsageBuffer, empty

log = logging.getLogger(__name__)

P = "wstt:"
USAGE_DAYS_KEPT = 400
FLUSH_S = 1.0

# Take a stream slot atomically: drop lapsed leases, refuse when full, else add ours.
_OPEN_STREAM = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local limit = tonumber(ARGV[3])
if limit >= 0 and redis.call('ZCARD', KEYS[1]) >= limit then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""


def redacted(url: str) -> str:
    """The URL without a password, for messages and /health."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username + ':***@' if parts.username else ':***@'}{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class RedisState:
    name = "redis"

    def __init__(self, url: str, admin_override: Optional[str] = None) -> None:
        import redis.asyncio as aioredis

        self.url = url
        self.where = redacted(url)
        self.replica = uuid.uuid4().hex[:8]
        self._redis = aioredis.from_url(url, decode_responses=True, socket_connect_timeout=2.0,
                                        socket_timeout=2.0, health_check_interval=10)
        self._admin_override = admin_override
        self._admin_hash: Optional[str] = None
        self._cache: dict[str, tuple[float, Optional[KeyInfo]]] = {}  # sha -> (checked at, info or None)
        self._streams: dict[str, tuple[KeyInfo, str]] = {}  # stream id -> (key, member) held here
        self.buffer = UsageBuffer()
        self._tasks: list[asyncio.Task] = []
        self._open_script = self._redis.register_script(_OPEN_STREAM)
        self.ok = True
        self.last_error: Optional[str] = None
        self._last_ok = time.monotonic()

    # --- life cycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        if not self._tasks:
            self._tasks = [asyncio.create_task(self._flush_loop(), name="usage-flush"),
                           asyncio.create_task(self._lease_loop(), name="stream-leases")]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        self._tasks = []
        try:
            for stream_id in list(self._streams):
                info, _ = self._streams[stream_id]
                await self.close_stream(info, stream_id)
            await self.flush()
        except StateUnavailable:
            log.warning("Redis unavailable at shutdown: %d usage entries not written", len(self.buffer))
        await self._redis.aclose()

    def health(self) -> dict:
        return {"backend": "redis", "url": self.where, "ok": self.ok, "error": self.last_error,
                "pending_usage_entries": len(self.buffer), "replica": self.replica}

    async def _call(self, coro):
        """Run one Redis command; connection trouble becomes StateUnavailable (and /health says so)."""
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        try:
            result = await coro
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            if self.ok:
                log.warning("State backend Redis at %s unreachable: %s", self.where, type(exc).__name__)
            self.ok, self.last_error = False, f"{type(exc).__name__}: unreachable"
            raise StateUnavailable(f"The state backend (Redis at {self.where}) is unavailable; try again "
                                   "shortly.") from None
        if not self.ok:
            log.info("State backend Redis at %s is back", self.where)
        self.ok, self.last_error, self._last_ok = True, None, time.monotonic()
        return result

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_S)
            try:
                await self.flush()
            except StateUnavailable:
                pass  # kept in the buffer; the next round tries again
            except Exception:
                log.exception("Writing usage to Redis failed")

    async def _lease_loop(self) -> None:
        while True:
            await asyncio.sleep(STREAM_RENEW_S)
            if not self._streams:
                continue
            try:
                expiry = time.time() + STREAM_LEASE_S
                pipe = self._redis.pipeline(transaction=False)
                for info, member in self._streams.values():
                    pipe.zadd(P + f"streams:{info.digest}", {member: expiry})
                await self._call(pipe.execute())
            except StateUnavailable:
                pass
            except Exception:
                log.exception("Renewing stream leases failed")

    async def flush(self) -> None:
        pending = self.buffer.take()
        if not pending:
            return
        pipe = self._redis.pipeline(transaction=False)
        for (digest, day), delta in pending.items():
            for target in (P + f"usage:{digest}", P + f"usage:{digest}:{day}"):
                if delta["requests"]:
                    pipe.hincrby(target, "requests", delta["requests"])
                if delta["streams"]:
                    pipe.hincrby(target, "streams", delta["streams"])
                if delta["audio_seconds"]:
                    pipe.hincrbyfloat(target, "audio_seconds", round(delta["audio_seconds"], 3))
            pipe.expire(P + f"usage:{digest}:{day}", USAGE_DAYS_KEPT * 86400)
        try:
            await self._call(pipe.execute())
        except BaseException:
            self.buffer.restore(pending)
            raise

    # --- keys ---------------------------------------------------------------------------------------
    async def bootstrap(self, admin_key: Optional[str]) -> dict[str, str]:
        created: dict[str, str] = {}
        if admin_key:
            self._admin_override = admin_key
        else:
            candidate = new_key()
            if await self._call(self._redis.set(P + "admin", hash_key(candidate), nx=True)):
                created["admin"] = candidate
            self._admin_hash = await self._call(self._redis.get(P + "admin"))
        if not await self._call(self._redis.hlen(P + "keys")):
            created["api"] = await self.generate("default")
        return created

    async def verify(self, key: Optional[str]) -> Optional[KeyInfo]:
        if not key:
            return None
        digest = hash_key(key)
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached and now - cached[0] < VERIFY_CACHE_S:
            info = cached[1]
        else:
            try:
                raw = await self._call(self._redis.hget(P + "keys", digest))
            except StateUnavailable:
                if cached and cached[1] is not None and now - cached[0] < OUTAGE_GRACE_S:
                    return cached[1]  # verified within the last minute: keep serving it
                raise
            info = _info(digest, raw)
            self._cache[digest] = (now, info)
            if len(self._cache) > 10000:
                self._cache = {d: v for d, v in self._cache.items() if now - v[0] < OUTAGE_GRACE_S}
        return info

    async def verify_admin(self, key: Optional[str]) -> bool:
        if not key:
            return False
        if self._admin_override is not None:
            return hmac.compare_digest(key.encode("utf-8", "surrogatepass"), self._admin_override.encode())
        if self._admin_hash is None:
            self._admin_hash = await self._call(self._redis.get(P + "admin"))
        return self._admin_hash is not None and hmac.compare_digest(hash_key(key), self._admin_hash)

    async def generate(self, name: str = "", limits: Optional[Limits] = None) -> str:
        key, digest, record = new_record(name, limits)
        pipe = self._redis.pipeline(transaction=True)
        pipe.hset(P + "keys", digest, json.dumps(record))
        pipe.hset(P + "ids", record["id"], digest)
        await self._call(pipe.execute())
        return key

    async def import_record(self, digest: str, record: dict, usage_total: Optional[dict] = None) -> bool:
        """Copy one hashed key (from the JSON store) unless it is there already."""
        record = {**record, "id": digest[:16]}
        if not await self._call(self._redis.hsetnx(P + "keys", digest, json.dumps(record))):
            return False
        await self._call(self._redis.hset(P + "ids", record["id"], digest))
        if usage_total:
            await self._call(self._redis.hset(P + f"usage:{digest}", mapping={
                k: usage_total.get(k, 0) for k in ("requests", "audio_seconds", "streams")}))
        return True

    async def import_admin_hash(self, admin_hash: str) -> bool:
        return bool(await self._call(self._redis.set(P + "admin", admin_hash, nx=True)))

    async def _find(self, key_or_id: str) -> Optional[str]:
        digest = hash_key(key_or_id)
        if await self._call(self._redis.hexists(P + "keys", digest)):
            return digest
        return await self._call(self._redis.hget(P + "ids", key_or_id))

    async def list_keys(self) -> list[dict]:
        raw = await self._call(self._redis.hgetall(P + "keys"))
        pipe = self._redis.pipeline(transaction=False)
        digests = list(raw)
        for digest in digests:
            pipe.hgetall(P + f"usage:{digest}")
        usages = await self._call(pipe.execute())
        out = []
        for digest, usage in zip(digests, usages):
            record = json.loads(raw[digest])
            record["limits"] = Limits.from_mapping(record.get("limits")).public()
            record["usage"] = _counters(usage)
            out.append(record)
        return out

    async def revoke(self, key_or_id: str) -> Optional[str]:
        digest = await self._find(key_or_id)
        if digest is None:
            return None
        raw = await self._call(self._redis.hget(P + "keys", digest))
        pipe = self._redis.pipeline(transaction=True)
        pipe.hdel(P + "keys", digest)
        if raw:
            pipe.hdel(P + "ids", json.loads(raw)["id"])
        pipe.delete(P + f"streams:{digest}")
        await self._call(pipe.execute())
        self._cache.pop(digest, None)
        return digest

    async def update_limits(self, key_id: str, changes: dict) -> Optional[dict]:
        digest = await self._find(key_id)
        if digest is None:
            return None
        raw = await self._call(self._redis.hget(P + "keys", digest))
        if raw is None:
            return None
        record = json.loads(raw)
        merged = {**(record.get("limits") or {}), **changes}
        record["limits"] = {k: v for k, v in merged.items() if v is not None}
        await self._call(self._redis.hset(P + "keys", digest, json.dumps(record)))
        self._cache.pop(digest, None)
        return Limits.from_mapping(record["limits"]).public()

    async def is_active(self, digests: list[str]) -> dict[str, bool]:
        if not digests:
            return {}
        pipe = self._redis.pipeline(transaction=False)
        for digest in digests:
            pipe.hexists(P + "keys", digest)
        found = await self._call(pipe.execute())
        return dict(zip(digests, (bool(f) for f in found)))

    # --- limits -------------------------------------------------------------------------------------
    async def check_request(self, info: KeyInfo) -> None:
        limit = info.limits.requests_per_minute
        if limit is not None:
            key = P + f"rpm:{info.digest}:{int(time.time() // 60)}"
            try:
                pipe = self._redis.pipeline(transaction=True)
                pipe.incr(key)
                pipe.expire(key, 120)
                count, _ = await self._call(pipe.execute())
            except StateUnavailable:
                return  # cannot count across replicas now: serve rather than refuse
            if count > limit:
                raise QuotaExceeded.requests_per_minute(limit)
        await self.check_audio(info)

    async def check_audio(self, info: KeyInfo) -> None:
        limit = info.limits.audio_minutes_per_day
        if limit is None:
            return
        day = today()
        try:
            used = await self._call(self._redis.hget(P + f"usage:{info.digest}:{day}", "audio_seconds"))
        except StateUnavailable:
            return
        total = float(used or 0.0) + self.buffer.pending_audio(info.digest, day)
        if total >= limit * 60:
            raise QuotaExceeded.audio_minutes_per_day(limit)

    async def open_stream(self, info: KeyInfo, stream_id: str) -> None:
        member = f"{self.replica}:{stream_id}"
        limit = info.limits.max_streams
        now = time.time()
        try:
            granted = await self._call(self._open_script(
                keys=[P + f"streams:{info.digest}"],
                args=[now, now + STREAM_LEASE_S, -1 if limit is None else limit, member, int(STREAM_LEASE_S * 4)]))
        except StateUnavailable:
            granted = 1  # cannot count across replicas now: serve rather than refuse
        if not granted:
            raise QuotaExceeded.max_streams(limit)
        self._streams[stream_id] = (info, member)

    async def close_stream(self, info: KeyInfo, stream_id: str) -> None:
        held = self._streams.pop(stream_id, None)
        if held is None:
            return
        try:
            await self._call(self._redis.zrem(P + f"streams:{info.digest}", held[1]))
        except StateUnavailable:
            pass  # the lease lapses by itself

    def record(self, digest: str, *, requests: int = 0, audio_s: float = 0.0, streams: int = 0) -> None:
        self.buffer.add(digest, requests=requests, audio_s=audio_s, streams=streams)

    async def usage(self, key_id: str) -> Optional[dict]:
        digest = await self._find(key_id)
        if digest is None:
            return None
        try:
            await self.flush()
        except StateUnavailable:
            raise
        raw = await self._call(self._redis.hget(P + "keys", digest))
        if raw is None:
            return None
        record = json.loads(raw)
        total = _counters(await self._call(self._redis.hgetall(P + f"usage:{digest}")))
        days = {}
        async for name in self._redis.scan_iter(match=P + f"usage:{digest}:*", count=500):
            days[name.rsplit(":", 1)[1]] = _counters(await self._call(self._redis.hgetall(name)))
        now = time.time()
        open_streams = await self._call(self._redis.zcount(P + f"streams:{digest}", now, "+inf"))
        return usage_report(record["id"], record.get("name", ""), {"total": total, "days": days}, open_streams)


def new_record(name: str, limits: Optional[Limits] = None) -> tuple[str, str, dict]:
    """A new key, its hash and the record stored for it."""
    key = new_key()
    digest = hash_key(key)
    record = {"id": digest[:16], "preview": preview_of(key), "name": name, "created_at": _now(),
              "limits": {k: v for k, v in (limits or Limits()).public().items() if v is not None}}
    return key, digest, record


def bootstrap_sync(url: str, admin_key: Optional[str], generate_key: Optional[str]) -> tuple[dict, Optional[str]]:
    """At start-up, before the event loop: make sure an admin key (unless given) and one API key exist in
    Redis, and make the --generate-key one. Returns (new secrets, generated key); StateUnavailable when
    Redis cannot be reached."""
    import redis
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    client = redis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=5, socket_timeout=5)
    created: dict[str, str] = {}

    def add(name: str) -> str:
        key, digest, record = new_record(name)
        pipe = client.pipeline(transaction=True)
        pipe.hset(P + "keys", digest, json.dumps(record))
        pipe.hset(P + "ids", record["id"], digest)
        pipe.execute()
        return key

    try:
        if not admin_key:
            candidate = new_key()
            if client.set(P + "admin", hash_key(candidate), nx=True):
                created["admin"] = candidate
        if not client.hlen(P + "keys"):
            created["api"] = add("default")
        generated = add(generate_key) if generate_key is not None else None
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        raise StateUnavailable(f"Cannot reach the state backend Redis at {redacted(url)} "
                               f"({type(exc).__name__}); start Redis or fix --state-url.") from None
    finally:
        client.close()
    return created, generated


def _info(digest: str, raw: Optional[str]) -> Optional[KeyInfo]:
    if raw is None:
        return None
    record = json.loads(raw)
    return KeyInfo(digest=digest, id=record["id"], name=record.get("name", ""),
                   limits=Limits.from_mapping(record.get("limits")))


def _counters(raw: dict) -> dict:
    out = empty()
    out["requests"] = int(raw.get("requests", 0))
    out["streams"] = int(raw.get("streams", 0))
    out["audio_seconds"] = round(float(raw.get("audio_seconds", 0.0)), 3)
    return out


def _now() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat(timespec="seconds")
