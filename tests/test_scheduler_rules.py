"""The stream lane's scheduling rules with several workers, on a scripted batch function (no model)."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np

from whisper_stt.scheduler import StreamScheduler


class Script:
    """A batch function that records what each call got and holds calls whose label is in ``hold``."""

    def __init__(self, hold=()) -> None:
        self.hold = set(hold)
        self.release = threading.Event()
        self.calls: list[tuple[str, list[str]]] = []  # (thread name, labels) in start order
        self.inside = 0
        self.most_inside = 0
        self._lock = threading.Lock()

    def __call__(self, items, beam_size):
        labels = [str(audio.label) for audio, _ in items]
        with self._lock:
            self.calls.append((threading.current_thread().name, labels))
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
        try:
            if self.hold & set(labels):
                assert self.release.wait(10)
            return [f"text of {label}" for label in labels]
        finally:
            with self._lock:
                self.inside -= 1


class Clip(np.ndarray):
    """One second of silence that carries a label (the batch function sees only audio)."""


def clip(label: str, seconds: float = 1.0) -> Clip:
    a = np.zeros(int(seconds * 16000), dtype=np.float32).view(Clip)
    a.label = label
    return a


def wait_until(cond, timeout=5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.005)
    return False


async def hold_both_workers(lane: StreamScheduler, script: Script) -> list:
    """Two finals, one per worker, each held by ``script`` (labels f-hold0, f-hold1) until released."""
    held = []
    for k in range(2):
        held.append(asyncio.ensure_future(lane.final(f"h{k}", clip(f"f-hold{k}"), "en", 5)))
        assert await asyncio.to_thread(wait_until, lambda: script.inside == k + 1)
    return held


def test_a_final_never_waits_behind_a_refresh_with_two_workers():
    script = Script(hold={"p-a"})
    lane = StreamScheduler(script, max_batch=8, workers=2)

    async def scenario():
        assert await lane.partial("b", clip("p-b1", 1.0), "en") == "text of p-b1"  # b's text is on screen
        first = asyncio.ensure_future(lane.partial("a", clip("p-a"), "en"))  # runs, held
        assert await asyncio.to_thread(wait_until, lambda: script.inside == 1)
        # The other worker is free, but it is the last one: it must not start a refresh ...
        queued = asyncio.ensure_future(lane.partial("b", clip("p-b2", 2.0), "en"))
        await asyncio.sleep(0.2)
        assert [labels for _, labels in script.calls] == [["p-b1"], ["p-a"]]
        assert lane.pending_partials == 1
        # ... so a final that arrives now starts at once, beside the held partial batch.
        final = await asyncio.wait_for(lane.final("c", clip("f-c"), "en", 5), 5)
        assert final == "text of f-c" and script.inside == 1
        # A new utterance's first preview may take the last worker too (a small batch; first words quick).
        new = await asyncio.wait_for(lane.partial("d", clip("p-d"), "en"), 5)
        assert new == "text of p-d" and script.inside == 1 and lane.pending_partials == 1
        script.release.set()
        return await asyncio.wait_for(asyncio.gather(first, queued), 5)

    assert asyncio.run(scenario()) == ["text of p-a", "text of p-b2"]
    assert [labels for _, labels in script.calls] == [["p-b1"], ["p-a"], ["f-c"], ["p-d"], ["p-b2"]]
    assert lane.running == 0
    assert lane.jobs_done == {"final": 1, "partial": 4} and lane.snapshot()["workers"] == 2
    lane.close()


def test_finals_run_on_every_worker_at_once():
    script = Script(hold={"f-a"})
    lane = StreamScheduler(script, max_batch=1, workers=2)

    async def scenario():
        held = asyncio.ensure_future(lane.final("a", clip("f-a"), "en", 5))
        assert await asyncio.to_thread(wait_until, lambda: script.inside == 1)
        other = await asyncio.wait_for(lane.final("b", clip("f-b"), "en", 5), 5)  # the second worker
        assert script.most_inside == 2
        script.release.set()
        return other, await asyncio.wait_for(held, 5)

    assert asyncio.run(scenario()) == ("text of f-b", "text of f-a")
    assert {name for name, _ in script.calls} == {"stream-lane-0", "stream-lane-1"}
    lane.close()


def test_one_worker_keeps_the_old_rule_partials_run_when_nothing_else_waits():
    script = Script()
    lane = StreamScheduler(script, max_batch=8)  # workers=1: the partial rule must not starve previews

    async def scenario():
        return await asyncio.wait_for(lane.partial("a", clip("p-a"), "en"), 5)

    assert asyncio.run(scenario()) == "text of p-a"
    assert [name for name, _ in script.calls] == ["stream-lane"]
    lane.close()


def test_many_sessions_on_two_workers_every_caller_answered_counts_add_up():
    script = Script()
    lane = StreamScheduler(script, max_batch=4, workers=2)

    async def session(k: int):
        partials = [asyncio.ensure_future(lane.partial(k, clip(f"p{k}-{i}"), "en")) for i in range(3)]
        final = await lane.final(k, clip(f"f{k}"), "en", 5)
        return final, await asyncio.gather(*partials)

    async def scenario():
        return await asyncio.wait_for(asyncio.gather(*(session(k) for k in range(20))), 20)

    out = asyncio.run(scenario())
    for k, (final, partials) in enumerate(out):
        assert final == f"text of f{k}"
        # a partial is either computed (its own text) or superseded / dropped by the final (None)
        assert all(p in (None, f"text of p{k}-{i}") for i, p in enumerate(partials))
    done = lane.jobs_done
    assert done["final"] == 20
    assert done["partial"] + lane.superseded == 60
    assert lane.running == 0 and lane.pending_finals == 0 and lane.pending_partials == 0
    assert script.most_inside <= 2
    lane.close()


def test_a_first_preview_goes_ahead_of_other_sessions_refreshes():
    script = Script(hold={"p-h"})
    lane = StreamScheduler(script, max_batch=1)

    async def scenario():
        assert await lane.partial("a", clip("a1", 1.0), "en") == "text of a1"  # a's utterance is on screen
        held = asyncio.ensure_future(lane.partial("h", clip("p-h"), "en"))
        assert await asyncio.to_thread(wait_until, lambda: script.inside == 1)
        refresh = asyncio.ensure_future(lane.partial("a", clip("a2", 2.0), "en"))  # a longer preview of a
        await asyncio.sleep(0.05)
        first_b = asyncio.ensure_future(lane.partial("b", clip("b1", 1.0), "en"))  # b's new utterance
        await asyncio.sleep(0.05)
        script.release.set()
        return await asyncio.wait_for(asyncio.gather(held, refresh, first_b), 5)

    assert asyncio.run(scenario()) == ["text of p-h", "text of a2", "text of b1"]
    # b's first words before a's refresh, although a asked first
    assert [labels for _, labels in script.calls] == [["a1"], ["p-h"], ["b1"], ["a2"]]
    lane.close()


def test_what_counts_as_a_first_preview():
    script = Script(hold={"hold"})
    lane = StreamScheduler(script, max_batch=8)

    async def scenario():
        seen = {}
        await lane.partial("a", clip("a1", 1.0), "en")
        await lane.partial("a", clip("a2", 2.0), "en")
        await lane.partial("s", clip("s1", 3.0), "en")
        await lane.final("f", clip("f-f", 3.0), "en", 5)
        await lane.partial("f", clip("f1", 1.0), "en")
        await lane.final("f", clip("f-f2", 3.0), "en", 5)
        held = asyncio.ensure_future(lane.partial("h", clip("hold"), "en"))
        assert await asyncio.to_thread(wait_until, lambda: script.inside == 1)
        pending = [
            asyncio.ensure_future(lane.partial("a", clip("a3", 3.0), "en")),  # longer: same utterance
            asyncio.ensure_future(lane.partial("n", clip("n1", 2.0), "en")),  # never seen
            asyncio.ensure_future(lane.partial("s", clip("s2", 1.5), "en")),  # shorter: a new utterance
            asyncio.ensure_future(lane.partial("f", clip("f2", 4.0), "en")),  # longer, but after a final
        ]
        await asyncio.sleep(0.05)
        seen.update({key: job.first for key, job in lane._partials.items()})
        pending.append(asyncio.ensure_future(lane.partial("n", clip("n2", 3.0), "en")))  # supersedes n1
        await asyncio.sleep(0.05)
        seen["n superseded"] = lane._partials["n"].first
        script.release.set()
        await asyncio.wait_for(asyncio.gather(held, *pending), 5)
        return seen

    assert asyncio.run(scenario()) == {"a": False, "n": True, "s": True, "f": True, "n superseded": True}
    # the batch after the held one: the three first previews, then the refresh
    assert [labels for _, labels in script.calls][-1] == ["n2", "s2", "f2", "a3"]
    lane.close()


def test_a_batch_of_finals_is_one_padding_bucket_and_other_buckets_go_to_the_free_worker():
    script = Script(hold={"f-hold"})
    bucket = lambda audio: round(len(audio) / 16000)  # noqa: E731 - the clip's length stands in for its bucket
    lane = StreamScheduler(script, max_batch=8, workers=2, group_of=bucket)

    async def scenario():
        held = asyncio.ensure_future(lane.final("h", clip("f-hold", 9.0), "en", 5))  # worker 0 busy
        assert await asyncio.to_thread(wait_until, lambda: script.inside == 1)
        # Queue while worker 1 is busy too: hold it with a second held batch of another bucket.
        script.hold.add("f-hold2")
        held2 = asyncio.ensure_future(lane.final("h2", clip("f-hold2", 7.0), "en", 5))
        assert await asyncio.to_thread(wait_until, lambda: script.inside == 2)
        jobs = [asyncio.ensure_future(lane.final(k, clip(f"f-{k}", s), "en", 5))
                for k, s in (("a", 3.0), ("b", 5.0), ("c", 3.0), ("d", 5.0), ("e", 3.0))]
        await asyncio.sleep(0.1)
        assert lane.pending_finals == 5
        script.release.set()
        return await asyncio.wait_for(asyncio.gather(held, held2, *jobs), 5)

    out = asyncio.run(scenario())
    assert out == ["text of f-hold", "text of f-hold2"] + [f"text of f-{k}" for k in "abcde"]
    batches = [labels for _, labels in script.calls][2:]
    # the oldest final's bucket (3 s: a, c, e) is one batch, in age order; the 5 s ones (b, d) another
    assert sorted(batches) == [["f-a", "f-c", "f-e"], ["f-b", "f-d"]]
    lane.close()


def test_without_group_of_finals_are_taken_in_order_whatever_their_length():
    script = Script(hold={"f-hold"})
    lane = StreamScheduler(script, max_batch=8, workers=1)

    async def scenario():
        held = asyncio.ensure_future(lane.final("h", clip("f-hold"), "en", 5))
        assert await asyncio.to_thread(wait_until, lambda: script.inside == 1)
        jobs = [asyncio.ensure_future(lane.final(k, clip(f"f-{k}", s), "en", 5))
                for k, s in (("a", 3.0), ("b", 5.0), ("c", 3.0))]
        await asyncio.sleep(0.1)
        script.release.set()
        return await asyncio.wait_for(asyncio.gather(held, *jobs), 5)

    asyncio.run(scenario())
    assert [labels for _, labels in script.calls] == [["f-hold"], ["f-a", "f-b", "f-c"]]
    lane.close()


def test_first_previews_ride_ahead_of_the_next_batch_of_finals():
    script = Script(hold={"f-hold0", "f-hold1"})
    lane = StreamScheduler(script, max_batch=8, workers=2)

    async def scenario():
        held = await hold_both_workers(lane, script)  # both workers busy, one held final each
        first = asyncio.ensure_future(lane.partial("a", clip("p-a"), "en"))  # a new utterance's first words
        final = asyncio.ensure_future(lane.final("c", clip("f-c"), "en", 5))  # then another final
        await asyncio.sleep(0.05)
        assert lane.pending_finals == 1 and lane.pending_partials == 1
        script.release.set()
        return await asyncio.wait_for(asyncio.gather(*held, first, final), 5)

    assert asyncio.run(scenario())[2:] == ["text of p-a", "text of f-c"]
    calls = script.calls[2:]
    # the worker that took the final ran the waiting first preview just before it, on the same thread
    assert [labels for _, labels in calls] == [["p-a"], ["f-c"]]
    assert calls[0][0] == calls[1][0]
    assert lane.jobs_done == {"final": 3, "partial": 1} and lane.running == 0
    lane.close()


def test_past_capacity_finals_that_waited_go_first_and_first_previews_do_not_ride():
    import whisper_stt.scheduler as scheduler

    script = Script(hold={"f-hold0", "f-hold1"})
    lane = StreamScheduler(script, max_batch=8, workers=2)

    async def scenario():
        held = await hold_both_workers(lane, script)
        final = asyncio.ensure_future(lane.final("c", clip("f-c"), "en", 5))
        first = asyncio.ensure_future(lane.partial("a", clip("p-a"), "en"))
        await asyncio.sleep(scheduler.RIDE_SLACK_S + 0.1)  # the final has now waited past its slack
        script.release.set()
        return await asyncio.wait_for(asyncio.gather(*held, final, first), 5)

    assert asyncio.run(scenario())[2:] == ["text of f-c", "text of p-a"]
    by_worker: dict = {}
    for name, labels in script.calls:
        by_worker.setdefault(name, []).append(labels)
    final_worker = next(calls for calls in by_worker.values() if ["f-c"] in calls)
    # the late final was not held back by the preview: nothing ran on its worker between the held batch
    # and the final
    assert final_worker[final_worker.index(["f-c"]) - 1][0].startswith("f-hold")
    lane.close()


def test_refreshes_pause_while_the_lane_is_behind_on_finals():
    import whisper_stt.scheduler as scheduler

    script = Script(hold={"f-hold0", "f-hold1"})
    lane = StreamScheduler(script, max_batch=8, workers=2)
    started: dict = {}

    async def scenario():
        assert await lane.partial("b", clip("p-b1"), "en") == "text of p-b1"  # b's text is on screen
        held = await hold_both_workers(lane, script)
        late = asyncio.ensure_future(lane.final("c", clip("f-c"), "en", 5))
        refresh = asyncio.ensure_future(lane.partial("b", clip("p-b2", 2.0), "en"))  # a refresh of b
        await asyncio.sleep(scheduler.RIDE_SLACK_S + 0.1)  # the final waits past its slack: the lane is behind
        released = time.monotonic()
        script.release.set()
        assert await asyncio.wait_for(late, 5) == "text of f-c"
        await asyncio.wait_for(asyncio.gather(*held), 5)
        # a worker is free, but the refresh waits for the pause to end ...
        await asyncio.sleep(scheduler.REFRESH_HOLDOFF_S / 2)
        started["refresh_before_pause_end"] = ["p-b2"] in [labels for _, labels in script.calls]
        # ... and then runs without any new submission to wake the lane
        assert await asyncio.wait_for(refresh, 5) == "text of p-b2"
        started["refresh_after_s"] = time.monotonic() - released

    asyncio.run(scenario())
    assert started["refresh_before_pause_end"] is False
    assert started["refresh_after_s"] >= scheduler.REFRESH_HOLDOFF_S * 0.9
    lane.close()
