"""The project as an installable package: a wheel with the code, the demo page and the `whisper-stt`
command, built offline from a copy of the tree; installed into a throwaway venv, the command runs."""

from __future__ import annotations

import email.parser
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WEB_FILES = ("demo.html", "demo.js", "demo.css", "audio-worklet.js")


def _requirements() -> list[str]:
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Build in a copy, so the repository gets no build/ or *.egg-info, and only from what is copied."""
    setuptools = pytest.importorskip("setuptools")
    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip(f"setuptools {setuptools.__version__} is older than pyproject's build-system needs (77)")
    work = tmp_path_factory.mktemp("package")
    src = work / "src"
    src.mkdir()
    for name in ("pyproject.toml", "requirements.txt", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "whisper_stt", src / "whisper_stt",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "-q", "-w", str(work / "dist"), str(src)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (built,) = (work / "dist").glob("whisper_stt_server-*.whl")
    return built


def test_wheel_holds_the_package_the_demo_page_and_the_command(wheel: Path):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        entry_points = z.read(f"{info}/entry_points.txt").decode()
        metadata = email.parser.Parser().parsestr(z.read(f"{info}/METADATA").decode())
    for name in WEB_FILES:
        assert f"whisper_stt/web/{name}" in names, name
    # every file of the package, code or data, so a new data file cannot be left out unnoticed
    package = ROOT / "whisper_stt"
    tree = {f"whisper_stt/{p.relative_to(package).as_posix()}" for p in package.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
    assert "whisper_stt/cli.py" in tree and not tree - names, sorted(tree - names)
    assert not any(n.startswith(("tests/", "web/", "bench/")) or "__pycache__" in n for n in names)
    assert "[console_scripts]\nwhisper-stt = whisper_stt.cli:main" in entry_points
    # the dependencies are requirements.txt's, one for one
    assert sorted(metadata.get_all("Requires-Dist")) == sorted(_requirements())
    assert metadata["Name"] == "whisper-stt-server" and metadata["Requires-Python"] == ">=3.10"


def test_installed_wheel_runs_whisper_stt_and_serves_the_demo_from_the_package(wheel: Path, tmp_path: Path):
    # A throwaway venv that sees this venv's packages (so nothing is downloaded) but not the repository.
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "outer-venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q",
         str(wheel)],
        capture_output=True, text=True, timeout=120,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    command = env_dir / "bin" / "whisper-stt"
    helped = subprocess.run([str(command), "--help"], capture_output=True, text=True, timeout=60,
                            cwd=tmp_path, env=env)
    assert helped.returncode == 0, helped.stderr
    assert "--ws-port" in helped.stdout and "--model" in helped.stdout
    # the installed copy is the one imported, and it finds its demo page inside itself
    where = subprocess.run(
        [str(python), "-c", "from whisper_stt.routes.demo import WEB_DIR; print(WEB_DIR)"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env,
    )
    assert where.returncode == 0, where.stderr
    web_dir = Path(where.stdout.strip())
    assert web_dir.is_relative_to(env_dir) and all((web_dir / n).is_file() for n in WEB_FILES)


def test_whisper_server_py_still_works_from_the_checkout():
    result = subprocess.run([sys.executable, str(ROOT / "whisper_server.py"), "--help"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "--ws-port" in result.stdout, result.stderr
    assert all((ROOT / "whisper_stt" / "web" / n).is_file() for n in WEB_FILES)
    assert not (ROOT / "web").exists()
