"""RedisJobStore against a real redis-server: what only a shared queue must get right.

The rules both stores keep are checked in test_job_store.py (parametrized over both); here: a worker that
stops renewing loses its job to another after the lease, a live one keeps it, concurrent claimers never
share a job, a reclaimed worker cannot finish, and outages become JobStoreUnavailable.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from whisper_stt.jobs.base import Job, JobStatus, JobStoreUnavailable, QueueFull
from whisper_stt.jobs.redis_store import STREAM, GROUP, RedisJobStore

from .redis_support import redis_server  # noqa: F401  (fixture)

LEASE = 1.0  # seconds; short so reclaiming is quick to test


def _job(owner: str = "o1", name: str = "a.wav") -> Job:
    from whisper_stt.jobs.base import new_job_id

    return Job(id=new_job_id(), owner=owner, filename=name, upload=f"uploads/{name}")


def run(coro):
    return asyncio.run(coro)


def test_dead_worker_job_is_reclaimed_after_the_lease_and_its_finish_is_refused(redis_server):
    async def scenario():
        store = RedisJobStore(redis_server.url, lease_s=LEASE)
        try:
            job = _job()
            await store.create(job, None)
            first = await store.claim("w-dead")
            assert first is not None and first.id == job.id and first.attempts == 1
            assert first.status is JobStatus.RUNNING and first.worker == "w-dead"
            # Within the lease nobody else gets it.
            assert await store.claim("w-new") is None
            await asyncio.sleep(LEASE + 0.3)  # w-dead stops heartbeating ("dies")
            second = await store.claim("w-new")
            assert second is not None and second.id == job.id
            assert second.attempts == 2 and second.worker == "w-new" and second.status is JobStatus.RUNNING
            # The old worker wakes up: it no longer holds the job, so neither renewal nor finish writes.
            assert await store.heartbeat(job.id, "w-dead", progress=0.9) is False
            assert await store.finish(job.id, "w-dead", JobStatus.SUCCEEDED, {"text": "stale"}) is False
            assert await store.finish(job.id, "w-new", JobStatus.SUCCEEDED, {"text": "right"}) is True
            assert await store.finish(job.id, "w-new", JobStatus.SUCCEEDED, {"text": "again"}) is False
            done = await store.get(job.id)
            assert done.status is JobStatus.SUCCEEDED and done.result == {"text": "right"}
            assert done.worker == "w-new" and done.progress == 1.0 and done.attempts == 2
            counts = await store.counts()
            assert (counts.queued, counts.running, counts.succeeded_total) == (0, 0, 1)
            # Nothing left pending or queued in the stream.
            raw = store._redis
            assert (await raw.xpending(STREAM, GROUP))["pending"] == 0
            assert await raw.xlen(STREAM) == 0
            assert await store.claim("w-other") is None
        finally:
            await store.close()

    run(scenario())


def test_heartbeats_keep_a_long_job_from_being_taken(redis_server):
    async def scenario():
        store = RedisJobStore(redis_server.url, lease_s=LEASE)
        try:
            job = _job()
            await store.create(job, None)
            assert (await store.claim("w1")).id == job.id
            for i in range(5):  # 2.5 lease lengths, renewed twice per lease
                await asyncio.sleep(LEASE / 2)
                assert await store.heartbeat(job.id, "w1", progress=0.1 * (i + 1), duration=60.0) is True
                assert await store.claim("w2") is None
                assert await store.requeue_stale() == 0
            held = await store.get(job.id)
            assert held.worker == "w1" and held.attempts == 1 and held.duration == 60.0
            assert held.progress == pytest.approx(0.5)
            # progress never goes down
            assert await store.heartbeat(job.id, "w1", progress=0.2) is True
            assert (await store.get(job.id)).progress == pytest.approx(0.5)
        finally:
            await store.close()

    run(scenario())


def test_a_dead_workers_job_is_found_behind_hundreds_of_live_ones(redis_server):
    lease, live = 2.0, 600

    async def scenario():
        store = RedisJobStore(redis_server.url, lease_s=lease)
        try:
            for i in range(live + 1):
                await store.create(_job(name=f"{i}.wav"), None)
            held = [(await store.claim("w-live")).id for _ in range(live)]
            dead = await store.claim("w-dead")  # the newest pending entry, behind all the live ones
            await asyncio.sleep(lease * 0.6)
            for job_id in held:  # the live worker renews all of its jobs
                assert await store.heartbeat(job_id, "w-live")
            await asyncio.sleep(lease * 0.6)  # the dead one's entry is now idle past the lease
            taken = await store.claim("w-new")
            assert taken is not None and taken.id == dead.id and taken.attempts == 2
            assert await store.claim("w-new") is None  # and none of the live worker's jobs
        finally:
            await store.close()

    run(scenario())


def test_requeue_stale_marks_a_dead_workers_job_queued_then_a_claim_takes_it(redis_server):
    async def scenario():
        store = RedisJobStore(redis_server.url, lease_s=LEASE)
        try:
            job = _job()
            await store.create(job, None)
            await store.claim("w-dead")
            assert await store.requeue_stale() == 0
            await asyncio.sleep(LEASE + 0.3)
            assert await store.requeue_stale() == 1
            back = await store.get(job.id)
            assert back.status is JobStatus.QUEUED and back.worker is None
            counts = await store.counts()
            assert (counts.queued, counts.running) == (1, 0)
            assert await store.heartbeat(job.id, "w-dead") is False
            again = await store.claim("w2")
            assert again.id == job.id and again.attempts == 2 and again.worker == "w2"
        finally:
            await store.close()

    run(scenario())


def test_release_hands_the_job_back_at_once(redis_server):
    async def scenario():
        store = RedisJobStore(redis_server.url, lease_s=30.0)
        try:
            job = _job()
            await store.create(job, None)
            await store.claim("w1")
            assert await store.release(job.id, "w2") is False
            assert await store.release(job.id, "w1") is True
            assert (await store.get(job.id)).status is JobStatus.QUEUED
            taken = await store.claim("w2")  # no 30 s wait
            assert taken is not None and taken.id == job.id and taken.attempts == 2
        finally:
            await store.close()

    run(scenario())


def test_concurrent_claimers_never_take_the_same_job(redis_server):
    n_jobs, n_workers = 40, 8

    async def scenario():
        stores = [RedisJobStore(redis_server.url, lease_s=30.0) for _ in range(n_workers)]
        try:
            ids = []
            for i in range(n_jobs):
                job = _job(owner=f"o{i % 3}", name=f"{i}.wav")
                await stores[0].create(job, None)
                ids.append(job.id)

            async def worker(k: int) -> list[str]:
                got = []
                while True:
                    job = await stores[k].claim(f"w{k}")
                    if job is None:
                        return got
                    got.append(job.id)
                    await asyncio.sleep(0)

            taken = await asyncio.gather(*(worker(k) for k in range(n_workers)))
            flat = [i for got in taken for i in got]
            assert sorted(flat) == sorted(ids)  # every job once, none twice
            assert sum(1 for got in taken if got) > 1  # really concurrent
            for k, got in enumerate(taken):
                for job_id in got:
                    job = await stores[0].get(job_id)
                    assert job.worker == f"w{k}" and job.attempts == 1
            assert (await stores[0].counts()).running == n_jobs
        finally:
            for s in stores:
                await s.close()

    run(scenario())


def test_claim_order_limits_and_cancel(redis_server):
    async def scenario():
        store = RedisJobStore(redis_server.url, lease_s=30.0)
        try:
            jobs = [_job(owner="o1", name=f"{i}.wav") for i in range(3)]
            for job in jobs[:2]:
                await store.create(job, 2)
            with pytest.raises(QueueFull):
                await store.create(jobs[2], 2)
            await store.create(_job(owner="o2"), 2)  # another owner has its own limit
            assert (await store.claim("w")).id == jobs[0].id  # oldest first
            await store.create(jobs[2], 2)  # claiming freed a queued slot
            cancelled = await store.cancel(jobs[1].id)
            assert cancelled.status is JobStatus.CANCELLED
            assert (await store.cancel(jobs[1].id)).status is JobStatus.CANCELLED  # unchanged, counted once
            assert await store.cancel("job_unknown") is None
            nxt = await store.claim("w")
            assert nxt.owner == "o2"  # the cancelled one is skipped
            listed = await store.list("o1")
            assert [j.id for j in listed] == [jobs[2].id, jobs[1].id, jobs[0].id]
            page2 = await store.list("o1", limit=1, before=jobs[2].id)
            assert [j.id for j in page2] == [jobs[1].id]
            c = await store.counts()
            assert (c.queued, c.running, c.cancelled_total) == (1, 2, 1)
            assert c.oldest_queued_age_s >= 0
            # Cancelling a running job: its worker learns at the next heartbeat.
            await store.cancel(jobs[0].id)
            assert await store.heartbeat(jobs[0].id, "w") is False
            assert await store.finish(jobs[0].id, "w", JobStatus.SUCCEEDED, {"text": "x"}) is False
            assert (await store.get(jobs[0].id)).status is JobStatus.CANCELLED
            ended = await store.expired(time.time() + 1)
            assert {j.id for j in ended} == {jobs[0].id, jobs[1].id}
            for j in ended:
                await store.delete(j.id)
            assert await store.get(jobs[1].id) is None
            assert [j.id for j in await store.list("o1")] == [jobs[2].id]
            assert (await store.counts()).cancelled_total == 2  # totals outlive retention
        finally:
            await store.close()

    run(scenario())


def test_outage_is_job_store_unavailable_without_the_password(redis_server):
    url = f"redis://:s3cret@127.0.0.1:{redis_server.port}/0"
    redis_server.stop()

    async def scenario():
        store = RedisJobStore(url)
        try:
            with pytest.raises(JobStoreUnavailable) as info:
                await store.claim("w")
            assert "s3cret" not in str(info.value) and "127.0.0.1" in str(info.value)
        finally:
            await store.close()

    run(scenario())


def test_a_flushed_redis_gets_its_consumer_group_back(redis_server):
    async def scenario():
        store = RedisJobStore(redis_server.url, lease_s=30.0)
        try:
            await store.create(_job(), None)
            await store._redis.flushall()  # the stream and its group are gone (an operator's FLUSHALL)
            job = _job()
            await store.create(job, None)
            claimed = await store.claim("w1")
            assert claimed is not None and claimed.id == job.id
        finally:
            await store.close()

    run(scenario())


def test_a_redis_outage_is_logged_once_by_a_polling_runner(redis_server, monkeypatch, caplog, tmp_path):
    """Workers poll every second: an outage of minutes must be a few lines, not one per poll."""
    from types import SimpleNamespace

    from whisper_stt.config import Settings
    from whisper_stt.jobs import runner as runner_module
    from whisper_stt.jobs.runner import JobRunner

    monkeypatch.setattr(runner_module, "IDLE_POLL_S", 0.05)

    async def scenario():
        store = RedisJobStore(redis_server.url, lease_s=30.0)
        runner = JobRunner(store, SimpleNamespace(device="cpu"), Settings(job_workers=2, jobs_dir=tmp_path),
                           worker_id="w1")
        await runner.start()
        try:
            await asyncio.sleep(0.3)
            redis_server.stop()
            await asyncio.sleep(1.0)  # about 40 failed polls over two slots
            redis_server.start()
            await asyncio.sleep(1.0)  # claims go through again (an empty queue: no job to run)
        finally:
            await runner.stop()
            await store.close()

    caplog.set_level("INFO", logger="whisper_stt")
    run(scenario())
    warnings = [r for r in caplog.records if r.levelname in ("WARNING", "ERROR")]
    assert 1 <= len(warnings) <= 4, [r.getMessage() for r in warnings]  # store, runner slots: once each
    assert not any(r.exc_info for r in warnings)
    assert sum("answers again" in r.getMessage() for r in caplog.records) == 1
