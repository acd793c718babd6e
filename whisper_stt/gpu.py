"""Hardware facts for /health: GPU via NVML (nvidia-ml-py; absent or broken NVML means no GPU info), CPU."""

from __future__ import annotations

from typing import Optional


def gpu_info(index: int = 0) -> Optional[dict]:
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # no driver / no GPU: NVML raises its own error types
        return None
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        name = pynvml.nvmlDeviceGetName(handle)
        mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
        mib = 1024 * 1024
        info = {
            "name": name.decode() if isinstance(name, bytes) else name,
            "memory_total_mb": round(mem.total / mib),
            "memory_used_mb": round(mem.used / mib),
            "memory_free_mb": round(mem.free / mib),
        }
        try:
            info["utilization_percent"] = pynvml.nvmlDeviceGetUtilizationRates(handle).gpu
        except Exception:
            pass
        return info
    except Exception:
        return None
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def cpu_info(cpu_threads: int = 0) -> dict:
    """The plain report /health gives when there is no GPU."""
    import os

    cores = os.cpu_count() or 1
    info = {"cores": cores, "inference_threads": cpu_threads or cores}
    try:
        info["load_average_1m"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    return info
