"""A job's files under the jobs directory: ``<jobs_dir>/<job id>/upload`` plus the runner's checkpoints.

Every path is built from a job id checked against :data:`JOB_ID`, never from anything else a client sent
(the client's file name is kept only in the record), so no path can leave the jobs directory.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import BinaryIO

JOB_ID = re.compile(r"job_[0-9a-f]{32}")  # whole string (fullmatch): "$" would let a trailing newline in
UPLOAD_NAME = "upload"
COPY_CHUNK = 1024 * 1024


class UploadTooLarge(ValueError):
    def __init__(self, limit_bytes: int) -> None:
        super().__init__(f"Upload too large: the limit is {limit_bytes / (1024 * 1024):g} MB.")


class EmptyUpload(ValueError):
    def __init__(self) -> None:
        super().__init__("The uploaded file is empty.")


def job_dir(jobs_dir: Path, job_id: str) -> Path:
    if not JOB_ID.fullmatch(job_id or ""):
        raise ValueError("not a job id")
    return Path(jobs_dir) / job_id


def upload_path(jobs_dir: Path, upload: str) -> Path:
    """The stored upload named by a record's ``upload`` field ("<job id>/upload")."""
    job_id, _, name = (upload or "").partition("/")
    if name != UPLOAD_NAME:
        raise ValueError("not a stored upload")
    return job_dir(jobs_dir, job_id) / UPLOAD_NAME


def store_upload(jobs_dir: Path, job_id: str, source: BinaryIO, max_bytes: int) -> tuple[str, int]:
    """Copy an upload into the job's directory in 1 MB pieces (never whole in memory) and fsync it, so a
    job that is acknowledged has its audio on disk. Returns (the record's ``upload`` value, bytes).
    Blocking: run it in a thread. Leaves nothing behind when it fails."""
    folder = job_dir(jobs_dir, job_id)
    folder.mkdir(parents=True, exist_ok=False)
    target = folder / UPLOAD_NAME
    size = 0
    try:
        with target.open("wb") as out:
            while True:
                chunk = source.read(COPY_CHUNK)
                if not chunk:
                    break
                size += len(chunk)
                if size > max_bytes:
                    raise UploadTooLarge(max_bytes)
                out.write(chunk)
            if size == 0:
                raise EmptyUpload()
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return f"{job_id}/{UPLOAD_NAME}", size


def delete_job_files(jobs_dir: Path, job_id: str) -> None:
    """Remove the job's directory (upload and checkpoints). Blocking; a missing directory is fine."""
    try:
        folder = job_dir(jobs_dir, job_id)
    except ValueError:
        return
    shutil.rmtree(folder, ignore_errors=True)
