"""GPU lanes: where the models go (one model and one stream lane per GPU) and how work is spread.

:func:`plan_lanes` turns the settings into a :class:`LanePlan`; :class:`StreamLanes` puts several stream
lanes behind the one-lane interface of :class:`~whisper_stt.scheduler.StreamScheduler`.

Spreading rule for streams: a session is placed on its first job and stays there until it is forgotten,
so a lane's per-session state (a pending partial that a newer one supersedes, the order of its finals)
keeps working. A new session goes to the lane with the fewest sessions; ties go to the lane with less
work waiting or running, then to the lower number. Sessions at real-time pace each bring about the same
work, so counting sessions balances the lanes without reacting to short bursts. File calls go to the
model with the fewest file calls running (ties: fewer stream sessions, then the lower number).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Hashable, Optional, Sequence

from ..models import ModelError
from .device import DeviceChoice, default_concurrency


class DeviceIndexError(ModelError, ValueError):
    """device_index names a GPU that is not there (reported at start-up in one line)."""


def parse_device_index(value) -> tuple[int, ...]:
    """``0`` / ``"0,1"`` / ``[0, 1]`` -> ``(0, 1)``: GPU numbers, each non-negative and given once."""
    if isinstance(value, bool):
        raise ValueError("device-index: expected GPU numbers such as 0 or 0,1")
    if isinstance(value, int):
        items = [value]
    elif isinstance(value, str):
        parts = [p.strip() for p in value.split(",")]
        if not value.strip() or any(not p for p in parts):
            raise ValueError(f"device-index: expected GPU numbers such as 0 or 0,1, got {value!r}")
        try:
            items = [int(p) for p in parts]
        except ValueError:
            raise ValueError(f"device-index: expected GPU numbers such as 0 or 0,1, got {value!r}") from None
    else:
        items = list(value)
        if not items or not all(isinstance(i, int) and not isinstance(i, bool) for i in items):
            raise ValueError(f"device-index: expected GPU numbers such as 0 or 0,1, got {value!r}")
    if any(i < 0 for i in items):
        raise ValueError(f"device-index: GPU numbers are 0 or more, got {','.join(map(str, items))}")
    if len(set(items)) != len(items):
        raise ValueError(f"device-index: each GPU may be named once, got {','.join(map(str, items))}")
    return tuple(items)


@dataclass(frozen=True)
class LanePlan:
    """Where the models go: one model and one stream lane per entry of ``device_indexes``.

    Several GPUs get a model each (``WhisperModel(device_index=i)``) rather than one model over the list
    (``device_index=[0, 1]``, which CTranslate2 also supports): with a list, CTranslate2 hands each call
    (encode, detect_language, generate, align) to whichever replica is free, so the short-window
    decoder's encoder output would have to go through host memory between calls (faster-whisper's
    ``encode`` does ``to_cpu`` for that case) and a stream lane could not own a GPU. A model per GPU keeps
    a lane's calls on one device and lets the engine spread sessions and files by load. Memory is the
    same either way: CTranslate2 keeps a full replica per device.
    """

    device: str
    compute_type: str
    device_indexes: tuple[int, ...]
    max_concurrent: int  # file/REST model calls at once, over all lanes
    note: str = ""  # why the asked device indexes were not used, for the start-up log

    @property
    def lanes(self) -> int:
        return len(self.device_indexes)


def plan_lanes(choice: DeviceChoice, device_index, max_concurrent: int, cuda_count: int) -> LanePlan:
    """The lanes for a device choice and the ``device_index`` setting (``cuda_count``: GPUs visible).

    On the CPU there is one lane and the indexes are ignored (noted). On CUDA every index must name a
    visible GPU; ``max_concurrent`` 0 means the default per GPU times the GPUs."""
    indexes = parse_device_index(device_index)
    if choice.device != "cuda":
        note = "" if indexes == (0,) else (
            f"device-index {','.join(map(str, indexes))} ignored: running on the CPU (one lane)")
        return LanePlan(choice.device, choice.compute_type, (0,),
                        max_concurrent or default_concurrency(choice.device), note)
    if cuda_count <= 0:
        raise DeviceIndexError("--device cuda: no usable GPU (CTranslate2 sees none); use --device auto or cpu")
    missing = [i for i in indexes if i >= cuda_count]
    if missing:
        raise DeviceIndexError(
            f"device-index {','.join(map(str, missing))}: {cuda_count} GPU(s) visible "
            f"(numbers 0 to {cuda_count - 1}); check CUDA_VISIBLE_DEVICES")
    return LanePlan(choice.device, choice.compute_type, indexes,
                    max_concurrent or default_concurrency("cuda") * len(indexes))


def cuda_device_count() -> int:
    import ctranslate2

    try:
        return ctranslate2.get_cuda_device_count()
    except Exception:  # a broken CUDA install: as if no GPU
        return 0


def least_loaded(loads: Sequence[tuple]) -> int:
    """The index of the smallest load tuple (ties: the lower index)."""
    return min(range(len(loads)), key=lambda i: (*loads[i], i))


def load_replicas(factory: Callable, path: str, plan: LanePlan, **kwargs) -> list:
    """A model for each GPU of the plan after the first (``factory`` is ``WhisperModel``)."""
    return [factory(path, device=plan.device, device_index=i, compute_type=plan.compute_type, **kwargs)
            for i in plan.device_indexes[1:]]


class StreamLanes:
    """Routes each session's finals and partials to one of several lanes (``StreamScheduler`` objects)."""

    def __init__(self, lanes: Sequence, device_indexes: Optional[Sequence[int]] = None,
                 file_calls: Optional[Callable[[], list]] = None) -> None:
        if not lanes:
            raise ValueError("at least one lane")
        self.lanes = list(lanes)
        self.device_indexes = list(device_indexes) if device_indexes is not None else list(range(len(lanes)))
        self._file_calls = file_calls  # file calls running on each lane's model, for the figures
        self._lock = threading.Lock()
        self._lane_of: dict[Hashable, int] = {}
        self._sessions = [0] * len(self.lanes)

    @property
    def max_batch(self) -> int:
        return self.lanes[0].max_batch

    def lane_for(self, key: Hashable) -> int:
        """The lane of session ``key`` (placed now if new; see the module's spreading rule)."""
        with self._lock:
            lane = self._lane_of.get(key)
            if lane is None:
                lane = least_loaded([(self._sessions[i], _backlog(self.lanes[i])) for i in range(len(self.lanes))])
                self._lane_of[key] = lane
                self._sessions[lane] += 1
            return lane

    async def final(self, key: Hashable, *args, **kwargs):
        return await self.lanes[self.lane_for(key)].final(key, *args, **kwargs)

    async def partial(self, key: Hashable, *args, **kwargs):
        return await self.lanes[self.lane_for(key)].partial(key, *args, **kwargs)

    def forget(self, key: Hashable) -> None:
        with self._lock:
            lane = self._lane_of.pop(key, None)
            if lane is not None:
                self._sessions[lane] -= 1
        if lane is not None:
            self.lanes[lane].forget(key)

    def close(self) -> None:
        for lane in self.lanes:
            lane.close()

    # --- figures: the one-lane keys summed (waits: the worst lane), and each lane's own ----------
    @property
    def pending_finals(self) -> int:
        return sum(lane.pending_finals for lane in self.lanes)

    @property
    def pending_partials(self) -> int:
        return sum(lane.pending_partials for lane in self.lanes)

    def oldest_wait(self) -> float:
        return max(lane.oldest_wait() for lane in self.lanes)

    def sessions(self) -> list[int]:
        with self._lock:
            return list(self._sessions)

    def snapshot(self) -> dict:
        snaps = [lane.snapshot() for lane in self.lanes]
        total: dict = {}
        for snap in snaps:
            for name, value in snap.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and name != "real_time_factor":
                    if name in ("oldest_wait_s", "last_final_wait_s", "last_partial_wait_s"):
                        total[name] = max(total.get(name, 0.0), value)
                    else:
                        total[name] = total.get(name, 0) + value
        busy = sum(getattr(lane, "busy_seconds", 0.0) for lane in self.lanes)
        audio = sum(getattr(lane, "audio_seconds", 0.0) for lane in self.lanes)
        total["real_time_factor"] = round(busy / audio, 4) if audio else None
        sessions = self.sessions()
        files = self._file_calls() if self._file_calls is not None else [None] * len(self.lanes)
        total["lanes"] = [dict(snap, device_index=index, sessions=n, file_calls=f)
                          for snap, index, n, f in zip(snaps, self.device_indexes, sessions, files)]
        return total


def _backlog(lane) -> int:
    return lane.pending_finals + lane.pending_partials + getattr(lane, "running", 0)
