"""Sorted searches with a system token next to a patient-context token (issue 10).

    python bench/access_sorted.py --database-url postgresql://postgres@127.0.0.1:5432/postgres
                                  [--patients 10] [--per-patient 400] [--repeat 30]

Creates a scratch database on that server, seeds Observations spread over several
patients through the in-process app, then times each search (median and p90 of
`--repeat` runs, first page of 20, through the ASGI app) as a `system/*.*` token and
as a `patient/*.rs` token of one patient. Prints a table; records nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from headless_ehr.app import create_app
from headless_ehr.config import Settings

CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"


def token(app: object, scope: str, **claims: object) -> dict[str, str]:
    issued = app.state.tokens.issue(  # type: ignore[attr-defined]
        issuer="http://testserver",
        audience="http://testserver/fhir",
        subject="bench",
        client_id="bench",
        scope=scope,
        **claims,
    )
    return {"Authorization": f"Bearer {issued.access_token}"}


def observation(pid: str, i: int) -> dict[str, object]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": CATEGORY, "code": "laboratory" if i % 2 else "vital-signs"}]}],
        "code": {"coding": [{"system": "urn:bench", "code": str(i % 50)}]},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": f"20{10 + i % 14:02d}-{1 + i % 12:02d}-{1 + i % 28:02d}T00:00:00Z",
    }


async def seed(c: httpx.AsyncClient, patients: int, per_patient: int) -> list[str]:
    pids = []
    for _ in range(patients):
        res = await c.post("/Patient", json={"resourceType": "Patient"})
        pids.append(res.json()["id"])
    for pid in pids:
        for start in range(0, per_patient, 200):
            entries = [
                {"resource": observation(pid, i), "request": {"method": "POST", "url": "Observation"}}
                for i in range(start, min(start + 200, per_patient))
            ]
            res = await c.post("/", json={"resourceType": "Bundle", "type": "transaction", "entry": entries})
            assert res.status_code == 200, res.text[:300]
    return pids


async def timed(c: httpx.AsyncClient, params: dict[str, str], repeat: int) -> tuple[float, float, int]:
    times = []
    n = 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        res = await c.get("/Observation", params=params)
        times.append((time.perf_counter() - t0) * 1000)
        assert res.status_code == 200, res.text[:300]
        n = len(res.json().get("entry", []))
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.9) - 1], n


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--database-url", required=True)
    ap.add_argument("--patients", type=int, default=10)
    ap.add_argument("--per-patient", type=int, default=400)
    ap.add_argument("--repeat", type=int, default=30)
    args = ap.parse_args()
    name = f"bench_access_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(args.database_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    url = urlunsplit(urlsplit(args.database_url)._replace(path="/" + name))
    try:
        # a scratch data dir: the first start writes admin-client.json there, not into the checkout
        app = create_app(Settings(database_url=url, data_dir=Path(tempfile.mkdtemp(prefix="ehr-access-bench-"))))
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            base = "http://testserver/fhir"
            async with httpx.AsyncClient(transport=transport, base_url=base, headers=token(app, "system/*.*")) as sys_c:
                pids = await seed(sys_c, args.patients, args.per_patient)
                pid = pids[0]
                db = await asyncpg.connect(url)
                await db.execute("ANALYZE")  # plans as on a database autovacuum has seen
                await db.close()
                pat_headers = token(app, "patient/*.rs", patient=pid)
                async with httpx.AsyncClient(transport=transport, base_url=base, headers=pat_headers) as pat_c:
                    await sys_c.get("/Observation")  # warm caches
                    await pat_c.get("/Observation")
                    total = args.patients * args.per_patient
                    print(f"{total} Observations over {args.patients} patients; first page of 20; ms")
                    print("| search | system token median / p90 | patient token median / p90 |")
                    print("|---|---|---|")
                    for label, params in [
                        ("_sort=-date", {"_sort": "-date"}),
                        ("patient=X&_sort=-date", {"patient": pid, "_sort": "-date"}),
                        ("_sort=-_lastUpdated", {"_sort": "-_lastUpdated"}),
                        ("patient=X&_sort=-_lastUpdated", {"patient": pid, "_sort": "-_lastUpdated"}),
                        ("patient=X (id order)", {"patient": pid}),
                    ]:
                        s_med, s_p90, _ = await timed(sys_c, params, args.repeat)
                        p_med, p_p90, _ = await timed(pat_c, params, args.repeat)
                        print(f"| {label} | {s_med:.1f} / {s_p90:.1f} | {p_med:.1f} / {p_p90:.1f} |")
    finally:
        admin = await asyncpg.connect(args.database_url)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
