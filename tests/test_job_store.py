"""The JobStore contract (whisper_stt/jobs/base.py), the same tests for every store: claims are leases,
only the lease holder finishes, progress never goes down, lapsed leases go back to the queue, cancel,
pagination, the per-owner limit, retention and the counts. Fast: no model.

A store joins by adding a factory to STORE_FACTORIES: ``async factory(tmp_path, lease_s) -> store``.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import shutil
import time
from pathlib import Path

import pytest

from whisper_stt.jobs.base import Job, JobStatus, QueueFull, WebhookAttempt, new_job_id
from whisper_stt.jobs.runner import plan_pieces, quiet_spans
from whisper_stt.jobs.sqlite_store import SqliteJobStore


async def _sqlite(tmp_path: Path, lease_s: float):
    return SqliteJobStore(tmp_path / "jobs", lease_s=lease_s)


async def _redis(tmp_path: Path, lease_s: float):
    """A RedisJobStore on its own redis-server, stopped when the store closes."""
    from whisper_stt.jobs.redis_store import RedisJobStore

    from .redis_support import RedisServer

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (run ./run_tests.sh, which installs Debian's redis-server)")
    server = RedisServer(tmp_path / "redis").start()
    made = RedisJobStore(server.url, lease_s=lease_s)
    close = made.close

    async def close_and_stop() -> None:
        await close()
        server.stop()

    made.close = close_and_stop
    return made


STORE_FACTORIES = [pytest.param(_sqlite, id="sqlite"), pytest.param(_redis, id="redis")]
LEASE = 1.0  # short leases so lapses are tested in about a second


@pytest.fixture(params=STORE_FACTORIES)
def store(request, tmp_path):
    """A fresh store, used on one event loop (``run``) and closed at teardown."""
    loop = asyncio.new_event_loop()
    made = loop.run_until_complete(request.param(tmp_path, LEASE))
    made.run = loop.run_until_complete
    yield made
    loop.run_until_complete(made.close())
    loop.close()


def job(owner: str = "alice", **kw) -> Job:
    jid = new_job_id()
    return Job(id=jid, owner=owner, filename="a.wav", upload=f"{jid}/upload", **kw)


def test_claim_is_oldest_first_and_a_lease(store):
    a, b = job(), job()
    store.run(store.create(a, None))
    store.run(store.create(b, None))
    got = store.run(store.claim("w1"))
    assert got.id == a.id and got.status is JobStatus.RUNNING and got.attempts == 1 and got.worker == "w1"
    assert got.lease_until > time.time()
    assert store.run(store.claim("w2")).id == b.id
    assert store.run(store.claim("w3")) is None
    assert store.run(store.get(a.id)).started_at is not None


def test_only_the_lease_holder_heartbeats_and_finishes(store):
    a = job()
    store.run(store.create(a, None))
    store.run(store.claim("w1"))
    assert store.run(store.heartbeat(a.id, "w2", progress=0.5)) is False
    assert store.run(store.finish(a.id, "w2", JobStatus.SUCCEEDED, result={"text": "other"})) is False
    assert store.run(store.get(a.id)).progress == 0.0
    assert store.run(store.finish(a.id, "w1", JobStatus.SUCCEEDED, result={"text": "mine"})) is True
    done = store.run(store.get(a.id))
    assert done.status is JobStatus.SUCCEEDED and done.result == {"text": "mine"} and done.progress == 1.0
    assert done.finished_at is not None
    # Done once: a second finish (same worker or another) changes nothing.
    assert store.run(store.finish(a.id, "w1", JobStatus.FAILED, error="again")) is False
    assert store.run(store.get(a.id)).result == {"text": "mine"}
    assert store.run(store.heartbeat(a.id, "w1")) is False


def test_progress_never_goes_down_and_duration_is_kept(store):
    a = job()
    store.run(store.create(a, None))
    store.run(store.claim("w1"))
    assert store.run(store.heartbeat(a.id, "w1", progress=0.4, duration=600.0))
    assert store.run(store.heartbeat(a.id, "w1", progress=0.2))
    got = store.run(store.get(a.id))
    assert got.progress == 0.4 and got.duration == 600.0
    assert store.run(store.heartbeat(a.id, "w1", progress=7))
    assert store.run(store.get(a.id)).progress == 1.0


def test_a_lapsed_lease_goes_back_to_the_queue_and_the_old_holder_is_refused(store):
    a = job()
    store.run(store.create(a, None))
    store.run(store.claim("w1"))
    store.run(store.heartbeat(a.id, "w1", progress=0.3))
    assert store.run(store.requeue_stale()) == 0  # the lease still holds
    time.sleep(LEASE + 0.3)
    assert store.run(store.requeue_stale()) == 1
    again = store.run(store.get(a.id))
    assert again.status is JobStatus.QUEUED and again.progress == 0.3  # progress survives the move
    taken = store.run(store.claim("w2"))
    assert taken.id == a.id and taken.attempts == 2
    assert store.run(store.heartbeat(a.id, "w1")) is False  # the old worker must stop
    assert store.run(store.finish(a.id, "w1", JobStatus.SUCCEEDED, result={"text": "stale"})) is False
    assert store.run(store.finish(a.id, "w2", JobStatus.SUCCEEDED, result={"text": "fresh"})) is True
    assert store.run(store.get(a.id)).result == {"text": "fresh"}


def test_heartbeats_keep_the_lease(store):
    a = job()
    store.run(store.create(a, None))
    store.run(store.claim("w1"))
    for _ in range(4):
        time.sleep(LEASE / 3)
        assert store.run(store.heartbeat(a.id, "w1"))
        assert store.run(store.requeue_stale()) == 0


def test_cancel_queued_and_running(store):
    a, b, c = job(), job(), job()
    for j in (a, b, c):
        store.run(store.create(j, None))
    running = store.run(store.claim("w1"))
    assert running.id == a.id
    assert store.run(store.cancel(b.id)).status is JobStatus.CANCELLED
    assert store.run(store.claim("w2")).id == c.id  # a cancelled job is never claimed
    assert store.run(store.cancel(a.id)).status is JobStatus.CANCELLED
    assert store.run(store.heartbeat(a.id, "w1")) is False  # the worker learns at its next heartbeat
    assert store.run(store.finish(a.id, "w1", JobStatus.SUCCEEDED, result={"text": "x"})) is False
    assert store.run(store.get(a.id)).result is None
    # An ended job is returned unchanged; an unknown one is None.
    store.run(store.finish(c.id, "w2", JobStatus.FAILED, error="bad audio"))
    assert store.run(store.cancel(c.id)).status is JobStatus.FAILED
    assert store.run(store.cancel(new_job_id())) is None


def test_list_newest_first_paginated_per_owner(store):
    mine = [job("alice") for _ in range(5)]
    for j in mine:
        store.run(store.create(j, None))
        store.run(store.create(job("bob"), None))
    page1 = store.run(store.list("alice", limit=2))
    assert [j.id for j in page1] == [mine[4].id, mine[3].id]
    page2 = store.run(store.list("alice", limit=2, before=page1[-1].id))
    assert [j.id for j in page2] == [mine[2].id, mine[1].id]
    page3 = store.run(store.list("alice", limit=2, before=page2[-1].id))
    assert [j.id for j in page3] == [mine[0].id]
    assert all(j.owner == "bob" for j in store.run(store.list("bob", limit=50)))
    assert len(store.run(store.list("bob", limit=50))) == 5
    # Another owner's id as the cursor reveals nothing.
    bob_first = store.run(store.list("bob", limit=1))[0]
    assert store.run(store.list("alice", before=bob_first.id)) == []


def test_queued_limit_per_owner(store):
    for _ in range(2):
        store.run(store.create(job("alice"), 2))
    with pytest.raises(QueueFull):
        store.run(store.create(job("alice"), 2))
    store.run(store.create(job("bob"), 2))  # per owner
    store.run(store.claim("w1"))  # a running job no longer counts as queued
    store.run(store.create(job("alice"), 2))
    store.run(store.create(job("alice"), None))  # None: no limit


def test_retention_and_delete(store):
    old, recent, running = job(), job(), job()
    for j in (old, recent, running):
        store.run(store.create(j, None))
    store.run(store.claim("w1"))
    store.run(store.finish(old.id, "w1", JobStatus.SUCCEEDED, result={"text": "x"}))
    cut = time.time() + 0.001
    time.sleep(0.01)
    store.run(store.cancel(recent.id))
    store.run(store.claim("w1"))
    assert [j.id for j in store.run(store.expired(cut))] == [old.id]  # running jobs never expire
    store.run(store.delete(old.id))
    assert store.run(store.get(old.id)) is None
    assert [j.id for j in store.run(store.expired(time.time() + 1))] == [recent.id]


def test_counts(store):
    a, b, c, d = job(), job(), job(), job()
    for j in (a, b, c, d):
        store.run(store.create(j, None))
    time.sleep(0.05)
    store.run(store.claim("w"))
    store.run(store.claim("w"))
    store.run(store.finish(a.id, "w", JobStatus.SUCCEEDED, result={}))
    store.run(store.finish(b.id, "w", JobStatus.FAILED, error="x"))
    store.run(store.cancel(c.id))
    store.run(store.claim("w"))  # d running
    counts = store.run(store.counts())
    assert (counts.queued, counts.running) == (0, 1)
    assert (counts.succeeded_total, counts.failed_total, counts.cancelled_total) == (1, 1, 1)
    assert counts.oldest_queued_age_s == 0.0
    e = job()
    store.run(store.create(e, None))
    time.sleep(0.05)
    counts = store.run(store.counts())
    assert counts.queued == 1 and counts.oldest_queued_age_s >= 0.05
    # Totals outlive retention.
    store.run(store.delete(a.id))
    assert store.run(store.counts()).succeeded_total == 1


def test_webhook_attempts_are_kept(store):
    a = job(webhook_url="https://example.com/hook")
    store.run(store.create(a, None))
    store.run(store.add_webhook_attempt(a.id, WebhookAttempt(at=1.0, status=500, error="HTTP 500")))
    store.run(store.add_webhook_attempt(a.id, WebhookAttempt(at=2.0, status=200)))
    got = store.run(store.get(a.id))
    assert [(w.status, w.error) for w in got.webhook_attempts] == [(500, "HTTP 500"), (200, None)]


def test_an_ended_job_owes_its_webhook_and_the_finisher_holds_the_delivery(store):
    from whisper_stt.jobs.base import WEBHOOK_PENDING

    hooked, plain, cancelled = job(webhook_url="https://example.com/hook"), job(), job(webhook_url="https://e.x/h")
    for j in (hooked, plain, cancelled):
        store.run(store.create(j, None))
    store.run(store.claim("w1"))
    store.run(store.claim("w1"))
    assert store.run(store.get(hooked.id)).webhook_state is None  # nothing owed while it runs
    assert store.run(store.due_webhooks()) == []
    store.run(store.finish(hooked.id, "w1", JobStatus.SUCCEEDED, result={"text": "x"}))
    store.run(store.finish(plain.id, "w1", JobStatus.FAILED, error="bad"))
    got = store.run(store.get(hooked.id))
    # Owed from the finish's own write on, held by the finishing worker for a lease.
    assert got.webhook_state == WEBHOOK_PENDING and got.webhook_worker == "w1"
    assert got.webhook_due_at > time.time()
    assert store.run(store.get(plain.id)).webhook_state is None  # no URL: nothing owed
    assert store.run(store.due_webhooks()) == []  # its holder is alive: nobody else may take it yet
    assert store.run(store.claim_webhook(hooked.id, "w2", 10)) is None
    claimed = store.run(store.claim_webhook(hooked.id, "w1", 10))  # the finisher sends at once
    assert claimed is not None and claimed.webhook_due_at > time.time() + 9
    assert store.run(store.claim_webhook(plain.id, "w1", 10)) is None
    # A cancelled job owes its webhook too, to whoever claims first (no holder yet).
    store.run(store.cancel(cancelled.id))
    got = store.run(store.get(cancelled.id))
    assert got.webhook_state == WEBHOOK_PENDING and got.webhook_worker is None
    assert store.run(store.due_webhooks()) == [cancelled.id]
    assert store.run(store.claim_webhook(cancelled.id, "w3", 10)).webhook_worker == "w3"
    assert store.run(store.claim_webhook(cancelled.id, "w4", 10)) is None  # exactly one holder
    assert store.run(store.counts()).webhooks_pending == 2


def test_webhook_attempts_move_the_delivery_and_a_dead_holder_is_taken_over(store):
    from whisper_stt.jobs.base import WEBHOOK_DELIVERED, WEBHOOK_GAVE_UP, WEBHOOK_PENDING

    a, b = job(webhook_url="https://example.com/a"), job(webhook_url="https://example.com/b")
    for j in (a, b):
        store.run(store.create(j, None))
        store.run(store.claim("w1"))
        store.run(store.finish(j.id, "w1", JobStatus.SUCCEEDED, result={}))
    assert store.run(store.claim_webhook(a.id, "w1", 0.3)) is not None
    # A failed attempt: recorded, and the next try is not before its time, not even for another worker.
    fail = WebhookAttempt(at=time.time(), status=None, error="ConnectError")
    assert store.run(store.webhook_attempted(a.id, "w1", fail, WEBHOOK_PENDING, time.time() + 0.4)) is True
    assert store.run(store.claim_webhook(a.id, "w2", 5)) is None
    assert a.id not in store.run(store.due_webhooks())
    # w1 died while waiting: once due, the sweep sees it and exactly one other worker takes it over.
    time.sleep(0.5)
    assert a.id in store.run(store.due_webhooks())
    taken = store.run(store.claim_webhook(a.id, "w2", 5))
    assert taken is not None and [w.error for w in taken.webhook_attempts] == ["ConnectError"]
    assert store.run(store.claim_webhook(a.id, "w3", 5)) is None
    assert store.run(store.claim_webhook(a.id, "w1", 5)) is None  # the old holder, back, is refused too
    # The old holder's late failure is recorded (a fact) but moves nothing; the new holder's 2xx ends it.
    late = WebhookAttempt(at=time.time(), status=500, error="HTTP 500")
    assert store.run(store.webhook_attempted(a.id, "w1", late, WEBHOOK_PENDING, time.time())) is False
    ok = WebhookAttempt(at=time.time(), status=200)
    assert store.run(store.webhook_attempted(a.id, "w2", ok, WEBHOOK_DELIVERED)) is True
    done = store.run(store.get(a.id))
    assert done.webhook_state == WEBHOOK_DELIVERED and done.webhook_due_at is None
    assert [w.status for w in done.webhook_attempts] == [None, 500, 200]
    assert store.run(store.claim_webhook(a.id, "w2", 5)) is None  # delivered is final
    assert store.run(store.webhook_attempted(a.id, "w2", None, WEBHOOK_PENDING, time.time())) is False
    assert store.run(store.get(a.id)).webhook_state == WEBHOOK_DELIVERED
    # A 2xx from a holder that lost its lease still ends the delivery (the receiver has it).
    store.run(store.claim_webhook(b.id, "w1", 0.2))
    time.sleep(0.3)
    assert store.run(store.claim_webhook(b.id, "w2", 5)) is not None
    assert store.run(store.webhook_attempted(b.id, "w1", ok, WEBHOOK_DELIVERED)) is True
    assert store.run(store.get(b.id)).webhook_state == WEBHOOK_DELIVERED
    assert store.run(store.counts()).webhooks_pending == 0
    assert store.run(store.due_webhooks()) == []
    # Giving up is final as well.
    c = job(webhook_url="https://example.com/c")
    store.run(store.create(c, None))
    store.run(store.cancel(c.id))
    store.run(store.claim_webhook(c.id, "w1", 5))
    assert store.run(store.webhook_attempted(c.id, "w1", WebhookAttempt(at=1.0, status=404, error="HTTP 404"),
                                             WEBHOOK_GAVE_UP)) is True
    assert store.run(store.get(c.id)).webhook_state == WEBHOOK_GAVE_UP
    assert store.run(store.due_webhooks()) == []
    store.run(store.delete(c.id))  # and a deleted job owes nothing
    assert store.run(store.claim_webhook(c.id, "w1", 5)) is None


def test_sqlite_file_from_before_durable_webhooks_is_upgraded(tmp_path):
    """A jobs.db made before the webhook columns existed gets them on open; its jobs still end and owe."""
    import json
    import sqlite3

    from whisper_stt.jobs.base import WEBHOOK_PENDING

    (tmp_path / "jobs").mkdir()
    old = job(webhook_url="https://example.com/hook")
    conn = sqlite3.connect(tmp_path / "jobs" / "jobs.db")
    conn.executescript("""
        CREATE TABLE jobs (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,
                           owner TEXT NOT NULL, status TEXT NOT NULL, finished_at REAL, worker TEXT,
                           lease_until REAL, record TEXT NOT NULL);
        CREATE TABLE totals (status TEXT PRIMARY KEY, n INTEGER NOT NULL);
    """)
    record = old.to_record()
    for name in ("webhook_state", "webhook_worker", "webhook_due_at"):
        record.pop(name)
    conn.execute("INSERT INTO jobs (id, owner, status, record) VALUES (?, ?, ?, ?)",
                 (old.id, old.owner, "queued", json.dumps(record)))
    conn.commit()
    conn.close()

    async def go():
        store = SqliteJobStore(tmp_path / "jobs", lease_s=0.1)
        try:
            assert (await store.claim("w1")).id == old.id
            assert await store.finish(old.id, "w1", JobStatus.SUCCEEDED, result={})
            assert (await store.get(old.id)).webhook_state == WEBHOOK_PENDING
            await asyncio.sleep(0.15)
            assert await store.due_webhooks() == [old.id]
        finally:
            await store.close()

    asyncio.run(go())


def test_release_hands_a_job_back_at_once(store):
    if not hasattr(store, "release"):
        pytest.skip("this store has no release()")
    a = job()
    store.run(store.create(a, None))
    store.run(store.claim("w1"))
    assert store.run(store.release(a.id, "w2")) is False
    assert store.run(store.release(a.id, "w1")) is True
    assert store.run(store.claim("w2")).attempts == 2


# --- SQLite only: processes sharing one jobs dir --------------------------------------------------------
def _claim_all(jobs_dir: str, worker: str, out) -> None:
    async def main():
        s = SqliteJobStore(jobs_dir)
        got = []
        while (j := await s.claim(worker)) is not None:
            got.append(j.id)
        await s.close()
        return got

    out.put(asyncio.run(main()))


def test_sqlite_processes_never_claim_the_same_job(tmp_path):
    jobs_dir = tmp_path / "jobs"

    async def fill():
        s = SqliteJobStore(jobs_dir)
        ids = []
        for _ in range(60):
            j = job()
            await s.create(j, None)
            ids.append(j.id)
        await s.close()
        return ids

    ids = asyncio.run(fill())
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_claim_all, args=(str(jobs_dir), f"w{i}", out)) for i in range(3)]
    for p in procs:
        p.start()
    claimed = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(10)
    flat = [i for got in claimed for i in got]
    assert sorted(flat) == sorted(ids)  # every job once, none twice


def test_sqlite_requeues_a_dead_local_worker_without_waiting(tmp_path):
    """A worker of this machine killed with -9 is seen dead at once (its pid is gone)."""
    import socket
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead_id = f"{socket.gethostname()}:{dead.stdout.strip()}:deadbeef"

    async def main():
        s = SqliteJobStore(tmp_path / "jobs", lease_s=300)
        a, b = job(), job()
        await s.create(a, None)
        await s.create(b, None)
        await s.claim(dead_id)
        await s.claim(f"{socket.gethostname()}:1:alive")  # pid 1 lives: its 300 s lease is respected
        moved = await s.requeue_stale()
        states = [(await s.get(x.id)).status for x in (a, b)]
        await s.close()
        return moved, states

    moved, states = asyncio.run(main())
    assert moved == 1 and states == [JobStatus.QUEUED, JobStatus.RUNNING]


# --- cutting audio into pieces ----------------------------------------------------------------------------
def test_pieces_are_cut_in_the_widest_silence_within_bounds():
    # speech every 10 s with 1 s gaps, and one 3 s gap at 75-78 s
    spans = [(t, t + 9.0) for t in range(0, 70, 10)] + [(70.0, 75.0), (78.0, 88.0)]
    spans += [(t, t + 9.0) for t in range(90, 300, 10)]
    pieces = plan_pieces(spans, 300.0)
    assert pieces[0] == (0.0, 76.5)  # the 3 s gap wins over the 1 s ones nearer 60 s
    assert pieces[-1][1] == 300.0
    assert all(b > a for a, b in pieces) and all(p[1] == q[0] for p, q in zip(pieces, pieces[1:]))
    assert all(30.0 <= b - a <= 120.0 for a, b in pieces)


def test_pieces_never_cut_speech_and_short_audio_is_one_piece():
    assert plan_pieces([(0.5, 20.0)], 25.0) == [(0.0, 25.0)]
    # 200 s of speech without a pause: no cut at all (cutting would split words)
    assert plan_pieces([(0.0, 200.0)], 200.0) == [(0.0, 200.0)]
    # a cut that would leave a tail shorter than the minimum is not made: the tail joins the last piece
    spans = [(0.0, 99.0), (101.0, 229.0), (231.0, 250.0)]
    assert plan_pieces(spans, 250.0) == [(0.0, 100.0), (100.0, 250.0)]


def test_quiet_spans_find_the_pauses_in_noise_and_ignore_short_dips():
    import numpy as np

    rate = 16000
    rng = np.random.default_rng(0)
    t = np.arange(rate * 40) / rate
    loud = np.zeros_like(t, dtype=np.float32)
    for start, end in ((1.0, 9.0), (10.5, 20.0), (23.0, 39.0)):  # "speech" with pauses of 1.5 s and 3 s
        mask = (t >= start) & (t < end)
        loud[mask] = 0.3 * np.sin(2 * np.pi * 220 * t[mask])
    loud[(t >= 15.0) & (t < 15.15)] = 0.0  # a 150 ms dip inside speech is not a pause
    audio = (loud + rng.normal(0, 0.003, len(t))).astype(np.float32)  # room noise everywhere
    spans = quiet_spans(audio)
    assert [(round(a), round(b)) for a, b in spans] == [(1, 9), (10, 20), (23, 39)], spans
    assert abs(spans[1][0] - 10.5) <= 0.1 and abs(spans[1][1] - 20.0) <= 0.1
    # constant noise has no pauses: nothing to cut at
    assert len(quiet_spans(rng.normal(0, 0.1, rate * 10).astype(np.float32))) == 1


def test_a_job_that_keeps_losing_its_workers_is_given_up(tmp_path):
    """A job claimed MAX_ATTEMPTS times without ending (each worker died on it) fails instead of taking
    worker after worker down."""
    from types import SimpleNamespace

    from whisper_stt.config import Settings
    from whisper_stt.jobs.runner import MAX_ATTEMPTS, JobRunner

    async def main():
        store = SqliteJobStore(tmp_path / "jobs")
        a = job()
        await store.create(a, None)
        for i in range(MAX_ATTEMPTS):
            await store.claim(f"w{i}")
            await store.release(a.id, f"w{i}")
        engine = SimpleNamespace(device="cpu")  # never used: the job is refused before any work
        runner = JobRunner(store, engine, Settings(jobs_dir=tmp_path / "jobs"), worker_id="last")
        await runner.start()
        for _ in range(100):
            got = await store.get(a.id)
            if got.status.ended:
                break
            await asyncio.sleep(0.05)
        await runner.stop()
        await store.close()
        return got

    got = asyncio.run(main())
    assert got.status is JobStatus.FAILED and got.attempts == MAX_ATTEMPTS + 1, got
    assert f"{MAX_ATTEMPTS} attempts" in got.error


def test_job_paths_come_only_from_whole_job_ids(tmp_path):
    from whisper_stt.jobs.files import job_dir, upload_path

    good = "job_" + "0123456789abcdef" * 2
    assert job_dir(tmp_path, good) == tmp_path / good
    assert upload_path(tmp_path, f"{good}/upload") == tmp_path / good / "upload"
    for bad in (good + "\n", "\n" + good, good + "/..", "../" + good, good.upper(), good[:-1], "", None):
        with pytest.raises(ValueError):
            job_dir(tmp_path, bad)
    with pytest.raises(ValueError):
        upload_path(tmp_path, f"{good}\n/upload")
