"""Copy the R4 definition Bundles the server needs at run time into the package.

Run from the project root with ../shared/fhir present; the output is committed, so a
fresh install needs nothing from ../shared. Every file is gzip of the original bytes.
"""

from __future__ import annotations

import gzip
import shutil
import sys
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1].parent / "shared" / "fhir" / "definitions-r4"
TARGET = Path(__file__).resolve().parents[1] / "src" / "headless_ehr" / "fhir" / "data"
NEEDED = [
    "profiles-resources.json",
    "profiles-types.json",
    "search-parameters.json",
    "valuesets.json",
    "v3-codesystems.json",
    "expansions.json",
    "extension-definitions.json",
]


def main() -> int:
    if not SOURCE.is_dir():
        print(f"definitions not found at {SOURCE}", file=sys.stderr)
        return 1
    TARGET.mkdir(parents=True, exist_ok=True)
    for name in NEEDED:
        out = TARGET / f"{name}.gz"
        packed = SOURCE / f"{name}.gz"
        if packed.exists():
            shutil.copyfile(packed, out)
        else:
            data = (SOURCE / name).read_bytes()
            out.write_bytes(gzip.compress(data, compresslevel=9, mtime=0))
        print(f"{out.relative_to(TARGET.parents[3])}: {out.stat().st_size:,} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
