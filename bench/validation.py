"""Validator cost: compiling the StructureDefinitions and validating resources.

    python bench/validation.py            # appends a section to bench/RESULTS.md

Compiles every resource type in a fresh process (cold), then validates the R4
examples and the Synthea resources repeatedly (warm) and reports per-resource times.
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

import results

from headless_ehr.fhir import json as fhir_json
from headless_ehr.fhir.definitions import definitions
from headless_ehr.fhir.validation import Validator

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "fhir"


def _resources() -> dict[str, list[dict]]:
    examples = [fhir_json.loads(p.read_bytes()) for p in sorted((SHARED / "examples-r4").glob("*.json"))]
    synthea = []
    for path in sorted((SHARED / "synthea").glob("*.json")):
        synthea += [e["resource"] for e in json.loads(path.read_bytes())["entry"]]
    for path in sorted((SHARED / "synthea" / "smart-r4").glob("*.json.gz"))[:20]:
        bundle = fhir_json.loads(gzip.decompress(path.read_bytes()))
        synthea += [e["resource"] for e in bundle["entry"]]
    return {"R4 examples": examples, "Synthea resources": synthea}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    started = time.perf_counter()
    defs = definitions()
    _ = defs.structure_definitions
    load = time.perf_counter() - started
    validator = Validator(defs)
    compile_times = []
    for rtype in sorted(defs.resource_types):
        t = time.perf_counter()
        validator.validate({"resourceType": rtype})
        compile_times.append(time.perf_counter() - t)
    rows = [
        ("load definitions (once per process)", f"{load * 1000:.0f} ms"),
        ("compile all 146 resource types (first validate of each)", f"{sum(compile_times) * 1000:.0f} ms"),
        (
            "compile one type: median / max",
            f"{statistics.median(compile_times) * 1000:.2f} / {max(compile_times) * 1000:.1f} ms",
        ),
    ]
    patient = fhir_json.loads((SHARED / "examples-r4" / "Patient-example.json").read_bytes())
    for _ in range(200):
        validator.validate(patient)
    t = time.perf_counter()
    for _ in range(2000):
        validator.validate(patient)
    rows.append(("Patient-example, warm", f"{(time.perf_counter() - t) / 2000 * 1e6:.0f} µs"))
    for name, resources in _resources().items():
        best = float("inf")
        for _ in range(args.rounds):
            t = time.perf_counter()
            for resource in resources:
                validator.validate(resource)
            best = min(best, time.perf_counter() - t)
        rows.append(
            (
                f"{name} ({len(resources):,}), mean per resource, best of {args.rounds}",
                f"{best / len(resources) * 1e6:.0f} µs",
            )
        )
    table = "| what | time |\n|---|---:|\n" + "\n".join(f"| {a} | {b} |" for a, b in rows)
    print(table)
    if not args.no_record:
        header = (
            f"\n## {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: validation (`python bench/validation.py`)\n\n"
            f"Machine: {platform.machine()}, Python {platform.python_version()}, one process, no server.\n\n"
        )
        cells = " | ".join(b for _, b in rows if not _.startswith("compile one"))
        results.record("validation", header + table, f"| {datetime.now(UTC):%Y-%m-%d %H:%M} | {cells} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
