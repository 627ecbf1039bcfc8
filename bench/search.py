"""Search latency of a real `ehr serve` over ≥ 100,000 Synthea resources, with query plans.

    python bench/search.py [--database-url URL] [--keep] [--reps 60] [--rounds 3] [--auth on|off]
                           [--principal system|practitioner|system,practitioner]

Copies the Synthea Bundles with fresh ids until there are --min-resources, loads them
through `ehr import` into a dedicated database (dropped and created again; --keep reuses
a loaded one), starts `ehr serve` (1 worker) on it, times each search with sequential
httpx requests over varied real values (with --auth on, the default, each carrying a
system token from `ehr token`), runs EXPLAIN (ANALYZE, BUFFERS) on the SQL the
store runs for one value of each, prints a Markdown report and appends it to
bench/RESULTS.md. `--principal system,practitioner` times every search also as a
practitioner user holding a criteria access policy (bench/practitioner.py), interleaved
with the system principal, and explains the SQL restricted by that policy. See
bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import json
import math
import os
import random
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import httpx
import practitioner
import results
from crud import (
    PREFIX,
    Served,
    access_token,
    bench_admin_client,
    free_port,
    machine,
    opts,
    server_env,
    short_code,
    snapshot_code,
)

SYNTHEA = Path("/work/shared/fhir/synthea")
DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/ehr_search_bench"
LOINC = "http://loinc.org"
SIMPLE_MS, ANY_MS = 10.0, 100.0  # p50 targets: simple searches, every search
DEEP_PAGE_RATIO = 1.25  # a deep page's p50 may be at most this times page 1's
PAGES = 5
UUID_RE = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
COPY_NAMESPACE = uuid.UUID("6f1e0c6a-2b7e-4d0e-9a59-5e2f3b7c9d10")  # uuid5 ids of later copies


# -- data set: Synthea Bundles, copied with fresh ids ------------------------------------


@dataclass
class Source:
    """One Synthea transaction Bundle and what a copy of it changes."""

    name: str
    data: bytes
    resources: int
    family: str | None  # family name of its Patient
    identifiers: list[str]  # its Patient's identifier values that are not uuids


def read_source(path: Path) -> Source:
    data = path.read_bytes()
    data = gzip.decompress(data) if path.name.endswith(".gz") else data
    bundle = json.loads(data)
    entries = [e["resource"] for e in bundle.get("entry", [])]
    patient = next((r for r in entries if r["resourceType"] == "Patient"), None)
    family, identifiers = None, []
    if patient is not None:
        family = patient["name"][0]["family"]
        values = [i.get("value", "") for i in patient.get("identifier", [])]
        identifiers = [v for v in values if v and not UUID_RE.fullmatch(v.encode())]
    name = path.name.removesuffix(".gz").removesuffix(".json")
    return Source(name, data, len(entries), family, identifiers)


def _quoted(text: str) -> list[bytes]:
    """The JSON string literal of text as the file may spell it (UTF-8 or \\u escapes)."""
    return list(dict.fromkeys(json.dumps(text, ensure_ascii=a).encode() for a in (False, True)))


def copy_bundle(src: Source, copy: int, family: str | None) -> bytes:
    """Copy `copy` of a Bundle: copy 0 as it is; later copies with every uuid (fullUrls,
    the references to them, ids, identifiers) replaced by a per-copy uuid5, the Patient's
    family name replaced by `family` and the digits of its other identifiers shifted."""
    if copy == 0:
        return src.data
    fresh: dict[bytes, bytes] = {}

    def renamed(match: re.Match[bytes]) -> bytes:
        old = match.group(0)
        if old not in fresh:
            fresh[old] = str(uuid.uuid5(COPY_NAMESPACE, f"{copy}:{old.decode()}")).encode()
        return fresh[old]

    data = UUID_RE.sub(renamed, src.data)
    if src.family and family:
        new = _quoted(family)[0]
        for old in _quoted(src.family):
            data = re.sub(rb'("family"\s*:\s*)' + re.escape(old), rb"\g<1>" + new.replace(b"\\", b"\\\\"), data)
    for value in src.identifiers:
        shifted = _quoted("".join(str((int(c) + copy) % 10) if c.isdigit() else c for c in value))[0]
        for old in _quoted(value):
            data = re.sub(rb'("value"\s*:\s*)' + re.escape(old), rb"\g<1>" + shifted.replace(b"\\", b"\\\\"), data)
    return data


def write_copies(root: Path, folder: Path, min_resources: int) -> tuple[int, int]:
    """Gzipped Bundles for as many copies as reach min_resources; (copies, resources)."""
    paths = sorted((root / "smart-r4").glob("*.json.gz")) + sorted(root.glob("*.json"))
    sources = [read_source(p) for p in paths]
    per_copy = sum(s.resources for s in sources)
    copies = max(1, math.ceil(min_resources / per_copy))
    families = [s.family for s in sources if s.family]
    for copy in range(copies):
        out = folder / f"copy{copy}"
        out.mkdir(parents=True)
        patient = 0
        for src in sources:
            family = None
            if src.family:  # copy k gives patient i the family name of patient i + k
                family = families[(patient + copy) % len(families)]
                patient += 1
            data = copy_bundle(src, copy, family)
            (out / f"{src.name}.json.gz").write_bytes(gzip.compress(data, compresslevel=1))
    return copies, copies * per_copy


# -- database ----------------------------------------------------------------------------


def admin_url(url: str) -> tuple[str, str]:
    """(URL of the server's `postgres` database, the database named in url)."""
    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    if "bench" not in name:
        raise SystemExit(f"refusing to drop '{name}': the benchmark database's name must contain 'bench'")
    return urlunsplit(parts._replace(path="/postgres")), name


async def recreate_database(url: str) -> None:
    admin, name = admin_url(url)
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


@dataclass
class Load:
    copies: int = 0
    prepare_s: float = 0.0
    import_s: float = 0.0
    reported_rate: str = "?"  # resources/s as `ehr import` printed it
    loaded: str = "?"
    failures: str = "?"


_IMPORT_ROW = re.compile(r"[│|]\s*(\d+)\s*[│|]\s*([\d,]+)\s*[│|]\s*([\d,]+)\s*[│|]\s*(\d+)\s*[│|]\s*(\d+)\s*[│|]")


def load(args: argparse.Namespace, env: dict[str, str], work: Path) -> Load:
    figures = Load()
    t0 = time.perf_counter()
    folder = work / "bundles"
    figures.copies, planned = write_copies(args.synthea, folder, args.min_resources)
    figures.prepare_s = time.perf_counter() - t0
    print(f"wrote {figures.copies} copies ({planned:,} resources) in {figures.prepare_s:.1f} s", file=sys.stderr)
    asyncio.run(recreate_database(args.database_url))
    log = work / "import.log"
    t0 = time.perf_counter()
    with log.open("wb") as out:
        rc = subprocess.run(["ehr", "import", str(folder)], env={**env, "COLUMNS": "160"}, stdout=out, stderr=out)
    figures.import_s = time.perf_counter() - t0
    text = log.read_text(errors="replace")
    row = _IMPORT_ROW.search(text)
    if row:
        figures.loaded, figures.reported_rate, figures.failures = row.group(2), row.group(3), row.group(5)
    if rc.returncode != 0 or row is None:
        print(text[-3000:], file=sys.stderr)
        if row is None:
            raise SystemExit(f"ehr import failed ({rc.returncode}); see above")
    shutil.rmtree(folder)
    print(f"ehr import: {figures.loaded} resources in {figures.import_s:.1f} s", file=sys.stderr)
    return figures


@dataclass
class DataSet:
    resources: int
    by_type: list[tuple[str, int]]
    size: str
    pg_version: str
    analyze_s: float


async def describe(url: str) -> DataSet:
    """Counts and size, after VACUUM (ANALYZE) so the planner and visibility map are current."""
    conn = await asyncpg.connect(url)
    try:
        t0 = time.perf_counter()
        await conn.execute("VACUUM (ANALYZE)")
        analyze_s = time.perf_counter() - t0
        rows = await conn.fetch(
            "SELECT resource_type, count(*) AS n FROM resource WHERE NOT deleted GROUP BY 1 ORDER BY 2 DESC"
        )
        size = await conn.fetchval("SELECT pg_size_pretty(pg_database_size(current_database()))")
        version = await conn.fetchval("SHOW server_version")
    finally:
        await conn.close()
    by_type = [(r[0], r[1]) for r in rows]
    return DataSet(sum(n for _, n in by_type), by_type, size, version, analyze_s)


# -- the searches ------------------------------------------------------------------------


@dataclass
class Case:
    key: str
    label: str  # the query as shown, with <placeholders>
    varied: str  # how its values vary
    target_ms: float
    urls: list[str]  # relative to the FHIR base, one per value
    pages: int = 1  # > 1: fetch that many pages following `next`


def _url(rtype: str, params: list[tuple[str, str]]) -> str:
    return f"{rtype}?{urlencode(params)}"


async def pick_values(
    url: str, n: int, seed: int, visible: list[str] | None = None, total: Callable[[str], int] | None = None
) -> list[Case]:
    """The cases, each with n URLs built from values that occur in the data; with visible
    (the Patients a policy-restricted principal reaches), values of those patients and of
    the Observation categories the policy opens, and paging over codes of which total
    (that principal's count of a search) finds enough for every page."""
    rng = random.Random(seed)
    mine = "" if visible is None else " AND {} = ANY($2::text[])"
    extra: list[object] = [] if visible is None else [visible]
    conn = await asyncpg.connect(url)
    try:
        families = sorted(
            r[0]
            for r in await conn.fetch(
                "SELECT DISTINCT exact FROM search_string WHERE resource_type = 'Patient' AND param = $1"
                + mine.format("resource_id"),
                "family",
                *extra,
            )
        )
        opened = (
            ""
            if visible is None
            else (
                " AND EXISTS (SELECT 1 FROM search_token k WHERE k.resource_type = 'Observation'"
                " AND k.resource_id = p.resource_id AND k.param = 'category' AND k.code = ANY($3::text[]))"
            )
        )
        pairs = await conn.fetch(
            "SELECT DISTINCT p.target_id, c.code FROM search_reference p JOIN search_token c"
            " ON c.resource_type = p.resource_type AND c.resource_id = p.resource_id"
            " WHERE p.resource_type = 'Observation' AND p.param = 'patient' AND p.target_type = 'Patient'"
            " AND c.param = 'code' AND c.system = $1" + mine.format("p.target_id") + opened + " ORDER BY 1, 2",
            LOINC,
            *extra,
            *([] if visible is None else [list(practitioner.CATEGORIES)]),
        )
        codes = await conn.fetch(
            "SELECT code, count(*) AS n FROM search_token WHERE resource_type = 'Observation' AND param = 'code'"
            " AND system = $1 GROUP BY code ORDER BY n DESC, code LIMIT 20",
            LOINC,
        )
        code_dates = []
        for code, _ in codes:
            for matches in (50, 100, 200):  # the date from which about that many match
                high = await conn.fetchval(
                    "SELECT d.high FROM search_date d JOIN search_token t ON t.resource_type = d.resource_type"
                    " AND t.resource_id = d.resource_id WHERE d.resource_type = 'Observation' AND d.param = 'date'"
                    " AND t.param = 'code' AND t.system = $1 AND t.code = $2 ORDER BY d.high DESC OFFSET $3 LIMIT 1",
                    LOINC,
                    code,
                    matches - 1,
                )
                if high is not None:
                    code_dates.append((code, high.date().isoformat()))
        patients = [
            r[0]
            for r in await conn.fetch(
                "SELECT DISTINCT target_id FROM search_reference WHERE resource_type = 'Encounter'"
                " AND param = $1 AND target_type = 'Patient'" + mine.format("target_id") + " ORDER BY 1",
                "patient",
                *extra,
            )
        ]
    finally:
        await conn.close()
    pages_codes = [c for c, count in codes if count > PAGES * 50]
    if total is not None:
        pages_codes = [c for c in pages_codes if total(_url("Observation", [("code", f"{LOINC}|{c}")])) > PAGES * 50]

    def some(items: list[Any]) -> list[Any]:
        """n items: a shuffled sample, repeated when there are fewer than n."""
        picked = rng.sample(items, min(n, len(items)))
        return [picked[i % len(picked)] for i in range(n)]

    loinc = f"{LOINC}|"
    return [
        Case(
            "name",
            "Patient?name=<family prefix>",
            f"first 4 letters of {n} of {len(families)} family names",
            SIMPLE_MS,
            [_url("Patient", [("name", f[:4])]) for f in some(families)],
        ),
        Case(
            "patient+code",
            "Observation?patient=<id>&code=http://loinc.org|<code>",
            f"{n} of {len(pairs):,} (patient, LOINC code) pairs that occur",
            SIMPLE_MS,
            [_url("Observation", [("patient", p), ("code", loinc + c)]) for p, c in some([tuple(r) for r in pairs])],
        ),
        Case(
            "code+date",
            "Observation?code=http://loinc.org|<code>&date=ge<date>",
            f"{len(code_dates)} pairs: top {len(codes)} LOINC codes x a date from which ~50/100/200 match",
            SIMPLE_MS,
            [_url("Observation", [("code", loinc + c), ("date", "ge" + d)]) for c, d in some(code_dates)],
        ),
        Case(
            "chain",
            "Observation?subject:Patient.name=<family>",
            f"{n} of {len(families)} full family names",
            ANY_MS,
            [_url("Observation", [("subject:Patient.name", f)]) for f in some(families)],
        ),
        Case(
            "revinclude enc",
            "Encounter?patient=<id>&_revinclude=Observation:encounter",
            f"{n} of {len(patients)} patients",
            ANY_MS,
            [_url("Encounter", [("patient", p), ("_revinclude", "Observation:encounter")]) for p in some(patients)],
        ),
        Case(
            "revinclude pat",
            "Patient?_id=<id>&_revinclude=Encounter:patient",
            f"{n} of {len(patients)} patients",
            ANY_MS,
            [_url("Patient", [("_id", p), ("_revinclude", "Encounter:patient")]) for p in some(patients)],
        ),
        Case(
            "sort",
            "Observation?_sort=-date&_count=50",
            "nothing to vary (one URL)",
            ANY_MS,
            [_url("Observation", [("_sort", "-date"), ("_count", "50")])] * n,
        ),
        Case(
            "sort+patient",
            "Observation?patient=<id>&_sort=-date&_count=50",
            f"{n} of {len(patients)} patients",
            ANY_MS,
            [_url("Observation", [("patient", p), ("_sort", "-date"), ("_count", "50")]) for p in some(patients)],
        ),
        Case(
            "paging",
            "Observation?code=http://loinc.org|<code>&_count=50, pages 1..5 following next",
            f"the {len(pages_codes)} LOINC codes with > {PAGES * 50} Observations"
            + ("" if total is None else " that the restricted principal reaches"),
            ANY_MS,
            [_url("Observation", [("code", loinc + c), ("_count", "50")]) for c in some(pages_codes)],
            pages=PAGES,
        ),
    ]


# -- timing over HTTP ---------------------------------------------------------------------


class Answer(NamedTuple):
    ms: float
    matches: int
    included: int
    next_url: str | None


def get(client: httpx.Client, url: str) -> Answer:
    t0 = time.perf_counter()
    response = client.get(url)
    ms = (time.perf_counter() - t0) * 1000
    if response.status_code != 200:
        raise RuntimeError(f"GET {url}: {response.status_code} {response.text[:500]}")
    bundle = response.json()
    modes = [e.get("search", {}).get("mode") for e in bundle.get("entry", [])]
    following = next((lk["url"] for lk in bundle.get("link", []) if lk["relation"] == "next"), None)
    return Answer(ms, modes.count("match"), modes.count("include"), following)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


@dataclass
class Timing:
    """Latencies of one case (per page for paging), per round."""

    rounds: list[list[list[float]]] = field(default_factory=list)  # round -> page -> ms
    matches: list[int] = field(default_factory=list)
    included: list[int] = field(default_factory=list)
    totals: list[int] = field(default_factory=list)
    by_url: dict[str, list[float]] = field(default_factory=dict)  # page 1 latencies per value

    def _ranked(self) -> list[str]:
        return sorted(self.by_url, key=lambda u: statistics.median(self.by_url[u]))

    def median_url(self) -> str:
        """The value whose median latency is the median: the one behind the p50."""
        ranked = self._ranked()
        return ranked[(len(ranked) - 1) // 2]

    def slowest_url(self) -> str:
        return self._ranked()[-1]

    def stat(self, page: int, q: float) -> float:
        """Median over rounds of the round's percentile q."""
        return statistics.median(percentile(r[page], q) for r in self.rounds)

    def spread(self, page: int) -> str:
        p50s = [percentile(r[page], 50) for r in self.rounds]
        return f"{min(p50s):.1f}-{max(p50s):.1f}"


def run_case(client: httpx.Client, case: Case, warmup: int, timing: Timing) -> None:
    for url in case.urls[:warmup]:
        get(client, url)
    pages: list[list[float]] = [[] for _ in range(case.pages)]
    for url in case.urls:
        following: str | None = url
        for page in range(case.pages):
            assert following is not None, f"{url}: no page {page + 1}"
            answer = get(client, following)
            pages[page].append(answer.ms)
            if page == 0:
                timing.by_url.setdefault(url, []).append(answer.ms)
                timing.matches.append(answer.matches)
                timing.included.append(answer.included)
            following = answer.next_url
    timing.rounds.append(pages)


def count_matches(client: httpx.Client, case: Case, timing: Timing) -> None:
    """Bundle.total of `_summary=count` for each distinct URL (untimed)."""
    for url in dict.fromkeys(case.urls):
        timing.totals.append(client.get(url + "&_summary=count").json()["total"])


# -- plans --------------------------------------------------------------------------------


class Statement(NamedTuple):
    what: str  # "page 1", "_revinclude=Observation:encounter", ...
    sql: str
    args: list[object]


class Recorder:
    """Runs the store's statements on conn and keeps them: the SQL a search ran."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.ran: list[tuple[str, list[object]]] = []

    async def fetch(self, sql: str, *args: object) -> list[Any]:
        self.ran.append((sql, list(args)))
        return await self.conn.fetch(sql, *args)

    async def fetchval(self, sql: str, *args: object) -> Any:
        self.ran.append((sql, list(args)))
        return await self.conn.fetchval(sql, *args)


async def statements(conn: asyncpg.Connection, target: str, what: str, principal: Any, base: str) -> list[Statement]:
    """The SQL the store runs for one search URL as principal: `ResourceStore.search`
    itself runs it (access predicate, page, includes) and the statements are recorded."""
    from headless_ehr.store.repository import ResourceStore

    path, _, query = target.partition("?")
    params = parse_qsl(query, keep_blank_values=True)
    cursor = next((v for k, v in params if k == "_cursor"), None)
    params = [(k, v) for k, v in params if k != "_cursor"]
    recorder = Recorder(conn)
    store = ResourceStore(recorder, search_db=recorder, local_base=base)  # type: ignore[arg-type]
    page = await store.search(principal, path, params, cursor=cursor, default_count=20)
    first, *rest = recorder.ran
    names = [f"{'_revinclude' if i.reverse else '_include'}={i.source_type}:{i.param}" for i in page.request.includes]
    labels = [f"statement {k + 2}" for k in range(len(rest))]
    if page.entries and len(rest) >= len(names):  # the includes come last; a page's fill before them
        labels = ["fill"] * (len(rest) - len(names)) + names
    named = [Statement(label, sql, args) for label, (sql, args) in zip(labels, rest, strict=True)]
    return [Statement(what, *first), *named]


_COST = re.compile(r"\s*\(cost=[^)]*\)")
_KEEP = ("->", "SubPlan", "InitPlan", "Sort Method", "Rows Removed", "Planning Time", "Execution Time")


def trim(lines: list[str]) -> list[str]:
    """Node lines (type, index, actual time, rows) and the few details that explain them."""
    out = [_COST.sub("", lines[0])]
    buffers = next((ln for ln in lines[1:3] if ln.strip().startswith("Buffers:")), None)
    if buffers:
        out.append(buffers)
    out += [_COST.sub("", ln) for ln in lines[1:] if ln.strip().startswith(_KEEP)]
    return out


def _shape(lines: list[str]) -> list[str]:
    return [re.sub(r"\s*\((cost|actual)=.*", "", ln) for ln in lines if "->" in ln or ln is lines[0]]


def _exec_ms(lines: list[str]) -> float:
    return float(next(ln for ln in lines if "Execution Time" in ln).split(":")[1].split()[0])


def literal(value: object) -> str:
    """value as an SQL literal, for EXECUTE of a PREPAREd statement."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | Decimal):
        return str(value)
    if isinstance(value, datetime):
        return literal(value.isoformat())
    if isinstance(value, list):
        return "ARRAY[" + ", ".join(literal(v) for v in value) + "]" if value else "'{}'"
    return "'" + str(value).replace("'", "''") + "'"


_SEQ_SCAN = re.compile(r"Seq Scan on (resource|search_\w+)")


@dataclass
class Plan:
    case: str
    url: str
    what: str
    custom: list[str]
    cached_ms: float | None  # the 6th execution of a prepared statement, as the server's
    cached: list[str] | None  # its plan, when its shape differs from the custom plan
    principal: str = "system"
    custom_ms: float = 0.0
    seq_scans: list[str] = field(default_factory=list)  # tables read whole, in either plan


async def explain(conn: asyncpg.Connection, case: str, url: str, st: Statement, others: list[Statement]) -> Plan:
    """EXPLAIN (ANALYZE, BUFFERS) with the bind arguments (second run: warm cache). Then the
    plan a prepared statement settles on, as the server's asyncpg statements are: PREPARE,
    EXECUTE five other values of the case, EXPLAIN EXECUTE this one (PostgreSQL may switch
    to a generic plan from the sixth execution)."""
    command = "EXPLAIN (ANALYZE, BUFFERS) " + st.sql
    await conn.fetch(command, *st.args)
    custom = [r[0] for r in await conn.fetch(command, *st.args)]
    seq = sorted({m.group(1) for ln in custom for m in _SEQ_SCAN.finditer(ln)})
    same = [o for o in others if o.sql == st.sql][:5]
    if len(same) < 5:
        return Plan(case, url, st.what, trim(custom), None, None, custom_ms=_exec_ms(custom), seq_scans=seq)
    await conn.execute(f"PREPARE bench_q AS {st.sql}")
    try:
        for other in same:
            await conn.fetch(f"EXECUTE bench_q({', '.join(literal(a) for a in other.args)})")
        run = f"EXPLAIN (ANALYZE, BUFFERS) EXECUTE bench_q({', '.join(literal(a) for a in st.args)})"
        cached = [r[0] for r in await conn.fetch(run)]
    finally:
        await conn.execute("DEALLOCATE bench_q")
    seq = sorted(set(seq) | {m.group(1) for ln in cached for m in _SEQ_SCAN.finditer(ln)})
    other_shape = trim(cached) if _shape(cached) != _shape(custom) else None
    return Plan(
        case, url, st.what, trim(custom), _exec_ms(cached), other_shape, custom_ms=_exec_ms(custom), seq_scans=seq
    )


async def plans(
    url: str,
    cases: list[Case],
    picks_from: dict[str, Timing],
    cursors: dict[str, str],
    who: str,
    principal: Any,
    base: str,
) -> list[Plan]:
    """Plans of each case's median-latency value in picks_from (page 1, and for paging the
    last page, at cursors) as principal (named who); for a case that misses its target
    also of its slowest value."""
    out: list[Plan] = []
    conn = await asyncpg.connect(url)
    try:
        for case in cases:
            t = picks_from[case.key]
            picks = [("median value", t.median_url())]
            if t.stat(0, 50) > case.target_ms and t.slowest_url() != picks[0][1]:
                picks.append(("slowest value", t.slowest_url()))
            for label, target in picks:
                others: list[Statement] = []
                for other in [u for u in dict.fromkeys(case.urls) if u != target][:5] or [target] * 5:
                    others += await statements(conn, other, "", principal, base)
                todo = [(f"page 1, {label}", target)]
                if case.key in cursors and label == "median value":
                    todo.append((f"page {case.pages}", cursors[case.key]))
                for what, page_url in todo:
                    for st in await statements(conn, page_url, what, principal, base):
                        name = st.what if st.what == what else f"{what}: {st.what}"
                        plan = await explain(conn, case.key, page_url, st._replace(what=name), others)
                        out.append(replace(plan, principal=who))
    finally:
        await conn.close()
    return out


# -- report -------------------------------------------------------------------------------


def _median_int(values: list[int]) -> str:
    if not values:
        return "-"
    mid = statistics.median(values)
    return f"{mid:,.0f}" if min(values) == max(values) else f"{mid:,.0f} ({min(values):,}-{max(values):,})"


def _nth(k: int) -> str:
    return "slowest" if k == 1 else f"{k}th slowest" if k > 3 else ("2nd", "3rd")[k - 2] + " slowest"


def verdict(p50: float, target: float) -> str:
    return f"≤ {target:g}: {'meets' if p50 <= target else '**MISSES**'}"


def results_table(cases: list[Case], timings: dict[str, Timing]) -> list[str]:
    out = [
        "| query | values | matches | entries: match + include | p50 ms | p99 ms | p50 per round | target p50 ms |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for case in cases:
        t = timings[case.key]
        entries = f"{_median_int(t.matches)} + {_median_int(t.included)}"
        for page in range(case.pages):
            label = (case.label if case.pages == 1 else f"{case.label}: page {page + 1}").replace("|", "\\|")
            p50 = t.stat(page, 50)
            target = verdict(p50, case.target_ms)
            if page:
                ratio = p50 / t.stat(0, 50)
                target += f"; {ratio:.2f}x page 1 ({'ok' if ratio <= DEEP_PAGE_RATIO else '**slower**'})"
            out.append(
                f"| `{label}` | {case.varied if page == 0 else ''} | {_median_int(t.totals) if page == 0 else ''}"
                f" | {entries if page == 0 else ''} | {p50:.1f} | {t.stat(page, 99):.1f} | {t.spread(page)}"
                f" | {target} |"
            )
    return out


def plan_section(found: list[Plan]) -> list[str]:
    out: list[str] = []
    for p in found:
        out += [f"#### {p.case}, {p.what}", "", f"`{p.url}`", "", "```"]
        out += p.custom
        if p.cached_ms is None:
            out.append("(prepared-statement check not run for this statement)")
        elif p.cached is None:
            out.append(f"(prepared statement, 6th execution: same plan, {p.cached_ms:.1f} ms)")
        else:
            out += [f"(prepared statement, 6th execution: another plan, {p.cached_ms:.1f} ms:)", *p.cached]
        out += ["```", ""]
    return out


@dataclass
class Caller:
    """One principal the searches run as, and what was measured for it."""

    name: str  # "system" or "practitioner"
    token: str | None
    timings: dict[str, Timing] = field(default_factory=dict)
    cursors: dict[str, str] = field(default_factory=dict)  # case -> the last page's URL (for its plan)
    reach: dict[str, tuple[int, int]] = field(default_factory=dict)  # type -> (reached, all): practitioner


def _reach(callers: dict[str, Caller]) -> str:
    reach = callers["practitioner"].reach
    return ", ".join(f"{n:,} of {m:,} {t}s ({n / m:.0%})" if m > 0 else f"{n:,} {t}s" for t, (n, m) in reach.items())


def practitioner_lines(args: argparse.Namespace, callers: dict[str, Caller]) -> list[str]:
    """Who the practitioner is, its policy and what it reaches."""
    doc = json.dumps(practitioner.policy_document(), separators=(", ", ": "))
    system = "**system**, a system token from `ehr token` (`system/*.*`, no policy); " if "system" in callers else ""
    return [
        f"- principals: {system}"
        f"**practitioner**, user `{practitioner.USERNAME}` (fhirUser `{args.fhir_user}`) signed in through"
        " the authorization-code flow (login and consent pages, PKCE) of the public app"
        f" `{practitioner.CLIENT_ID}` with scopes `{' '.join(practitioner.SCOPES)}`, holding the policy"
        f" `{practitioner.POLICY}`; policy, app and user are made through the admin API at the start of the run"
        " (bench/practitioner.py)",
        f"- the policy: `{doc}`: every type of the records of the patients living in Greater Boston ZIP areas"
        " (the Synthea patients carry no `generalPractitioner` or `managingOrganization`, and each"
        " Organization or Practitioner their Encounters name belongs to one patient, so no practitioner or"
        " organisation reaches a sizeable share), of their Observations only vital signs and laboratory",
        f"- the practitioner reaches {_reach(callers)} (`Bundle.total` of `_summary=count` searches)",
    ]


def comparison_table(cases: list[Case], callers: dict[str, Caller]) -> list[str]:
    """System and practitioner side by side, per page, with the practitioner/system ratios."""
    s, p = callers["system"].timings, callers["practitioner"].timings
    out = [
        "| query | values | matches: system / practitioner | system p50 | system p95 | practitioner p50"
        " | practitioner p95 | policy / system p50 | policy / system p95 | target p50 ms (practitioner) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for case in cases:
        ts, tp = s[case.key], p[case.key]
        for page in range(case.pages):
            label = (case.label if case.pages == 1 else f"{case.label}: page {page + 1}").replace("|", "\\|")
            s50, s95, p50, p95 = ts.stat(page, 50), ts.stat(page, 95), tp.stat(page, 50), tp.stat(page, 95)
            matches = f"{_median_int(ts.totals)} / {_median_int(tp.totals)}" if page == 0 else ""
            out.append(
                f"| `{label}` | {case.varied if page == 0 else ''} | {matches} | {s50:.1f} | {s95:.1f} | {p50:.1f}"
                f" | {p95:.1f} | {p50 / s50:.2f} | {p95 / s95:.2f} | {verdict(p50, case.target_ms)} |"
            )
    return out


def ratio_lines(cases: list[Case], callers: dict[str, Caller]) -> list[str]:
    out = []
    for case in cases:
        for page in range(case.pages):
            s50 = callers["system"].timings[case.key].stat(page, 50)
            p50 = callers["practitioner"].timings[case.key].stat(page, 50)
            name = case.key if case.pages == 1 else f"{case.key} page {page + 1}"
            flag = " (**more than 2x**)" if p50 > 2 * s50 else ""
            out.append(f"- `{name}`: policy/system p50 {p50:.1f} / {s50:.1f} ms = **{p50 / s50:.2f}x**{flag}")
    return out


def scan_table(found: list[Plan]) -> list[str]:
    """Per statement: execution time and the tables read whole, for each principal."""
    by = {(p.case, p.what, p.principal): p for p in found}
    rows = dict.fromkeys((p.case, p.what) for p in found)
    out = [
        "| case | statement | system ms | practitioner ms | Seq Scan (system) | Seq Scan (practitioner) |",
        "|---|---|---:|---:|---|---|",
    ]
    for case, what in rows:
        cells = []
        for who in ("system", "practitioner"):
            plan = by.get((case, what, who))
            cells.append(plan)
        ms = [f"{c.custom_ms:.1f}" if c else "-" for c in cells]
        seq = [(", ".join(c.seq_scans) or "none") if c else "-" for c in cells]
        out.append(f"| {case} | {what} | {ms[0]} | {ms[1]} | {seq[0]} | {seq[1]} |")
    return out


def policy_plans(cases: list[Case], callers: dict[str, Caller], found: list[Plan]) -> list[str]:
    """The plans worth reading: of the cases whose practitioner p50 is more than 2x the
    system's (as each principal), else of the one case with the highest ratio (as the
    practitioner); the scan table above covers every statement."""
    s, p = callers["system"].timings, callers["practitioner"].timings
    ratios = {c.key: max(p[c.key].stat(page, 50) / s[c.key].stat(page, 50) for page in range(c.pages)) for c in cases}
    slower = [k for k, r in ratios.items() if r > 2]
    if slower:
        heading = "### Plans (practitioner) of the cases more than 2x slower with the policy"
    else:
        slower = [max(ratios, key=lambda k: ratios[k])]
        heading = (
            f"### Plans (practitioner) of the case slowest against the system principal ({ratios[slower[0]]:.2f}x)"
        )
    out = [
        heading,
        "",
        PLANS_TEXT,
        "",
        *plan_section([f for f in found if f.principal == "practitioner" and f.case in slower]),
    ]
    if ratios[slower[0]] > 2:
        out += [
            "### Plans (system) of the same cases",
            "",
            *plan_section([f for f in found if f.principal == "system" and f.case in slower]),
        ]
    return out


PLANS_TEXT = (
    "EXPLAIN (ANALYZE, BUFFERS) of the SQL the store runs for the search: `ResourceStore.search` itself"
    " runs it as the principal (its access predicate joined in, then `include_sql` over the page's rows)"
    " on a connection that records each statement, which is then explained through asyncpg with the same"
    " bind arguments (second run, warm cache), for the value whose latency was the case's median and, for"
    " a case that misses its target, its slowest value. Trimmed to node lines, estimated costs removed. The"
    " server's statements are prepared and PostgreSQL may switch a prepared statement to a generic plan"
    " from its sixth execution, so each page-1 statement is also PREPAREd, EXECUTEd with five other values"
    " of the case and then EXPLAIN EXECUTEd with this one; its plan is shown when it differs."
)


def report(
    args: argparse.Namespace,
    started: datetime,
    code: str,
    figures: Load | None,
    data: DataSet,
    cases: list[Case],
    callers: dict[str, Caller],
    found: list[Plan],
) -> str:
    types = ", ".join(f"{t} {n:,}" for t, n in data.by_type[:6])
    if figures is None:
        loaded = "- load: skipped (`--keep`: the database was loaded by an earlier run)"
    else:
        loaded = (
            f"- load: {figures.copies} copies written as gzipped Bundles in {figures.prepare_s:.1f} s;"
            f" `ehr import FOLDER` (default options) loaded {figures.loaded} resources in {figures.import_s:.1f} s"
            f" wall clock (process start and migrations included) and reported **{figures.reported_rate}"
            f" resources/s**; {figures.failures} failures"
        )
    both = len(callers) > 1
    what = "system principal against a practitioner with a criteria policy" if both else "search latency"
    quantile = 95 if both else 99
    lines = [
        f"## {started:%Y-%m-%d %H:%M} UTC: {what}, {data.resources:,} resources, PostgreSQL {data.pg_version}",
        "",
        f"- machine: {machine()}",
        f"- PostgreSQL: {data.pg_version} (system server, `{args.database_url}`), database size {data.size}",
        f"- server code: {code}; `ehr serve --workers 1 --log-level warning` with EHR_AUTH={args.auth}"
        + (" (every request carries a system token from `ehr token`)" if list(callers) == ["system"] else ""),
        f"- command: `{shlex.join(['python', 'bench/search.py', *sys.argv[1:]])}`",
        f"- data: {data.resources:,} resources ({types}, ...): the Synthea smart-r4 Bundles and the top-level"
        " Synthea files; copies after the first have every uuid replaced by a per-copy uuid5, each Patient"
        " the family name of the next Patient in file order, and shifted digits in SSN, licence and passport",
        loaded,
        f"- then `VACUUM (ANALYZE)`: {data.analyze_s:.1f} s",
    ]
    if both:
        lines += practitioner_lines(args, callers)
        lines += [
            "- values: picked from the patients the practitioner reaches (for `patient+code` from their"
            " vital-sign and laboratory Observations; for paging, codes of which the practitioner sees all five"
            " pages); both principals search the same URLs",
            f"- timing: httpx, one keep-alive connection per principal, sequential; per case and principal"
            f" {args.warmup} warm-up requests, then {args.reps} requests over its values; {args.rounds} rounds of"
            " all cases, interleaved: each case runs as one principal and at once as the other (system first in"
            " odd rounds, the practitioner first in even ones), so the machine's drift hits both alike; p50/p95 are"
            " the medians over rounds of each round's percentile (nearest rank)",
            "- matches: `Bundle.total` of the same search with `_summary=count` per distinct value (median, range)"
            " as each principal",
            "",
            f"Targets (p50): `name`, `patient+code`, `code+date` ≤ {SIMPLE_MS:g} ms; every search ≤ {ANY_MS:g} ms;"
            " here checked for the practitioner.",
            "",
            *comparison_table(cases, callers),
            "",
            "### Policy / system p50 per case",
            "",
            *ratio_lines(cases, callers),
            "",
            "### Plans: sequential scans",
            "",
            "Execution time of each statement's EXPLAIN ANALYZE (below) as each principal for the same value (the"
            " practitioner's median), and whether its plan (custom, or the prepared statement's 6th execution)"
            " reads `resource` or an index table (`search_*`) with a Seq Scan.",
            "",
            *scan_table(found),
            "",
            *policy_plans(cases, callers, found),
        ]
        return "\n".join(lines)
    timings = next(iter(callers.values())).timings
    if "practitioner" in callers:
        lines += practitioner_lines(args, callers)
    lines += [
        f"- timing: httpx, one connection, sequential; per case {args.warmup} warm-up requests, then"
        f" {args.reps} requests over its values; {args.rounds} rounds of all cases; p50/p99 are the medians over"
        " rounds of each round's percentile (nearest rank: with"
        f" {args.reps} requests the p99 is a round's {_nth(args.reps - math.ceil(quantile / 100 * args.reps) + 1)}),"
        " 'p50 per round' the range of the rounds' p50",
        "- matches: `Bundle.total` of the same search with `_summary=count` per distinct value (median, range);"
        " entries: median per response (for paging: page 1)",
        "",
        f"Targets (p50): `name`, `patient+code`, `code+date` ≤ {SIMPLE_MS:g} ms; every search ≤ {ANY_MS:g} ms;"
        f" a deep page ≤ {DEEP_PAGE_RATIO}x page 1.",
        "",
        *results_table(cases, timings),
        "",
        "### Plans",
        "",
        PLANS_TEXT,
        *plan_section(found),
    ]
    return "\n".join(lines)


HISTORY_CASES = ("name", "patient+code", "code+date", "chain", "revinclude enc", "sort", "paging")


def summary(started: datetime, code: str, figures: Load | None, callers: dict[str, Caller]) -> str:
    """The history-table row of this run: page-1 p50 of the cases the table follows (the
    system principal's when it ran), with the policy/system ratios in the notes."""
    timings = (callers.get("system") or next(iter(callers.values()))).timings
    cells = " | ".join(f"{timings[k].stat(0, 50):.1f}" if k in timings else "-" for k in HISTORY_CASES)
    notes = [f"import {figures.reported_rate}/s"] if figures else []
    if len(callers) > 1:
        p = callers["practitioner"].timings
        ratios = sorted((p[k].stat(0, 50) / timings[k].stat(0, 50), k) for k in timings)
        notes.append(
            f"practitioner with a criteria policy / system p50: median {statistics.median(r for r, _ in ratios):.2f}x,"
            f" max {ratios[-1][0]:.2f}x ({ratios[-1][1]})"
        )
    elif "practitioner" in callers:
        notes.append("as the practitioner with a criteria policy")
    return f"| {started:%Y-%m-%d %H:%M} | {short_code(code)} | {cells} | {'; '.join(notes)} |"


# -- main ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--database-url", default=DATABASE_URL, help=f"dropped and created again ({DATABASE_URL})")
    p.add_argument("--keep", action="store_true", help="reuse the loaded database: skip loading")
    p.add_argument("--synthea", type=Path, default=SYNTHEA, help=f"Synthea folder ({SYNTHEA})")
    p.add_argument("--min-resources", type=int, default=100_000, help="copy the data until this many (100000)")
    p.add_argument("--reps", type=int, default=60, help="timed requests per case and round (60)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of all cases; medians are reported (3)")
    p.add_argument("--warmup", type=int, default=5, help="untimed requests per case and round (5)")
    p.add_argument("--seed", type=int, default=1, help="seed for picking values")
    p.add_argument("--cases", type=lambda t: [x for x in t.split(",") if x], help="only these, e.g. name,paging")
    p.add_argument("--auth", choices=["on", "off"], default="on", help="EHR_AUTH of the server (on: with a token)")
    p.add_argument(
        "--principal",
        type=lambda t: list(dict.fromkeys(x for x in t.split(",") if x)),
        default=["system"],
        help="who searches: system, practitioner (a user with a criteria access policy) or both, interleaved",
    )
    p.add_argument("--no-results", action="store_true", help="do not record in RESULTS.md")
    args = p.parse_args(argv)
    if args.reps < 50:
        p.error("--reps must be at least 50")
    if not args.principal or set(args.principal) - {"system", "practitioner"}:
        p.error("--principal takes system, practitioner or system,practitioner")
    if "practitioner" in args.principal and args.auth == "off":
        p.error("--principal practitioner needs --auth on (a user token)")
    return args


async def _first_practitioner(url: str) -> str:
    """A Practitioner of the data set for the user's fhirUser (the policy does not use it)."""
    conn = await asyncpg.connect(url)
    try:
        rid = await conn.fetchval(
            "SELECT id FROM resource WHERE resource_type = 'Practitioner' AND NOT deleted ORDER BY id LIMIT 1"
        )
    finally:
        await conn.close()
    return f"Practitioner/{rid or 'bench'}"


def total_of(client: httpx.Client, url: str) -> int:
    return int(client.get(url + ("&" if "?" in url else "?") + "_summary=count").json()["total"])


def reached_patients(client: httpx.Client) -> list[str]:
    """Ids of every Patient a principal reaches, following `next`."""
    ids: list[str] = []
    following: str | None = "Patient?_count=1000&_elements=id"
    while following is not None:
        bundle = client.get(following).raise_for_status().json()
        ids += [e["resource"]["id"] for e in bundle.get("entry", [])]
        following = next((lk["url"] for lk in bundle.get("link", []) if lk["relation"] == "next"), None)
    return ids


async def all_plans(args: argparse.Namespace, cases: list[Case], callers: dict[str, Caller], base: str) -> list[Plan]:
    """Plans of every principal for the same values: the practitioner's median ones when it ran."""
    from headless_ehr.auth.principal import SYSTEM

    picks = (callers.get("practitioner") or callers["system"]).timings
    found: list[Plan] = []
    for who, caller in callers.items():
        principal: Any = SYSTEM
        if who == "practitioner":
            assert caller.token is not None
            conn = await asyncpg.connect(args.database_url)
            try:
                principal = await practitioner.principal_of_token(conn, caller.token)
            finally:
                await conn.close()
        found += await plans(args.database_url, cases, picks, caller.cursors, who, principal, base)
    return found


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.now(UTC)
    work = Path(tempfile.mkdtemp(prefix="ehrs-", dir="/tmp"))
    code = snapshot_code(work / "code")
    sys.path.insert(0, str(work / "code"))  # plans come from the same code the server runs
    env = dict(os.environ)
    env["PYTHONPATH"] = ":".join(filter(None, [str(work / "code"), env.get("PYTHONPATH")]))
    env["EHR_DATABASE_URL"] = args.database_url
    bench_admin_client(env)  # the database may have its admin client from an earlier run (--keep)
    server: Served | None = None
    try:
        figures = None if args.keep else load(args, env, work)
        data = asyncio.run(describe(args.database_url))
        port = free_port()
        cmd = ["ehr", "serve", *opts(host="127.0.0.1", port=port, data_dir=work / "serve")]
        cmd += opts(workers=1, log_level="warning")
        served_env = server_env(env, args.auth)
        server = Served("ehr serve", cmd, served_env, work / "server.log")
        server.start()
        origin = f"http://127.0.0.1:{port}"
        base = f"{origin}{PREFIX}/"
        admin = access_token(served_env, port) if args.auth == "on" else None
        callers = {"system": Caller("system", admin)} if "system" in args.principal else {}
        if "practitioner" in args.principal:
            assert admin is not None
            args.fhir_user = asyncio.run(_first_practitioner(args.database_url))
            password = practitioner.register(origin, admin, args.fhir_user)
            callers["practitioner"] = Caller("practitioner", practitioner.sign_in(origin, base.rstrip("/"), password))
        callers = {who: callers[who] for who in args.principal}
        with contextlib.ExitStack() as stack:
            clients: dict[str, httpx.Client] = {}
            for who, caller in callers.items():
                headers = {"Accept": "application/fhir+json"}
                if caller.token is not None:
                    headers["Authorization"] = f"Bearer {caller.token}"
                clients[who] = stack.enter_context(
                    httpx.Client(base_url=base, headers=headers, trust_env=False, timeout=120)
                )
            restricted = clients.get("practitioner")
            visible = None if restricted is None else reached_patients(restricted)
            total = None if restricted is None else (lambda url: total_of(restricted, url))
            cases = asyncio.run(pick_values(args.database_url, args.reps, args.seed, visible, total))
            unknown = set(args.cases or []) - {c.key for c in cases}
            if unknown:
                raise SystemExit(f"unknown case(s) {sorted(unknown)}; cases: {', '.join(c.key for c in cases)}")
            cases = [c for c in cases if args.cases is None or c.key in args.cases]
            if restricted is not None:
                for rtype in ("Patient", "Observation", "Encounter"):
                    every = total_of(clients["system"], rtype) if "system" in clients else -1
                    callers["practitioner"].reach[rtype] = (total_of(restricted, rtype), every)
            for who, caller in callers.items():
                caller.timings = {c.key: Timing() for c in cases}
                for case in cases:
                    count_matches(clients[who], case, caller.timings[case.key])
            order = list(callers)
            for r in range(args.rounds):
                for case in cases:
                    for who in order if r % 2 == 0 else order[::-1]:
                        t = callers[who].timings[case.key]
                        run_case(clients[who], case, args.warmup, t)
                        print(
                            f"round {r + 1} {who:12} {case.key:15} p50 {statistics.median(t.rounds[-1][0]):8.1f} ms"
                            f"  p95 {percentile(t.rounds[-1][0], 95):8.1f} ms",
                            file=sys.stderr,
                            flush=True,
                        )
            picks = (callers.get("practitioner") or next(iter(callers.values()))).timings
            for who, caller in callers.items():
                for case in cases:
                    if case.pages > 1:  # the cursor of the last page, for its plan
                        following: str | None = picks[case.key].median_url()
                        for _ in range(case.pages - 1):
                            assert following is not None
                            following = get(clients[who], following).next_url
                        assert following is not None
                        caller.cursors[case.key] = following.removeprefix(base)
        server.stop()
        server = None
        found = asyncio.run(all_plans(args, cases, callers, base.rstrip("/")))
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    text = report(args, started, code, figures, data, cases, callers, found)
    print(text)
    if not args.no_results:
        results.record("search", text, summary(started, code, figures, callers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
