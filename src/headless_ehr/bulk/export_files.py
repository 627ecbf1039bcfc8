"""Where an export's NDJSON files live: <data dir>/bulk/<job id>/<name>.

Names are the server's own (`Observation-2-1a2b3c4d.ndjson`, `Patient-deleted-1-…`),
never the client's, so a download name is checked against that shape before it touches
the file system. The last part is the claim that wrote the file (bulk/export_worker.py):
a node that lost its job and has not noticed yet can only ever write files of its own
claim, which no manifest names.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

_NAME = re.compile(r"[A-Z][A-Za-z]{0,63}(-deleted)?-[1-9][0-9]{0,8}-[0-9a-f]{8}\.ndjson")


def job_dir(data_dir: Path, job_id: str) -> Path:
    return data_dir / "bulk" / job_id


def file_name(kind: str, rtype: str, part: int, claim: str) -> str:
    """The name of part `part` (from 1) of a stream (a type's resources or its deletions)
    as written by claim (8 hex digits)."""
    stem = f"{rtype}-deleted" if kind == "deleted" else rtype
    return f"{stem}-{part}-{claim}.ndjson"


def download_path(data_dir: Path, job_id: str, name: str) -> Path | None:
    """The file a download names, or None when the name is not one the server gives."""
    if not _NAME.fullmatch(name):
        return None
    return job_dir(data_dir, job_id) / name


def remove(data_dir: Path, job_id: str) -> None:
    """Remove a job's files (none left is fine)."""
    shutil.rmtree(job_dir(data_dir, job_id), ignore_errors=True)
