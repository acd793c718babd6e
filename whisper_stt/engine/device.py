"""Where the model runs: device and compute type, and how many model calls run at once there."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..models import ModelError


class NoGPUError(ModelError, ValueError):
    """CUDA was asked for and is not usable (reported at start-up in one line)."""


@dataclass(frozen=True)
class DeviceChoice:
    device: str
    compute_type: str


def choose_device(device: str, compute_type: str) -> DeviceChoice:
    """auto -> cuda when CTranslate2 sees a usable GPU, else cpu; auto compute -> float16 / int8."""
    import ctranslate2

    if device == "auto":
        try:
            device = "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
        except Exception:  # a broken CUDA install must not stop a CPU start
            device = "cpu"
    if compute_type == "auto":
        if device == "cuda":
            try:
                supported = ctranslate2.get_supported_compute_types("cuda")
            except RuntimeError as exc:  # --device cuda without a usable GPU: one line, not a traceback
                raise NoGPUError(f"--device cuda: no usable GPU ({exc}); use --device auto or cpu") from None
            compute_type = "float16" if "float16" in supported else "int8_float32"
        else:
            compute_type = "int8"
    return DeviceChoice(device, compute_type)


def default_concurrency(device: str) -> int:
    # The original allowed 15 at once on an H100. On CPU, parallel calls only split the same cores,
    # so one call at a time using every core gives each request the lowest latency.
    return 15 if device == "cuda" else 1


def default_stream_workers(device: str) -> int:
    """Stream-lane workers (real-time batches at once). On a CPU two: one lane call at a time leaves a
    2-core box half idle while it is in its serial parts (numpy features, small decoder steps; issue 15's
    profile), and a second call fills those gaps. On a GPU one lane: its batches already fill the device."""
    return 1 if device == "cuda" else 2


def cpu_cores() -> int:
    """Cores this process may run on (its affinity mask, e.g. a container's cpuset), at least 1."""
    import os

    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def stream_threads(device: str, cpu_threads: int, stream_cpu_threads: int, lanes: int,
                   cores: Optional[int] = None) -> int:
    """Threads per stream-lane call on a CPU when the lane needs a model copy of its own, else 0.

    CTranslate2 sets threads per call for a whole model. Files want every core for their one call; the
    lane runs ``lanes`` calls at once, and with every core each they oversubscribe the CPU and split
    small-batch matrix products badly (on 2 cores, two 2-thread calls spent 6-17 % more CPU for the same
    work than two 1-thread calls; issue 15). So by default (``stream_cpu_threads`` 0) the lane gets
    ``cores // lanes`` threads per call, on its own copy of the model when that differs from the files'
    setting; an explicit ``stream_cpu_threads`` equal to ``cpu_threads`` (or the cores) shares one copy.
    A GPU lane always shares the model.
    """
    if device != "cpu":
        return 0
    cores = cores or cpu_cores()
    files = cpu_threads or cores
    lane = stream_cpu_threads or max(1, cores // max(1, lanes))
    return 0 if lane == files else lane
