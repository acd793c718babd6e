"""Where the model runs: device and compute type, and how many model calls run at once there."""

from __future__ import annotations

from dataclasses import dataclass

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
