"""Build and run the server's container image with podman, without a registry.

Used by tests/test_container.py and bench/bench_container.py. The base image is made from Debian's own
packages (mmdebstrap -> podman import) instead of being pulled, and both images are kept in podman's
storage between runs, tagged by a hash of what they are made from, so only the first run pays for them.

podman runs here with settings that work on small VMs (cgroupfs, no default ulimits, runc when present)
from a containers.conf written for the purpose, unless CONTAINERS_CONF already names one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

REPO = Path(__file__).resolve().parent.parent

BASE_SUITE = "bookworm"
BASE_MIRROR = os.environ.get("WHISPER_TEST_DEBIAN_MIRROR", "http://deb.debian.org/debian")
# The equivalent of python:3.11-slim for the Dockerfile: Python with venv, and useradd.
BASE_PACKAGES = ("python3", "python3-venv", "passwd")
BASE_EXCLUDES = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*", "/usr/share/locale/*")
BASE_REPO = "localhost/whisper-stt-testbase"
# Stand-ins for the official redis and nginx images in deploy/compose.yaml (no registry here).
SERVICES_PACKAGES = ("redis-server", "nginx")
SERVICES_REPO = "localhost/whisper-stt-testservices"
IMAGE_REPO = "localhost/whisper-stt-test"
IMAGE_LABEL = "org.opencontainers.image.title=whisper-stt"
STALE_AFTER = "6h"  # cached images older than this, other than the current one, are removed

# Everything the Dockerfile copies, plus the files that steer the build.
BUILD_INPUTS = ("Dockerfile", ".dockerignore", "requirements.txt", "whisper_server.py", "generate_ssl_cert.py",
                "whisper_stt", "deploy/healthcheck.py", "deploy/bundle_model.py")

CONTAINERS_CONF = """\
[containers]
default_ulimits = []

[engine]
cgroup_manager = "cgroupfs"
{runtime}
"""

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def missing_tools() -> list[str]:
    return [tool for tool in ("podman", "mmdebstrap") if shutil.which(tool) is None]


class Podman:
    """podman with this module's containers.conf; every call is a subprocess with a time limit."""

    def __init__(self, conf_dir: Path) -> None:
        self.env = dict(os.environ)
        if "CONTAINERS_CONF" not in self.env:
            conf_dir.mkdir(parents=True, exist_ok=True)
            conf = conf_dir / "containers.conf"
            # crun fails on some VMs' cgroups; Debian's runc works there and everywhere else.
            runtime = 'runtime = "runc"' if shutil.which("runc") else ""
            conf.write_text(CONTAINERS_CONF.format(runtime=runtime))
            self.env["CONTAINERS_CONF"] = str(conf)

    def run(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(["podman", *args], env=self.env, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(f"podman {' '.join(args)} failed ({proc.returncode}):\n"
                               f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return proc

    def problem(self) -> Optional[str]:
        """Why podman cannot run containers here, or None."""
        try:
            info = self.run("info", "--format", "{{.Host.OCIRuntime.Name}}", timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"podman info failed: {exc}"
        if info.returncode != 0:
            return f"podman info failed: {info.stderr.strip()[-500:]}"
        return None

    def image_exists(self, ref: str) -> bool:
        return self.run("image", "exists", ref, check=False).returncode == 0

    def inspect_image(self, ref: str) -> dict:
        return json.loads(self.run("image", "inspect", ref).stdout)[0]

    def remove_other_tags(self, repo: str, keep: str) -> None:
        """Drop older cached images of ``repo`` so the cache does not grow with every change.

        Only images older than a few hours: another test run in the same checkout (a file changed
        between its build and ours) may still be about to use its image. Code-change rebuilds share the
        big dependency layer, so each extra tag costs little disk.
        """
        listing = self.run("images", "--filter", f"reference={repo}", "--filter", f"until={STALE_AFTER}",
                           "--format", "{{.Repository}}:{{.Tag}}", check=False).stdout
        old = [ref for ref in listing.split() if ref != keep and ref.startswith(repo + ":")]
        if old:
            self.run("rmi", *old, check=False, timeout=300)  # no --force: never an image in use
        # dangling layers of this project's builds only (the Dockerfile labels them), not the host's,
        # and not a build in progress
        self.run("image", "prune", "--force", "--filter", f"label={IMAGE_LABEL}",
                 "--filter", f"until={STALE_AFTER}", check=False, timeout=300)


def _hash_paths(paths: list[Path], root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:16]


def build_inputs_hash(root: Path = REPO) -> str:
    files: list[Path] = []
    for name in BUILD_INPUTS:
        path = root / name
        if path.is_dir():
            files += [p for p in path.rglob("*")
                      if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"]
        elif path.is_file():
            files.append(path)
    return _hash_paths(files, root)


def debian_recipe(packages: tuple[str, ...]) -> list[str]:
    args = ["--variant=minbase", "--include=" + ",".join(packages)]
    args += [f"--dpkgopt=path-exclude={pattern}" for pattern in BASE_EXCLUDES]
    return args + [BASE_SUITE]


def ensure_debian_image(podman: Podman, repo: str, packages: tuple[str, ...], log: Log = _quiet,
                        rebuild: bool = False) -> tuple[str, Optional[float]]:
    """A Debian image with ``packages``, made by mmdebstrap. Returns (tag, seconds taken, None if cached)."""
    recipe = debian_recipe(packages)
    tag = f"{repo}:{BASE_SUITE}-{hashlib.sha256(' '.join(recipe).encode()).hexdigest()[:12]}"
    previous = podman.inspect_image(tag)["Id"] if podman.image_exists(tag) else None
    if previous and not rebuild:
        return tag, None
    log(f"making image {tag} with mmdebstrap from {BASE_MIRROR} ...")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="whisper-stt-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs.tar"
        # stdin closed and the mirror given: without a mirror, mmdebstrap reads sources from a non-tty stdin.
        proc = subprocess.run(["mmdebstrap", "--quiet", *recipe, str(rootfs), BASE_MIRROR],
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=1200)
        if proc.returncode != 0:
            raise RuntimeError(f"mmdebstrap failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        podman.run("import", "--change", 'CMD ["/bin/bash"]', str(rootfs), tag, timeout=600)
    podman.remove_other_tags(repo, tag)
    if previous and previous != podman.inspect_image(tag)["Id"]:
        podman.run("rmi", previous, check=False)  # the import moved the tag; fails harmlessly while in use
    return tag, time.monotonic() - started


def ensure_base_image(podman: Podman, log: Log = _quiet,
                      rebuild: bool = False) -> tuple[str, Optional[float]]:
    """The Dockerfile's BASE: Debian with Python, made by mmdebstrap."""
    return ensure_debian_image(podman, BASE_REPO, BASE_PACKAGES, log, rebuild)


def ensure_services_image(podman: Podman, log: Log = _quiet) -> str:
    """Redis and nginx from Debian in one image, for the compose file's redis and nginx services."""
    return ensure_debian_image(podman, SERVICES_REPO, SERVICES_PACKAGES, log)[0]


def _host_ca_bundle() -> Optional[Path]:
    for candidate in (os.environ.get("PIP_CERT"), os.environ.get("SSL_CERT_FILE"),
                      "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def build_command(base: str, tag: str, extra: tuple[str, ...] = ()) -> list[str]:
    # docker format: OCI image configs have no HEALTHCHECK; --network host: pip reaches PyPI the way the
    # host does (proxies, DNS); the host's CA bundle covers TLS-intercepting proxies.
    args = ["build", "--format", "docker", "--network", "host", "--build-arg", f"BASE={base}", "-t", tag]
    ca = _host_ca_bundle()
    if ca is not None:
        args += ["-v", f"{ca}:/run/host-ca.crt:ro", "--build-arg", "PIP_CERT=/run/host-ca.crt"]
    if os.environ.get("PIP_INDEX_URL"):
        args += ["--build-arg", f"PIP_INDEX_URL={os.environ['PIP_INDEX_URL']}"]
    return args + list(extra) + ["-f", str(REPO / "Dockerfile"), str(REPO)]


def ensure_app_image(podman: Podman, base: str, log: Log = _quiet,
                     rebuild: bool = False) -> tuple[str, Optional[float]]:
    """The server image built from the working tree. Returns (tag, seconds it took or None if cached)."""
    base_id = podman.inspect_image(base)["Id"][:12]
    tag = f"{IMAGE_REPO}:{build_inputs_hash()}-{base_id}"
    if podman.image_exists(tag) and not rebuild:
        return tag, None
    log(f"building {tag} ...")
    started = time.monotonic()
    podman.run(*build_command(base, tag), timeout=1800)
    podman.remove_other_tags(IMAGE_REPO, tag)
    return tag, time.monotonic() - started


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
