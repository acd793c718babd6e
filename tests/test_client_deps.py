"""The README's first steps: after ``./install.sh`` (requirements.txt only, no dev packages) the client
script ``test_transcribe.py`` must run. The dev venv the suite runs in hides a missing dependency, so the
live test runs the client from a venv made only from requirements.txt.
"""

from __future__ import annotations

import ast
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import pytest

from .conftest import ROOT, free_port
from .speech import wer

SCRIPT = ROOT / "test_transcribe.py"
REQUIREMENTS = ROOT / "requirements.txt"
CACHE_DIR = Path(os.environ.get("WHISPER_STT_TEST_CACHE", Path.home() / ".cache" / "whisper-stt-tests"))
KEY_RE = re.compile(r"Default API key \(X-API-Key\): (sk-[0-9a-f]{48})")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_names(path: Path = REQUIREMENTS) -> set[str]:
    """Distribution names listed in a requirements file (``-r`` includes followed)."""
    names: set[str] = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith(("-r ", "--requirement ")):
            names |= requirement_names(path.parent / line.split(None, 1)[1])
            continue
        if line.startswith("-"):
            continue
        match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", line)
        if match:
            names.add(_canonical(match.group(0)))
    return names


def imported_top_levels(path: Path) -> set[str]:
    """Top-level module names of every import in the file, nested and optional ones included."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def third_party(names: set[str]) -> set[str]:
    local = {p.stem for p in ROOT.glob("*.py")}
    local |= {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}
    return {n for n in names if n not in sys.stdlib_module_names and n not in local and n != "__future__"}


def test_every_client_import_is_provided_by_requirements_txt():
    listed = requirement_names()
    providers = metadata.packages_distributions()
    imports = third_party(imported_top_levels(SCRIPT))
    # The client's own modules: the HTTP client, the WebSocket client and numpy for streaming.
    assert {"httpx", "websockets", "numpy"} <= imports, imports
    missing = {}
    for module in sorted(imports):
        dists = {_canonical(d) for d in providers.get(module, [])}
        assert dists, f"{module} is imported by test_transcribe.py but not installed in the test venv"
        if not dists & listed:
            missing[module] = sorted(dists)
    assert not missing, f"test_transcribe.py imports modules not provided by requirements.txt: {missing}"


def test_requirement_parser_reads_includes_and_comments(tmp_path):
    (tmp_path / "base.txt").write_text("numpy>=1.24  # arrays\nuvicorn[standard]>=0.29\n")
    (tmp_path / "dev.txt").write_text("-r base.txt\n# comment\nPyYAML==6.0\n--find-links /x\n")
    assert requirement_names(tmp_path / "dev.txt") == {"numpy", "uvicorn", "pyyaml"}


def _requirements_venv() -> Path:
    """A venv with exactly requirements.txt installed, cached across runs by the file's hash.

    Built in a temporary directory and renamed into place, under a lock, so an interrupted or
    concurrent build never leaves a half-made venv that a later run would trust.
    """
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()[:16]
    tag = f"py{sys.version_info[0]}{sys.version_info[1]}"
    venv = CACHE_DIR / f"requirements-venv-{tag}-{digest}"
    python = venv / "bin" / "python"
    if python.is_file():
        os.utime(venv)  # its mtime says when it was last used
        return venv
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(CACHE_DIR / f".{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if python.is_file():
            return venv
        building = venv.with_name(venv.name + ".building")
        shutil.rmtree(building, ignore_errors=True)
        # The base interpreter, not this (dev) venv's: the new venv must not see the dev packages.
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", str(building)], check=True, capture_output=True, timeout=300)
        pip = subprocess.run(
            [str(building / "bin" / "python"), "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS)],
            capture_output=True, text=True, timeout=1200,
        )
        if pip.returncode != 0:
            shutil.rmtree(building, ignore_errors=True)
            pytest.fail(f"pip install -r requirements.txt failed:\n{pip.stdout[-3000:]}\n"
                        f"{pip.stderr[-3000:]}")
        # A venv records its own path in its scripts; only bin/python is used here, which does not care.
        building.rename(venv)
    # Venvs of earlier requirements.txt versions are dead weight once nobody has used them for a day
    # (another checkout with other requirements may be running its tests right now).
    for old in CACHE_DIR.glob(f"requirements-venv-{tag}-*"):
        unused_s = time.time() - old.stat().st_mtime
        if old != venv and not old.name.endswith(".building") and unused_s > 86400:
            shutil.rmtree(old, ignore_errors=True)
    return venv


@pytest.fixture(scope="module")
def requirements_python() -> Path:
    return _requirements_venv() / "bin" / "python"


def test_requirements_venv_has_no_dev_packages(requirements_python):
    """Guard for the test below: the venv is really made only from requirements.txt."""
    r = subprocess.run([str(requirements_python), "-c", "import pytest"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode != 0 and "No module named 'pytest'" in r.stderr


def test_client_runs_from_requirements_only_venv(requirements_python, server_process, librivox):
    """The README's command: the client, run with the server's venv, against a running server."""
    port = free_port()
    proc = server_process("--mode", "ws", "--ws-port", str(port), "--host", "127.0.0.1")
    proc.wait_http(f"http://127.0.0.1:{port}/health")
    api_key = KEY_RE.search(proc.log()).group(1)
    clip = librivox[4]
    env = {k: v for k, v in os.environ.items() if k not in ("WHISPER_API_KEY", "PYTHONPATH", "VIRTUAL_ENV")}
    r = subprocess.run(
        [str(requirements_python), str(SCRIPT), str(clip.path), "--mode", "all", "--speed", "4",
         "--host", "127.0.0.1", "--port", str(port), "--api-key", api_key],
        capture_output=True, text=True, timeout=300, env=env, stdin=subprocess.DEVNULL, cwd=ROOT,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ModuleNotFoundError" not in r.stderr
    texts = [line[len("Text: "):] for line in r.stdout.splitlines() if line.startswith("Text: ")]
    assert len(texts) == 3, r.stdout  # rest, ws-file and stream
    for text in texts:
        assert wer(clip.text, text) <= 0.15, text
    assert "3/3 mode(s) succeeded" in r.stdout
