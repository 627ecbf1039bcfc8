"""Where an export's NDJSON files live: <data dir>/bulk/<job id>/<name>.

Names are the server's own (`Observation-2.ndjson`, `Patient-deleted-1.ndjson`), never
the client's, so a download name is checked against that shape before it touches the
file system.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

_NAME = re.compile(r"[A-Z][A-Za-z]{0,63}(-deleted)?-[1-9][0-9]{0,8}\.ndjson")


def job_dir(data_dir: Path, job_id: str) -> Path:
    return data_dir / "bulk" / job_id


def file_name(kind: str, rtype: str, part: int) -> str:
    """The name of part `part` (from 1) of a stream: a type's resources or its deletions."""
    return f"{rtype}-deleted-{part}.ndjson" if kind == "deleted" else f"{rtype}-{part}.ndjson"


def download_path(data_dir: Path, job_id: str, name: str) -> Path | None:
    """The file a download names, or None when the name is not one the server gives."""
    if not _NAME.fullmatch(name):
        return None
    return job_dir(data_dir, job_id) / name


def remove(data_dir: Path, job_id: str) -> None:
    """Remove a job's files (none left is fine)."""
    shutil.rmtree(job_dir(data_dir, job_id), ignore_errors=True)
