"""`ehr import --no-events`: an initial load that leaves no events; without it, one per change."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path


def run_import(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EHR_")}
    env["EHR_DATABASE_URL"] = database_url
    argv = [sys.executable, "-m", "headless_ehr.cli", "import", "--processes", "1", *args]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)


def load(folder: Path, tag: str) -> list[str]:
    """Five new Patients (NDJSON) and a transaction Bundle creating a sixth and updating the first; their ids."""
    ids = [f"{tag}-{i}" for i in range(6)]
    folder.mkdir()
    lines = [json.dumps({"resourceType": "Patient", "id": rid}) for rid in ids[:5]]
    (folder / "a.ndjson").write_text("\n".join(lines))
    entries = [
        {
            "resource": {"resourceType": "Patient", "id": rid, "active": True},
            "request": {"method": "PUT", "url": f"Patient/{rid}"},
        }
        for rid in (ids[5], ids[0])
    ]
    (folder / "b.json").write_text(json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries}))
    return ids


async def changes(db, ids: list[str]) -> tuple[int, int]:
    """(history rows, outbox rows) of these Patients."""
    history = await db.fetchval(
        "SELECT count(*) FROM resource_history WHERE resource_type = 'Patient' AND id = ANY($1)", ids
    )
    events = await db.fetchval("SELECT count(*) FROM outbox WHERE resource_type = 'Patient' AND id = ANY($1)", ids)
    return history, events


async def test_import_with_no_events_writes_no_outbox_rows_and_says_so(database_url, db, tmp_path):
    ids = load(tmp_path / "data", uuid.uuid4().hex)
    done = run_import(database_url, str(tmp_path / "data"), "--no-events")
    assert done.returncode == 0, done.stderr
    assert await changes(db, ids) == (7, 0)  # six creates and an update stored, no event of any
    assert "Events were off (--no-events)" in " ".join(done.stderr.split())


async def test_import_writes_an_event_for_each_change_by_default(database_url, db, tmp_path):
    ids = load(tmp_path / "data", uuid.uuid4().hex)
    done = run_import(database_url, str(tmp_path / "data"))
    assert done.returncode == 0, done.stderr
    assert await changes(db, ids) == (7, 7)
    assert "Events were off" not in done.stderr
