"""Jobs in Redis (``--state-url redis://...``): any replica or ``--worker`` process takes the next job.

The queue is a Redis Stream read through one consumer group, so Redis itself keeps the delivery
guarantees: ``XADD`` when a job is made, ``XREADGROUP`` to claim it (the entry then sits in the group's
pending list under the claiming worker), ``XCLAIM`` of its own entry on every heartbeat (which resets the
entry's idle time: a live worker's long job is never taken), ``XAUTOCLAIM`` of entries idle for longer
than the lease (their worker died), and ``XACK`` + ``XDEL`` when the job ends.

Every state change (create, claim, heartbeat, finish, cancel, requeue) is one Lua script, so it is atomic:
when a reclaimed worker and the new one both try to finish, the job record names one holder and only that
one's ``finish`` writes. Scripts build key names from the prefix, so this needs one Redis (or a primary
with replicas), not Redis Cluster, like the rest of the shared state; and Redis 6.2 or newer
(``XAUTOCLAIM``, ``XPENDING ... IDLE``).

Layout (under ``wstt:``, next to the keys and usage of :mod:`whisper_stt.state.redis_backend`):

``wstt:job:<id>``                 hash: one field per :class:`Job` field, each JSON-encoded (so Lua only
                                  compares and sets strings Python made; no JSON is re-encoded in Lua),
                                  plus ``_entry`` (its stream entry id) and ``_qkey`` (its owner's queued set)
``wstt:job:<id>:webhooks``        list: webhook attempts, JSON, oldest first
``wstt:jobs:queue``               stream: one entry ``{id: <job id>}`` per queued/running job; group ``workers``
``wstt:jobs:owner:<owner>``       sorted set: the owner's job ids by creation time (listing, newest first)
``wstt:jobs:queued:<owner>``      set: the owner's queued job ids (the per-key queue limit)
``wstt:jobs:queued``              sorted set: every queued job id by creation time (/stats: length, oldest)
``wstt:jobs:running``             sorted set: running job id -> claim time
``wstt:jobs:ended``               sorted set: ended job id -> finish time (retention)
``wstt:jobs:totals``              hash: succeeded / failed / cancelled counters
``wstt:jobs:webhooks``            sorted set: job id -> webhook_due_at, for every pending webhook delivery
                                  (set by the finish / cancel scripts themselves, so no end goes unannounced)
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import fields
from typing import Any, Optional

from ..state.redis_backend import redacted
from .base import (LEASE_S, WEBHOOK_PENDING, Job, JobStatus, JobStoreUnavailable, QueueCounts, QueueFull,
                   WebhookAttempt)

log = logging.getLogger(__name__)

P = "wstt:"
STREAM = P + "jobs:queue"
GROUP = "workers"
QUEUED = P + "jobs:queued"
RUNNING = P + "jobs:running"
ENDED = P + "jobs:ended"
TOTALS = P + "jobs:totals"
WEBHOOKS = P + "jobs:webhooks"
CONSUMER_IDLE_DROP_MS = 3600 * 1000  # a consumer with nothing pending and unseen for an hour is gone

_J = {s: json.dumps(s.value) for s in JobStatus}  # status as stored: '"queued"' ...

# KEYS: job, owner list, owner queued set, all queued, stream.  ARGV: limit (-1 none), id, created_at,
# then field/value pairs of the record.
_CREATE = """
local limit = tonumber(ARGV[1])
if limit >= 0 and redis.call('SCARD', KEYS[3]) >= limit then
  return 0
end
local entry = redis.call('XADD', KEYS[5], '*', 'id', ARGV[2])
local n = #ARGV
for i = 4, n, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('HSET', KEYS[1], '_entry', entry, '_qkey', KEYS[3])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
redis.call('SADD', KEYS[3], ARGV[2])
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[2])
return 1
"""

# KEYS: stream, all queued, running.  ARGV: group, consumer (= worker), lease ms, job key prefix,
# worker as JSON, now, now as JSON, lease_until as JSON.
# Reclaims first (an entry idle past the lease belongs to a dead worker and is older than any new one),
# then reads a new entry. An entry whose job ended or vanished is acknowledged and dropped.
_CLAIM = """
local stream, group, consumer = KEYS[1], ARGV[1], ARGV[2]
local function take(entry, fields)
  local id = nil
  for i = 1, #fields, 2 do
    if fields[i] == 'id' then id = fields[i + 1] end
  end
  local key = id and (ARGV[4] .. id) or nil
  local status = key and redis.call('HGET', key, 'status') or false
  if (status ~= '"queued"' and status ~= '"running"') or redis.call('HGET', key, '_entry') ~= entry then
    redis.call('XACK', stream, group, entry)
    redis.call('XDEL', stream, entry)
    return nil
  end
  if status == '"queued"' then
    redis.call('SREM', redis.call('HGET', key, '_qkey'), id)
    redis.call('ZREM', KEYS[2], id)
  end
  redis.call('HSET', key, 'status', '"running"', 'worker', ARGV[5], 'lease_until', ARGV[8])
  if redis.call('HGET', key, 'started_at') == 'null' then redis.call('HSET', key, 'started_at', ARGV[7]) end
  redis.call('HINCRBY', key, 'attempts', 1)
  redis.call('ZADD', KEYS[3], ARGV[6], id)
  return id
end
-- XPENDING's IDLE filter finds the lapsed entries however many live ones the group holds; XAUTOCLAIM
-- from each (its own idle check again) moves it to this consumer.
for _, p in ipairs(redis.call('XPENDING', stream, group, 'IDLE', ARGV[3], '-', '+', 10)) do
  local r = redis.call('XAUTOCLAIM', stream, group, consumer, ARGV[3], p[1], 'COUNT', 1)
  for _, e in ipairs(r[2]) do
    if e[2] then
      local id = take(e[1], e[2])
      if id then return id end
    end
  end
end
for _ = 1, 50 do
  local r = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', 1, 'STREAMS', stream, '>')
  if not r then return false end
  local e = r[1][2][1]
  if not e then return false end
  local id = take(e[1], e[2])
  if id then return id end
end
return false
"""

# KEYS: job, stream.  ARGV: group, consumer, worker JSON, lease_until JSON, progress ('' none), duration
# JSON ('' none). The XCLAIM of our own entry resets its idle time: that is the lease renewal Redis sees.
_HEARTBEAT = """
if redis.call('HGET', KEYS[1], 'status') ~= '"running"' or redis.call('HGET', KEYS[1], 'worker') ~= ARGV[3] then
  return 0
end
redis.call('XCLAIM', KEYS[2], ARGV[1], ARGV[2], 0, redis.call('HGET', KEYS[1], '_entry'), 'JUSTID')
redis.call('HSET', KEYS[1], 'lease_until', ARGV[4])
if ARGV[5] ~= '' then
  local old = tonumber(redis.call('HGET', KEYS[1], 'progress')) or 0
  if tonumber(ARGV[5]) > old then redis.call('HSET', KEYS[1], 'progress', ARGV[5]) end
end
if ARGV[6] ~= '' then redis.call('HSET', KEYS[1], 'duration', ARGV[6]) end
return 1
"""

# KEYS: job, stream, running, ended, totals, webhooks.  ARGV: group, worker JSON, status JSON, status name,
# now, now JSON, result JSON, error JSON, id, webhook due (now + lease), its JSON.
# A job with a webhook owes it from this write on; the finishing worker holds the delivery until the due time.
_FINISH = """
if redis.call('HGET', KEYS[1], 'status') ~= '"running"' or redis.call('HGET', KEYS[1], 'worker') ~= ARGV[2] then
  return 0
end
local entry = redis.call('HGET', KEYS[1], '_entry')
redis.call('XACK', KEYS[2], ARGV[1], entry)
redis.call('XDEL', KEYS[2], entry)
redis.call('HSET', KEYS[1], 'status', ARGV[3], 'finished_at', ARGV[6], 'lease_until', 'null',
           'result', ARGV[7], 'error', ARGV[8])
if ARGV[4] == 'succeeded' then redis.call('HSET', KEYS[1], 'progress', '1.0') end
redis.call('ZREM', KEYS[3], ARGV[9])
redis.call('ZADD', KEYS[4], ARGV[5], ARGV[9])
redis.call('HINCRBY', KEYS[5], ARGV[4], 1)
if redis.call('HGET', KEYS[1], 'webhook_url') ~= 'null' and (redis.call('HGET', KEYS[1], 'webhook_state') or 'null') == 'null' then
  redis.call('HSET', KEYS[1], 'webhook_state', '"pending"', 'webhook_worker', ARGV[2], 'webhook_due_at', ARGV[11])
  redis.call('ZADD', KEYS[6], ARGV[10], ARGV[9])
end
return 1
"""

# KEYS: job, stream, all queued, running, ended, totals, webhooks.  ARGV: group, now, now JSON, id.
_CANCEL = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return -1 end
if status ~= '"queued"' and status ~= '"running"' then return 0 end
local entry = redis.call('HGET', KEYS[1], '_entry')
redis.call('XACK', KEYS[2], ARGV[1], entry)
redis.call('XDEL', KEYS[2], entry)
redis.call('SREM', redis.call('HGET', KEYS[1], '_qkey'), ARGV[4])
redis.call('ZREM', KEYS[3], ARGV[4])
redis.call('ZREM', KEYS[4], ARGV[4])
redis.call('HSET', KEYS[1], 'status', '"cancelled"', 'finished_at', ARGV[3], 'lease_until', 'null')
redis.call('ZADD', KEYS[5], ARGV[2], ARGV[4])
redis.call('HINCRBY', KEYS[6], 'cancelled', 1)
if redis.call('HGET', KEYS[1], 'webhook_url') ~= 'null' and (redis.call('HGET', KEYS[1], 'webhook_state') or 'null') == 'null' then
  redis.call('HSET', KEYS[1], 'webhook_state', '"pending"', 'webhook_worker', 'null', 'webhook_due_at', ARGV[3])
  redis.call('ZADD', KEYS[7], ARGV[2], ARGV[4])
end
return 1
"""

# KEYS: job, webhooks.  ARGV: worker JSON, now, due, due JSON, id.
_CLAIM_WEBHOOK = """
if redis.call('HGET', KEYS[1], 'webhook_state') ~= '"pending"' then return 0 end
local due = tonumber(redis.call('ZSCORE', KEYS[2], ARGV[5]) or '0')
if redis.call('HGET', KEYS[1], 'webhook_worker') ~= ARGV[1] and due > tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'webhook_worker', ARGV[1], 'webhook_due_at', ARGV[4])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[5])
return 1
"""

# KEYS: job, webhooks, attempts list.  ARGV: worker JSON, attempt JSON ('' none), state name, state JSON,
# due ('' none), due JSON, id.
_WEBHOOK_ATTEMPTED = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if ARGV[2] ~= '' then redis.call('RPUSH', KEYS[3], ARGV[2]) end
if redis.call('HGET', KEYS[1], 'webhook_state') ~= '"pending"' then return 0 end
if redis.call('HGET', KEYS[1], 'webhook_worker') ~= ARGV[1] and ARGV[3] ~= 'delivered' then return 0 end
redis.call('HSET', KEYS[1], 'webhook_state', ARGV[4], 'webhook_worker', ARGV[1], 'webhook_due_at', ARGV[6])
if ARGV[3] == 'pending' then
  redis.call('ZADD', KEYS[2], ARGV[5], ARGV[7])
else
  redis.call('ZREM', KEYS[2], ARGV[7])
end
return 1
"""

# KEYS: job, stream, all queued, running.  ARGV: group, consumer, worker JSON, id, idle ms.
# A worker stopping cleanly hands its job back at once: the record goes back to "queued" and its entry's
# idle time is set past the lease, so the next claim's XAUTOCLAIM takes it without waiting.
_RELEASE = """
if redis.call('HGET', KEYS[1], 'status') ~= '"running"' or redis.call('HGET', KEYS[1], 'worker') ~= ARGV[3] then
  return 0
end
redis.call('XCLAIM', KEYS[2], ARGV[1], ARGV[2], 0, redis.call('HGET', KEYS[1], '_entry'), 'IDLE', ARGV[5], 'JUSTID')
redis.call('HSET', KEYS[1], 'status', '"queued"', 'worker', 'null', 'lease_until', 'null')
redis.call('ZREM', KEYS[4], ARGV[4])
redis.call('SADD', redis.call('HGET', KEYS[1], '_qkey'), ARGV[4])
redis.call('ZADD', KEYS[3], redis.call('HGET', KEYS[1], 'created_at'), ARGV[4])
return 1
"""

# KEYS: stream, all queued, running.  ARGV: group, lease ms, job key prefix.
# Entries idle past the lease belong to workers that stopped renewing: their jobs go back to "queued"
# (the entry stays pending until a claim's XAUTOCLAIM takes it), and the old worker's next heartbeat or
# finish finds it no longer holds the job.
_REQUEUE = """
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], 'IDLE', ARGV[2], '-', '+', 100)
local n = 0
for _, p in ipairs(pending) do
  local entry = p[1]
  local rows = redis.call('XRANGE', KEYS[1], entry, entry)
  local id = nil
  if rows[1] then
    local f = rows[1][2]
    for i = 1, #f, 2 do if f[i] == 'id' then id = f[i + 1] end end
  end
  local key = id and (ARGV[3] .. id) or nil
  local status = key and redis.call('HGET', key, 'status') or false
  if status == '"running"' and redis.call('HGET', key, '_entry') == entry then
    redis.call('HSET', key, 'status', '"queued"', 'worker', 'null', 'lease_until', 'null')
    redis.call('ZREM', KEYS[3], id)
    redis.call('SADD', redis.call('HGET', key, '_qkey'), id)
    redis.call('ZADD', KEYS[2], redis.call('HGET', key, 'created_at'), id)
    n = n + 1
  elseif status ~= '"queued"' then
    redis.call('XACK', KEYS[1], ARGV[1], entry)
    redis.call('XDEL', KEYS[1], entry)
  end
end
return n
"""

_JOB_FIELDS = tuple(f.name for f in fields(Job) if f.name != "webhook_attempts")


def _job_key(job_id: str) -> str:
    return P + f"job:{job_id}"


def _owner_key(owner: str) -> str:
    return P + f"jobs:owner:{owner}"


def _queued_key(owner: str) -> str:
    return P + f"jobs:queued:{owner}"


class RedisJobStore:
    """:class:`~whisper_stt.jobs.base.JobStore` on Redis Streams; see the module doc for the layout."""

    name = "redis"

    def __init__(self, url: str, lease_s: float = LEASE_S) -> None:
        import redis.asyncio as aioredis

        self.url = url
        self.where = redacted(url)
        self.lease_s = float(lease_s)
        self._redis = aioredis.from_url(url, decode_responses=True, socket_connect_timeout=2.0,
                                        socket_timeout=5.0, health_check_interval=10)
        self._create = self._redis.register_script(_CREATE)
        self._claim = self._redis.register_script(_CLAIM)
        self._heartbeat = self._redis.register_script(_HEARTBEAT)
        self._finish = self._redis.register_script(_FINISH)
        self._cancel = self._redis.register_script(_CANCEL)
        self._requeue = self._redis.register_script(_REQUEUE)
        self._release = self._redis.register_script(_RELEASE)
        self._claim_webhook = self._redis.register_script(_CLAIM_WEBHOOK)
        self._webhook_attempted = self._redis.register_script(_WEBHOOK_ATTEMPTED)
        self._group_ready = False
        self.ok = True  # False while Redis is unreachable: one log line when it goes, one when it is back

    # --- plumbing -----------------------------------------------------------------------------------
    async def _call(self, make):
        """Run ``make()`` (a coroutine factory); outages become JobStoreUnavailable (503), and a missing
        consumer group (the stream was deleted, e.g. FLUSHDB) is made again and the call retried once."""
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import ResponseError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        for attempt in range(2):
            try:
                if not self._group_ready:
                    await self._ensure_group()
                result = await make()
            except ResponseError as exc:
                if "NOGROUP" in str(exc) and attempt == 0:
                    self._group_ready = False
                    continue
                raise
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                if self.ok:
                    log.warning("Job store Redis at %s unreachable: %s", self.where, type(exc).__name__)
                self.ok = False
                raise JobStoreUnavailable(f"The job store (Redis at {self.where}) is unavailable; try again "
                                          "shortly.") from None
            if not self.ok:
                log.info("Job store Redis at %s is back", self.where)
                self.ok = True
            return result

    async def _ensure_group(self) -> None:
        from redis.exceptions import ResponseError

        try:
            # id 0: entries added before the group existed are delivered too
            await self._redis.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    @staticmethod
    def _decode(raw: dict[str, str], webhooks: list[str]) -> Job:
        data: dict[str, Any] = {name: json.loads(raw[name]) for name in _JOB_FIELDS if name in raw}
        data["webhook_attempts"] = [json.loads(w) for w in webhooks]
        return Job.from_record(data)

    # --- JobStore -----------------------------------------------------------------------------------
    async def create(self, job: Job, max_queued_per_owner: Optional[int]) -> None:
        record = job.to_record()
        record.pop("webhook_attempts", None)
        pairs: list[str] = []
        for name in _JOB_FIELDS:
            pairs += [name, json.dumps(record[name])]
        limit = -1 if max_queued_per_owner is None else int(max_queued_per_owner)
        ok = await self._call(lambda: self._create(
            keys=[_job_key(job.id), _owner_key(job.owner), _queued_key(job.owner), QUEUED, STREAM],
            args=[limit, job.id, repr(job.created_at), *pairs]))
        if not ok:
            raise QueueFull(limit)

    async def get(self, job_id: str) -> Optional[Job]:
        async def read():
            pipe = self._redis.pipeline(transaction=True)
            pipe.hgetall(_job_key(job_id))
            pipe.lrange(_job_key(job_id) + ":webhooks", 0, -1)
            return await pipe.execute()

        raw, webhooks = await self._call(read)
        if not raw or "status" not in raw:
            return None
        return self._decode(raw, webhooks)

    async def list(self, owner: str, limit: int = 20, before: Optional[str] = None) -> list[Job]:
        key = _owner_key(owner)
        start = 0
        if before is not None:
            rank = await self._call(lambda: self._redis.zrevrank(key, before))
            if rank is None:
                return []  # the cursor job is gone (deleted or another owner's): no page after it
            start = rank + 1
        ids = await self._call(lambda: self._redis.zrevrange(key, start, start + max(0, limit) - 1))
        return await self._get_many(ids)

    async def _get_many(self, ids: list[str]) -> list[Job]:
        """The jobs of ``ids`` that still exist, in that order, in one round trip."""
        if not ids:
            return []

        def read():
            pipe = self._redis.pipeline(transaction=False)
            for job_id in ids:
                pipe.hgetall(_job_key(job_id))
                pipe.lrange(_job_key(job_id) + ":webhooks", 0, -1)
            return pipe.execute()

        rows = await self._call(read)
        return [self._decode(raw, hooks) for raw, hooks in zip(rows[::2], rows[1::2]) if raw and "status" in raw]

    async def claim(self, worker: str) -> Optional[Job]:
        now = time.time()
        job_id = await self._call(lambda: self._claim(
            keys=[STREAM, QUEUED, RUNNING],
            args=[GROUP, worker, int(self.lease_s * 1000), P + "job:", json.dumps(worker), repr(now),
                  json.dumps(now), json.dumps(now + self.lease_s)]))
        if not job_id:
            return None
        return await self.get(job_id)

    async def heartbeat(self, job_id: str, worker: str, progress: Optional[float] = None,
                        duration: Optional[float] = None) -> bool:
        ok = await self._call(lambda: self._heartbeat(
            keys=[_job_key(job_id), STREAM],
            args=[GROUP, worker, json.dumps(worker), json.dumps(time.time() + self.lease_s),
                  "" if progress is None else json.dumps(min(1.0, max(0.0, float(progress)))),
                  "" if duration is None else json.dumps(float(duration))]))
        return bool(ok)

    async def finish(self, job_id: str, worker: str, status: JobStatus, result: Optional[dict] = None,
                     error: Optional[str] = None) -> bool:
        status = JobStatus(status)
        if not status.ended:
            raise ValueError(f"finish needs an end status, not {status.value}")
        now = time.time()
        due = now + self.lease_s
        ok = await self._call(lambda: self._finish(
            keys=[_job_key(job_id), STREAM, RUNNING, ENDED, TOTALS, WEBHOOKS],
            args=[GROUP, json.dumps(worker), _J[status], status.value, repr(now), json.dumps(now),
                  json.dumps(result), json.dumps(error), job_id, repr(due), json.dumps(due)]))
        return bool(ok)

    async def cancel(self, job_id: str) -> Optional[Job]:
        now = time.time()
        done = await self._call(lambda: self._cancel(
            keys=[_job_key(job_id), STREAM, QUEUED, RUNNING, ENDED, TOTALS, WEBHOOKS],
            args=[GROUP, repr(now), json.dumps(now), job_id]))
        if done == -1:
            return None
        return await self.get(job_id)

    async def requeue_stale(self) -> int:
        n = await self._call(lambda: self._requeue(
            keys=[STREAM, QUEUED, RUNNING], args=[GROUP, int(self.lease_s * 1000), P + "job:"]))
        await self._drop_gone_consumers()
        return int(n or 0)

    async def release(self, job_id: str, worker: str) -> bool:
        """Hand a running job held by ``worker`` back to the queue now (a clean stop); ``attempts`` keeps
        counting the claim. False when it does not hold the job."""
        ok = await self._call(lambda: self._release(
            keys=[_job_key(job_id), STREAM, QUEUED, RUNNING],
            args=[GROUP, worker, json.dumps(worker), job_id, int(self.lease_s * 1000) * 10 + 1000]))
        return bool(ok)

    async def _drop_gone_consumers(self) -> None:
        """Each worker process is a consumer of the group; forget those long gone with nothing pending,
        so the group's consumer list does not grow with every restart."""
        try:
            consumers = await self._call(lambda: self._redis.xinfo_consumers(STREAM, GROUP))
            for c in consumers:
                if int(c.get("pending", 0)) == 0 and int(c.get("idle", 0)) > CONSUMER_IDLE_DROP_MS:
                    await self._call(lambda: self._redis.xgroup_delconsumer(STREAM, GROUP, c["name"]))
        except JobStoreUnavailable:
            raise
        except Exception:  # housekeeping only; never stops the caller
            log.debug("Dropping idle stream consumers failed", exc_info=True)

    async def add_webhook_attempt(self, job_id: str, attempt: WebhookAttempt) -> None:
        key = _job_key(job_id)
        if await self._call(lambda: self._redis.exists(key)):
            await self._call(lambda: self._redis.rpush(key + ":webhooks", json.dumps(attempt.__dict__)))

    async def claim_webhook(self, job_id: str, worker: str, lease_s: float) -> Optional[Job]:
        now = time.time()
        due = now + float(lease_s)
        ok = await self._call(lambda: self._claim_webhook(
            keys=[_job_key(job_id), WEBHOOKS],
            args=[json.dumps(worker), repr(now), repr(due), json.dumps(due), job_id]))
        return await self.get(job_id) if ok else None

    async def webhook_attempted(self, job_id: str, worker: str, attempt: Optional[WebhookAttempt],
                                state: str, due_at: Optional[float] = None) -> bool:
        if state == WEBHOOK_PENDING and due_at is None:
            raise ValueError("a pending delivery needs the time of its next try")
        due = due_at if state == WEBHOOK_PENDING else None
        ok = await self._call(lambda: self._webhook_attempted(
            keys=[_job_key(job_id), WEBHOOKS, _job_key(job_id) + ":webhooks"],
            args=[json.dumps(worker), "" if attempt is None else json.dumps(attempt.__dict__), state,
                  json.dumps(state), "" if due is None else repr(due), json.dumps(due), job_id]))
        return bool(ok)

    async def due_webhooks(self, limit: int = 20) -> list[str]:
        return await self._call(lambda: self._redis.zrangebyscore(WEBHOOKS, "-inf", repr(time.time()),
                                                                   start=0, num=limit))

    async def expired(self, ended_before: float) -> list[Job]:
        ids = await self._call(lambda: self._redis.zrangebyscore(ENDED, "-inf", f"({ended_before!r}"))
        return await self._get_many(ids)

    async def delete(self, job_id: str) -> None:
        key = _job_key(job_id)
        raw = await self._call(lambda: self._redis.hmget(key, "owner", "_entry", "_qkey"))
        owner_json, entry, qkey = raw

        def remove():
            pipe = self._redis.pipeline(transaction=True)
            pipe.delete(key, key + ":webhooks")
            if owner_json is not None:
                pipe.zrem(_owner_key(json.loads(owner_json)), job_id)
            if qkey:
                pipe.srem(qkey, job_id)
            pipe.zrem(QUEUED, job_id)
            pipe.zrem(RUNNING, job_id)
            pipe.zrem(ENDED, job_id)
            pipe.zrem(WEBHOOKS, job_id)
            if entry:
                pipe.xack(STREAM, GROUP, entry)
                pipe.xdel(STREAM, entry)
            return pipe.execute()

        await self._call(remove)

    async def counts(self) -> QueueCounts:
        async def read():
            pipe = self._redis.pipeline(transaction=True)
            pipe.zcard(QUEUED)
            pipe.zcard(RUNNING)
            pipe.zrange(QUEUED, 0, 0, withscores=True)
            pipe.hgetall(TOTALS)
            pipe.zcard(WEBHOOKS)
            return await pipe.execute()

        queued, running, oldest, totals, webhooks = await self._call(read)
        age = max(0.0, time.time() - oldest[0][1]) if oldest else 0.0
        return QueueCounts(queued=int(queued), running=int(running), oldest_queued_age_s=round(age, 3),
                           succeeded_total=int(totals.get("succeeded", 0)),
                           failed_total=int(totals.get("failed", 0)),
                           cancelled_total=int(totals.get("cancelled", 0)),
                           webhooks_pending=int(webhooks))

    async def close(self) -> None:
        await self._redis.aclose()

    def health(self) -> dict:
        return {"backend": "redis", "url": self.where, "ok": self.ok}
