"""Container image figures with podman: image size, build times, start-up time to ready, stop time.

    .venv/bin/python bench/bench_container.py            # warm: cached base and layers
    .venv/bin/python bench/bench_container.py --cold     # base from mmdebstrap again, build with --no-cache
    .venv/bin/python bench/bench_container.py --runs 5

Uses the same registry-free base image (mmdebstrap + podman import) and image cache as
tests/test_container.py. "Ready" is the first 200 from GET /health through the published port, timed
from the start of `podman run`; "stop" is `podman stop` on an idle server (SIGTERM, drain, exit).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.container_support import (  # noqa: E402
    IMAGE_REPO, Podman, build_command, build_inputs_hash, ensure_app_image, ensure_base_image, free_port,
    missing_tools,
)


def time_to_ready(podman: Podman, image: str) -> tuple[float, float]:
    name = f"whisper-stt-bench-{uuid.uuid4().hex[:8]}"
    port = free_port()
    started = time.monotonic()
    podman.run("run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8765", "--health-interval", "disable",
               image)
    try:
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() - started > 300:
                raise RuntimeError("not ready after 300 s:\n" + podman.run("logs", name, check=False).stderr)
            time.sleep(0.1)
        ready = time.monotonic() - started
        stop_started = time.monotonic()
        podman.run("stop", "--time", "60", name)
        return ready, time.monotonic() - stop_started
    finally:
        podman.run("rm", "--force", "--volumes", "--time", "0", name, check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cold", action="store_true", help="rebuild the base image and build without cache")
    parser.add_argument("--runs", type=int, default=3, help="container starts to time (default 3)")
    args = parser.parse_args()

    if missing_tools():
        print(f"needs {', '.join(missing_tools())} (apt-get install podman runc mmdebstrap)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="whisper-stt-bench-") as conf_dir:
        return bench(Podman(Path(conf_dir)), args.cold, args.runs)


def bench(podman: Podman, cold: bool, runs: int) -> int:
    problem = podman.problem()
    if problem:
        print(problem, file=sys.stderr)
        return 2

    base, base_s = ensure_base_image(podman, log=print, rebuild=cold)
    if cold:  # every layer again, pip downloads included
        image = f"{IMAGE_REPO}:{build_inputs_hash()}-{podman.inspect_image(base)['Id'][:12]}"
        started = time.monotonic()
        podman.run(*build_command(base, image, ("--no-cache",)), timeout=1800)
        build_s = time.monotonic() - started
    else:
        image, build_s = ensure_app_image(podman, base, log=print)
    started = time.monotonic()
    podman.run(*build_command(base, image), timeout=1800)  # every layer cached
    warm_s = time.monotonic() - started

    size = podman.inspect_image(image)["Size"]
    base_size = podman.inspect_image(base)["Size"]
    ready, stop = zip(*(time_to_ready(podman, image) for _ in range(runs)))

    print(f"image            {image}")
    print(f"image size       {size / 1e6:.0f} MB (base {base_size / 1e6:.0f} MB)")
    print(f"base image       {'%.0f s (mmdebstrap + import)' % base_s if base_s else 'cached'}")
    print(f"build            {'%.0f s' % build_s if build_s else 'cached'}"
          f"{' (no layer cache)' if cold else ' (layer cache: pip layer reused unless requirements changed)' if build_s else ''}")
    print(f"rebuild, cached  {warm_s:.1f} s")
    print(f"start to ready   median {statistics.median(ready):.1f} s, min {min(ready):.1f} s, "
          f"max {max(ready):.1f} s over {len(ready)} starts")
    print(f"stop (SIGTERM)   median {statistics.median(stop):.1f} s (idle server)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
