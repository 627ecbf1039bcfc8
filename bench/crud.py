"""Create, read and update throughput and latency of a real `ehr serve`, next to two floors.

    python bench/crud.py [--duration 10] [--clients 1,8,32] [--workers 1,2] [--auth on,off]
                         [--audit on,off] [--cases create,read,update] [--database-url URL] [--keep]

Starts `ehr serve` (embedded PostgreSQL unless --database-url) for each worker count and
each --auth mode (EHR_AUTH=on: every request carries a system token from `ehr token`;
off: none) and each --audit mode (EHR_AUDIT), times its cold and warm start to the first answered GET /fhir/metadata,
seeds Patients, then runs every case at every client count with wrk (bench/wrk/fhir.lua)
or, without wrk, bench/loadgen.py. With both modes, the report compares them.
The floors are asyncpg alone against the same PostgreSQL (bench/pgfloor.py) and an
empty Starlette app under the same uvicorn settings (bench/empty_app.py). Prints a
Markdown report and records it in bench/RESULTS.md. See bench/README.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import loadgen
import pgfloor
import results
from loadgen import LoadResult

BENCH = Path(__file__).resolve().parent
PREFIX = "/fhir"
TARGETS = {"read": 2500.0, "create": 800.0}  # req/s at 8 clients
TOKEN_TARGET = 0.90  # with tokens, at least this share of the req/s without (read, create at 8 clients)
AUDIT_TARGET = 0.90  # with audit, at least this share of the req/s without (read at 8 clients)
AUTH_MODES = ("on", "off")
NO_AUDIT = " noaudit"  # a server's mode label: "on", "off", "on noaudit" (EHR_AUDIT=off)
# Every server runs with these. The limiter runs in both modes (0 would skip it; 10**9 is the
# largest allowed and never throttles), and one token outlives any run.
SERVER_ENV = {"EHR_RATE_LIMIT_PER_MINUTE": "1000000000", "EHR_ACCESS_TOKEN_LIFETIME": "3600"}
TOKEN_RENEW_S = 1800  # ask for a new token when the one in use is older than this
PATIENT: dict[str, object] = {
    "resourceType": "Patient",
    "identifier": [
        {
            "use": "usual",
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
            "system": "http://hospital.example.org/mrn",
            "value": "MRN-0048213",
        }
    ],
    "active": True,
    "name": [{"use": "official", "family": "Chalmers", "given": ["Peter", "James"]}],
    "telecom": [
        {"system": "phone", "value": "+1 555 0100 231", "use": "home"},
        {"system": "email", "value": "peter.chalmers@example.org"},
    ],
    "gender": "male",
    "birthDate": "1974-12-25",
    "address": [
        {
            "use": "home",
            "line": ["534 Erewhon St"],
            "city": "PleasantVille",
            "postalCode": "3999",
            "country": "AU",
        }
    ],
}
_TICK = os.sysconf("SC_CLK_TCK")
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy


@dataclass
class Run:
    """One measured run: a target (server/pg/asgi) doing a case at a client count."""

    target: str
    workers: int
    case: str
    clients: int
    result: LoadResult
    server_cpu: float | None  # CPU cores used (CPU-seconds per wall second)
    pg_cpu: float | None
    auth: str = "-"  # EHR_AUTH of the server (on/off); "-" for the floors


def tree_cpu_seconds(root: int) -> float:
    """utime+stime (and that of reaped children) of a process and all its descendants."""
    stats: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                text = (entry / "stat").read_text()
            except OSError:
                continue
            fields = text[text.rindex(")") + 2 :].split()
            stats[int(entry.name)] = (int(fields[1]), sum(map(int, fields[11:15])) / _TICK)
    children: dict[int, list[int]] = defaultdict(list)
    for pid, (ppid, _) in stats.items():
        children[ppid].append(pid)
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += stats.get(pid, (0, 0.0))[1]
        todo += children[pid]
    return total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """A server process (ehr serve or the empty app) on 127.0.0.1:port."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.cmd, self.env, self.log = name, cmd, env, log
        self.port = int(cmd[cmd.index("--port") + 1])
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120) -> float:
        """Start and return the seconds until GET /fhir/metadata first answered 200."""
        url = f"http://127.0.0.1:{self.port}{PREFIX}/metadata"
        with self.log.open("ab") as log:
            t0 = time.perf_counter()
            self.proc = subprocess.Popen(
                self.cmd,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        while time.perf_counter() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}); see {self.log}")
            try:
                with _HTTP.open(url, timeout=2) as answer:
                    if answer.status == 200:
                        return time.perf_counter() - t0
            except OSError:
                pass
            time.sleep(0.01)
        raise RuntimeError(f"{self.name} did not answer {url} within {timeout} s")

    def stop(self) -> None:
        """Ctrl-C (SIGINT), as a person would; then SIGKILL if it will not go."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def stop_left_postgres(pgdata: Path) -> bool:
    """Stop an embedded postmaster the server left running; True when there was one."""
    pidfile = pgdata / "postmaster.pid"
    try:
        pid = int(pidfile.read_text().split()[0])
        os.kill(pid, signal.SIGINT)  # PostgreSQL's fast shutdown
    except (OSError, ValueError, IndexError):
        return False
    for _ in range(300):
        if not Path(f"/proc/{pid}").exists():
            break
        time.sleep(0.1)
    return True


def embedded_dsn(pgdata: Path) -> str:
    """The DSN of the running embedded cluster, from its postmaster.pid (socket dir, port)
    and the generated password beside it (clusters made before passwords have none)."""
    from headless_ehr.db.embedded import DATABASE

    lines = (pgdata / "postmaster.pid").read_text().splitlines()
    secret = pgdata.parent / "postgres.password"
    user = f"postgres:{quote(secret.read_text().strip(), safe='')}" if secret.exists() else "postgres"
    return f"postgresql://{user}@/{DATABASE}?host={quote(lines[4], safe='/')}&port={lines[3]}"


def measured(cmd: list[str]) -> tuple[str, float]:
    """Run cmd to the end; return its stdout and the CPU seconds it used (from wait4)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        text, errors = out.read().decode(), err.read().decode()
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed ({proc.returncode}): {errors[-2000:]}")
    return text, usage.ru_utime + usage.ru_stime


def server_env(env: dict[str, str], mode: str) -> dict[str, str]:
    """The environment of an `ehr serve` (and of `ehr token` for it) in a mode: "on"/"off"
    (EHR_AUTH), with " noaudit" for EHR_AUDIT=off."""
    auth = mode.removesuffix(NO_AUDIT)
    return {**env, **SERVER_ENV, "EHR_AUTH": auth, "EHR_AUDIT": "off" if mode.endswith(NO_AUDIT) else "on"}


def modes(args: argparse.Namespace) -> list[str]:
    """The servers to run, in order: --auth and --audit paired (a one-item list repeats)."""
    n = max(len(args.auth), len(args.audit))
    auth = args.auth * n if len(args.auth) == 1 else args.auth
    audit = args.audit * n if len(args.audit) == 1 else args.audit
    return [a + ("" if b == "on" else NO_AUDIT) for a, b in zip(auth, audit, strict=True)]


def bench_admin_client(env: dict[str, str]) -> None:
    """Admin client credentials for servers on an external database, unless already set.

    The server writes admin-client.json into its data dir only when it creates the first
    admin client of an empty database; a database an earlier run (or another worker count)
    used already has one, so the bench names its own (the server makes or resets it)."""
    if not env.get("EHR_ADMIN_CLIENT_ID"):
        env["EHR_ADMIN_CLIENT_ID"] = "bench-admin"
        env["EHR_ADMIN_CLIENT_SECRET"] = secrets.token_urlsafe(32)


def access_token(env: dict[str, str], port: int, data_dir: Path | None = None) -> str:
    """A system access token from `ehr token`, run with env (the bench's code snapshot)
    against the server on 127.0.0.1:port, from data_dir's admin-client.json or the
    EHR_ADMIN_CLIENT_ID/SECRET in env."""
    cmd = ["ehr", "token", *opts(url=f"http://127.0.0.1:{port}{PREFIX}")]
    if data_dir is not None:
        cmd += opts(data_dir=data_dir)
    env = {**env, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    token = done.stdout.strip()
    if done.returncode != 0 or not token or len(token.split()) != 1:
        raise RuntimeError(f"{shlex.join(cmd)} failed ({done.returncode}): {done.stderr[-2000:]}")
    return token


class Generator:
    """wrk with bench/wrk/fhir.lua when installed, else bench/loadgen.py."""

    def __init__(self, choice: str) -> None:
        wrk = shutil.which("wrk")
        if choice == "wrk" and not wrk:
            raise SystemExit("--generator wrk: wrk is not installed (apt-get install wrk)")
        self.wrk = wrk if choice in ("auto", "wrk") else None
        if self.wrk:
            ver = subprocess.run([self.wrk, "-v"], capture_output=True, text=True)
            version = (ver.stdout + ver.stderr).split("[")[0].strip()
            self.label = f"{version}, 1 thread, Lua script bench/wrk/fhir.lua"
        else:
            self.label = "bench/loadgen.py (Python asyncio streams on uvloop, 1 process)"

    def run(
        self, port: int, case: str, clients: int, duration: int, files: Files, token: str | None = None
    ) -> LoadResult:
        """One closed-loop run; with a token, every request carries it as a Bearer token."""
        body = str(files.create if case == "create" else files.update)
        if self.wrk:
            script = str(BENCH / "wrk" / "fhir.lua")
            cmd = [self.wrk, "-t1", f"-c{clients}", f"-d{duration}s", "--timeout", "10s"]
            cmd += ["--latency", "-s", script, f"http://127.0.0.1:{port}"]
            cmd += ["--", case, body, str(files.ids), PREFIX, token or ""]
            out, cpu = measured(cmd)
            line = next(x for x in out.splitlines() if x.startswith("BENCH_JSON "))
            result = LoadResult(**json.loads(line.removeprefix("BENCH_JSON ")))
            result.cpu_s = cpu
            return result
        cmd = [sys.executable, str(BENCH / "loadgen.py"), *opts(port=port, case=case)]
        cmd += opts(clients=clients, duration=duration, prefix=PREFIX, body=body, ids=files.ids)
        cmd += opts(token=token) if token else []
        out, _ = measured(cmd)
        return LoadResult(**json.loads(out.splitlines()[-1]))  # cpu_s: the run only


@dataclass
class Files:
    create: Path
    update: Path
    ids: Path
    pg_ids: Path


def sweep(
    target: str,
    workers: int,
    args: argparse.Namespace,
    one: Callable[[str, int], LoadResult],
    server_pid: int | None,
    pg_pid: int | None,
    runs: list[Run],
    auth: str = "-",
) -> None:
    """Every case at every client count, with the CPU of server and PostgreSQL around it."""
    for case in args.cases:
        for clients in args.clients:
            s0 = tree_cpu_seconds(server_pid) if server_pid else 0.0
            p0 = tree_cpu_seconds(pg_pid) if pg_pid else 0.0
            result = one(case, clients)
            wall = result.seconds or args.duration
            s_cpu = (tree_cpu_seconds(server_pid) - s0) / wall if server_pid else None
            p_cpu = (tree_cpu_seconds(pg_pid) - p0) / wall if pg_pid else None
            runs.append(Run(target, workers, case, clients, result, s_cpu, p_cpu, auth))
            gen = result.cpu_s / wall if result.cpu_s is not None else float("nan")
            print(
                f"  {target:6} w={workers} auth {auth:3} {case:6} c={clients:<3} {result.rps:9.1f}/s"
                f"  p50 {result.p50_ms:7.2f} ms  p99 {result.p99_ms:7.2f} ms"
                f"  errors {result.errors}  gen {gen:.2f} cores",
                file=sys.stderr,
                flush=True,
            )


def profile(pid: int, seconds: float, out: Path, subprocesses: bool) -> subprocess.Popen[bytes]:
    """Start py-spy record (raw collapsed stacks) on the server for `seconds`."""
    spy = shutil.which("py-spy")
    if not spy:
        raise SystemExit("--profile needs py-spy (pip install py-spy)")
    cmd = [spy, "record", "-p", str(pid), "-d", str(int(seconds)), "-r", "200", "--nonblocking"]
    cmd += ["-f", "raw", "-o", str(out)]
    if subprocesses:
        cmd.append("--subprocesses")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # let py-spy attach before the load starts
    return proc


_PROCESS_FRAME = re.compile(r'^process \d+:"[^"]*";')  # py-spy --subprocesses prefix
_PACKAGES = {
    "headless_ehr/": "headless_ehr",
    "starlette/": "starlette",
    "uvicorn/": "uvicorn",
    "asyncpg/": "asyncpg",
    "asyncio/runners.py": "event loop (uvloop C code under Runner.run)",
}


def profile_summary(raw: Path, top: int = 15) -> str:
    """Where the server's samples went, from py-spy's raw (collapsed) stacks.

    Self time is charged to the frame on top of the Python stack, so a line that calls
    C (asyncpg's protocol, uvloop's transport) carries that C time too.
    """
    own: dict[str, int] = defaultdict(int)
    by_package: dict[str, int] = defaultdict(int)
    app: dict[str, int] = defaultdict(int)  # inclusive, headless_ehr frames only
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = _PROCESS_FRAME.sub("", stack).split(";")
        own[frames[-1]] += n
        package = next((v for k, v in _PACKAGES.items() if k in frames[-1]), "other")
        by_package[package] += n
        for frame in {f for f in frames if "headless_ehr/" in f and "/cli.py" not in f}:
            app[frame] += n
    if not total:
        return "(py-spy recorded no samples)"

    def rows(counts: dict[str, int], limit: int, what: str = "frame") -> list[str]:
        ranked = sorted(counts.items(), key=lambda kv: -kv[1])[:limit]
        return [f"| share | {what} |", "|---:|---|"] + [
            f"| {100 * n / total:.1f}% | `{frame}` |" for frame, n in ranked
        ]

    return "\n".join(
        [
            f"{total} samples at 200/s, taken while the server was running (not waiting).",
            "",
            "Self time by package:",
            "",
            *rows(by_package, 10, "package"),
            "",
            "Self time by frame (top of the Python stack):",
            "",
            *rows(own, top),
            "",
            "Inclusive time of headless_ehr frames:",
            "",
            *rows(app, top),
        ]
    )


def machine() -> str:
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    cores = os.cpu_count()
    return f"{cores} cores, {mem_kb / 2**20:.1f} GiB, {cpu}, Python {platform.python_version()}"


def fmt_ratio(run: Run, floor: Run | None) -> str:
    if floor is None or not floor.result.rps:
        return "-"
    return f"{run.result.rps / floor.result.rps:.2f} of {floor.result.rps:,.0f}/s"


def fmt_cores(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def gen_cores(run: Run) -> str:
    r = run.result
    return fmt_cores(r.cpu_s / r.seconds if r.cpu_s is not None and r.seconds else None)


def table(runs: list[Run], floors: dict[tuple[str, int, str, int], Run]) -> list[str]:
    head = (
        "| auth | case | clients | req/s | p50 ms | p99 ms | errors | vs PG floor | vs ASGI floor"
        " | gen CPU | server CPU | PG CPU |"
    )
    out = [head, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for run in runs:
        r = run.result
        pg = floors.get(("pg", 0, run.case, run.clients))
        asgi = floors.get(("asgi", run.workers, run.case, run.clients))
        out.append(
            f"| {run.auth} | {run.case} | {run.clients} | {r.rps:,.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f}"
            f" | {r.errors} | {fmt_ratio(run, pg)} | {fmt_ratio(run, asgi)} | {gen_cores(run)}"
            f" | {fmt_cores(run.server_cpu)} | {fmt_cores(run.pg_cpu)} |"
        )
    return out


def floor_table(runs: list[Run]) -> list[str]:
    out = [
        "| floor | case | clients | req/s | p50 ms | p99 ms | errors | gen CPU | server CPU | PG CPU |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        r = run.result
        name = "asyncpg" if run.target == "pg" else f"empty ASGI, {run.workers} worker(s)"
        out.append(
            f"| {name} | {run.case} | {run.clients} | {r.rps:,.0f} | {r.p50_ms:.2f}"
            f" | {r.p99_ms:.2f} | {r.errors} | {gen_cores(run)} | {fmt_cores(run.server_cpu)}"
            f" | {fmt_cores(run.pg_cpu)} |"
        )
    return out


def short_code(code: str) -> str:
    """'commit abc1234 + uncommitted …' -> 'abc1234+', for a history row."""
    found = re.search(r"commit (\w+)", code)
    return (found.group(1) + ("+" if "uncommitted" in code else "")) if found else "?"


def at8(runs: list[Run], workers: int, auth: str, case: str) -> list[float]:
    """req/s of the server runs of a case at 8 clients with these workers and auth mode
    (several when --auth names a mode more than once)."""
    return [
        r.result.rps
        for r in runs
        if r.target == "server" and r.workers == workers and r.auth == auth and r.case == case and r.clients == 8
    ]


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def token_ratios(runs: list[Run], workers: int) -> dict[str, float]:
    """mean req/s with tokens / mean req/s with EHR_AUTH=off, per case, at 8 clients."""
    ratios = {}
    for case in ("read", "create", "update"):
        on, off = at8(runs, workers, "on", case), at8(runs, workers, "off", case)
        if on and off and mean(off):
            ratios[case] = mean(on) / mean(off)
    return ratios


def summary(bench: Bench, started: datetime) -> str:
    """The history-table row of this run: req/s at 8 clients on the first worker count and
    auth mode, and with both modes the ratio tokens/off."""
    workers, auth = bench.args.workers[0], modes(bench.args)[0]
    rps = {}
    for case in ("create", "read", "update"):
        found = at8(bench.runs, workers, auth, case)
        if found:
            rps[case] = f"{mean(found):,.0f}"
    cells = " | ".join(rps.get(case, "-") for case in ("create", "read", "update"))
    note = f"{bench.pg_label}, {workers} worker(s), auth {auth}"
    ratios = token_ratios(bench.runs, workers)
    if ratios:
        note += "; tokens/off: " + ", ".join(f"{case} {ratio:.2f}" for case, ratio in ratios.items())
    ratios = audit_ratios(bench.runs, workers)
    if ratios:
        note += "; audit/off: " + ", ".join(f"{case} {ratio:.2f}" for case, ratio in ratios.items())
    return f"| {started:%Y-%m-%d %H:%M} | {short_code(bench.code)} | {cells} | {note} |"


def rates(values: list[float]) -> str:
    """'1,234/s', or with several runs 'mean 1,234/s (1,200, 1,268)'."""
    if len(values) == 1:
        return f"{values[0]:,.0f}/s"
    return f"mean {mean(values):,.0f}/s ({', '.join(f'{v:,.0f}' for v in values)})"


def audit_ratios(runs: list[Run], workers: int) -> dict[str, float]:
    """mean req/s with audit / mean req/s with EHR_AUDIT=off (both with tokens), per case, at 8 clients."""
    ratios = {}
    for case in ("read", "create", "update"):
        on, off = at8(runs, workers, "on", case), at8(runs, workers, "on" + NO_AUDIT, case)
        if on and off and mean(off):
            ratios[case] = mean(on) / mean(off)
    return ratios


def cpu_per_request(runs: list[Run], workers: int, auth: str, case: str) -> str:
    """Mean CPU per request (µs) of the server's processes and of PostgreSQL's, at 8 clients:
    steadier than req/s on a shared machine, since other work there slows but does not bill it."""
    found = [
        r
        for r in runs
        if r.target == "server" and r.workers == workers and r.auth == auth and r.case == case and r.clients == 8
    ]
    found = [r for r in found if r.result.rps and r.server_cpu is not None and r.pg_cpu is not None]
    if not found:
        return "-"
    server = mean([1e6 * r.server_cpu / r.result.rps for r in found])  # type: ignore[operator]
    pg = mean([1e6 * r.pg_cpu / r.result.rps for r in found])  # type: ignore[operator]
    return f"server {server:.0f} µs + PostgreSQL {pg:.0f} µs"


def audit_section(runs: list[Run], workers_list: list[int]) -> list[str]:
    """Every case at 8 clients with the audit trail against the same build with EHR_AUDIT=off."""
    lines = []
    for workers in workers_list:
        for case, ratio in audit_ratios(runs, workers).items():
            on, off = at8(runs, workers, "on", case), at8(runs, workers, "on" + NO_AUDIT, case)
            verdict = ""
            if case == "read":
                verdict = ": meets the target" if ratio >= AUDIT_TARGET else ": MISSES the target"
            lines.append(
                f"- workers {workers}, {case} at 8 clients: {rates(on)} with audit, {rates(off)} with"
                f" EHR_AUDIT=off: {ratio:.3f}, {abs(100 * (1 - ratio)):.1f}% {'fewer' if ratio <= 1 else 'more'}"
                f" with audit{verdict}; CPU per request {cpu_per_request(runs, workers, 'on', case)} with audit,"
                f" {cpu_per_request(runs, workers, 'on' + NO_AUDIT, case)} without"
            )
    if not lines:
        return []
    return [
        "### Audit against EHR_AUDIT=off",
        "",
        f"Target: with the audit trail at most {100 * (1 - AUDIT_TARGET):.0f}% fewer reads per second than the"
        " same build with EHR_AUDIT=off, both with tokens (read at 8 clients). With audit every request's"
        " AuditEvent is committed to the hash chain before its response is sent (docs/security.md, Audit);"
        " a mode named more than once is compared by its mean.",
        "",
        *lines,
        "",
    ]


def token_section(runs: list[Run], workers_list: list[int]) -> list[str]:
    """Read and create at 8 clients with tokens against the same build with EHR_AUTH=off."""
    lines = []
    for workers in workers_list:
        ratios = token_ratios(runs, workers)
        for case in ("read", "create"):
            if case not in ratios:
                continue
            on, off = at8(runs, workers, "on", case), at8(runs, workers, "off", case)
            verdict = "meets" if ratios[case] >= TOKEN_TARGET else "MISSES"
            lines.append(
                f"- workers {workers}, {case} at 8 clients: {rates(on)} with tokens,"
                f" {rates(off)} with EHR_AUTH=off: {ratios[case]:.3f},"
                f" {abs(100 * (1 - ratios[case])):.1f}% {'fewer' if ratios[case] <= 1 else 'more'}"
                f" with tokens: {verdict} the target"
            )
    if not lines:
        return []
    return [
        "### Tokens against EHR_AUTH=off",
        "",
        f"Target: with tokens at most {100 * (1 - TOKEN_TARGET):.0f}% fewer requests per second than the same"
        " build with EHR_AUTH=off (read and create at 8 clients). Both modes run with"
        f" EHR_RATE_LIMIT_PER_MINUTE={SERVER_ENV['EHR_RATE_LIMIT_PER_MINUTE']} (the limiter counts every request"
        " but never throttles) and EHR_ACCESS_TOKEN_LIFETIME="
        f"{SERVER_ENV['EHR_ACCESS_TOKEN_LIFETIME']}; with tokens every request, seeding included, carries"
        " one system token from `ehr token`, verified by the server (its verified-token cache after the first"
        " request), and is counted by the per-client limiter as well. A mode named more than once in --auth"
        " (e.g. on,off,off,on, against drift on a shared machine) is compared by its mean.",
        "",
        *lines,
        "",
    ]


def report(bench: Bench, started: datetime) -> str:
    args, gen, runs = bench.args, bench.gen, bench.runs
    now = started.strftime("%Y-%m-%d %H:%M UTC")
    floors = {(r.target, r.workers, r.case, r.clients): r for r in runs if r.target != "server"}
    lines = [
        f"## {now}: {bench.pg_label}, workers {','.join(map(str, args.workers))}, auth {','.join(modes(args))}",
        "",
        f"- machine: {machine()}",
        f"- PostgreSQL: {bench.pg_label}",
        f"- server code: {bench.code} (a copy taken at the start serves every run)",
        f"- command: `{shlex.join(['python', 'bench/crud.py', *sys.argv[1:]])}`",
        f"- generator: {gen.label}",
        f"- {args.duration:g} s per run; {args.seed} Patients seeded for read/update;"
        f" server runs with `--log-level warning`, no access log,"
        f" {', '.join(f'{k}={v}' for k, v in SERVER_ENV.items())}",
        "- auth on: EHR_AUTH=on and a system token from `ehr token` on every request (seeding too);"
        " auth off: EHR_AUTH=off, no token; EHR_AUDIT=on unless the mode says noaudit (EHR_AUDIT=off)",
        *[f"- start-up to the first answered request, {s}" for s in bench.starts],
        *(
            ["- PYTHONDONTWRITEBYTECODE is set: every start compiles the sources"]
            if os.environ.get("PYTHONDONTWRITEBYTECODE")
            else []
        ),
        "",
    ]
    for w in args.workers:
        server = [r for r in runs if r.target == "server" and r.workers == w]
        if server:
            lines += [f"### ehr serve --workers {w}", "", *table(server, floors), ""]
    lines += token_section(runs, args.workers)
    lines += audit_section(runs, args.workers)
    floor_runs = [r for r in runs if r.target != "server"]
    if floor_runs:
        lines += ["### Floors", "", *floor_table(floor_runs), ""]
    verdicts = []
    judged = "on" if "on" in args.auth else args.auth[0]  # the targets hold for the server as deployed
    for case, target in TARGETS.items():
        best = max(
            (r for r in runs if r.target == "server" and r.auth == judged and r.case == case and r.clients == 8),
            key=lambda r: r.result.rps,
            default=None,
        )
        if best is not None:
            ok = "meets" if best.result.rps >= target else "MISSES"
            verdicts.append(
                f"- {case} at 8 clients: {best.result.rps:,.0f}/s (workers"
                f" {best.workers}, auth {judged}) {ok} the target of {target:,.0f}/s"
            )
    if verdicts:
        lines += [
            "### Targets",
            "",
            "Targets at 8 clients: read ≥ 2,500/s, create ≥ 800/s"
            " (for scale, Medplum on this kind of machine: ~370 reads/s, ~185 creates/s).",
            "",
            *verdicts,
            "",
        ]
    errors = [r for r in runs if r.result.errors]
    if errors or bench.notes:
        lines += ["### Errors and notes", ""]
        lines += [
            f"- {r.target} w={r.workers} auth {r.auth} {r.case} c={r.clients}: {r.result.errors} errors"
            f" {r.result.error_kinds}"
            for r in errors
        ]
        lines += [f"- {n}" for n in bench.notes]
        lines.append("")
    for spec, workers, auth, summary in bench.profiles:
        title = f"### Profile: py-spy record on ehr serve --workers {workers}, auth {auth}, {spec} clients"
        lines += [title, "", summary, ""]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    def ints(text: str) -> list[int]:
        return [int(x) for x in text.split(",") if x]

    def words(text: str) -> list[str]:
        return [x for x in text.split(",") if x]

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--duration", type=int, default=10, help="whole seconds per run (10)")
    p.add_argument("--clients", type=ints, default=[1, 8, 32], help="concurrency list (1,8,32)")
    p.add_argument("--workers", type=ints, default=[1], help="server workers, list (1)")
    p.add_argument(
        "--auth",
        type=words,
        default=["on"],
        metavar="on,off",
        help="EHR_AUTH of the servers, list (on): on sends a system token on every request",
    )
    p.add_argument(
        "--audit",
        type=words,
        default=["on"],
        metavar="on,off",
        help="EHR_AUDIT of the servers, list (on), paired with --auth (a one-item list repeats)",
    )
    p.add_argument("--cases", type=words, default=["create", "read", "update"])
    p.add_argument("--floors", type=words, default=["pg", "asgi"], help="pg,asgi or none")
    p.add_argument("--database-url", help="use this PostgreSQL instead of the embedded one")
    p.add_argument("--data-dir", type=Path, help="server data dir (default: a new temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the data dir")
    p.add_argument("--seed", type=int, default=5000, help="Patients created for read/update")
    p.add_argument("--generator", choices=["auto", "wrk", "python"], default="auto")
    p.add_argument(
        "--profile",
        type=words,
        default=[],
        metavar="CASE:CLIENTS,...",
        help="extra runs under py-spy on the first server, e.g. read:8,update:8",
    )
    p.add_argument("--no-results", action="store_true", help="do not record in RESULTS.md")
    args = p.parse_args(argv)
    unknown = set(args.cases) - {"create", "read", "update"}
    if unknown:
        p.error(f"unknown case(s): {', '.join(sorted(unknown))}")
    if not args.auth or set(args.auth) - set(AUTH_MODES):
        p.error("--auth takes a list of on and off, e.g. on,off (a mode may repeat: on,off,off,on)")
    if not args.audit or set(args.audit) - {"on", "off"}:
        p.error("--audit takes a list of on and off, e.g. on,off")
    if len(args.auth) > 1 and len(args.audit) > 1 and len(args.auth) != len(args.audit):
        p.error("--auth and --audit lists pair up: give them the same length (or one item)")
    return args


def opts(**kw: object) -> list[str]:
    """Command-line options from keywords: opts(data_dir=d) gives ["--data-dir", "d"]."""
    return [x for k, v in kw.items() for x in (f"--{k.replace('_', '-')}", str(v))]


def snapshot_code(dest: Path) -> str:
    """Copy the headless_ehr package to dest (the servers import it through PYTHONPATH),
    so every server in a run serves the same code while others edit src/; describe it."""
    spec = importlib.util.find_spec("headless_ehr")
    assert spec is not None and spec.origin is not None
    package = Path(spec.origin).parent
    shutil.copytree(package, dest / "headless_ehr", ignore=shutil.ignore_patterns("__pycache__"))
    git = ["git", "--no-optional-locks", "-C", str(package)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        return f"{package} (not a git checkout)"
    dirty = subprocess.run([*git, "status", "--porcelain", "--", "."], capture_output=True)
    changes = " + uncommitted changes in src/headless_ehr" if dirty.stdout.strip() else ""
    return f"commit {head.stdout.strip()}{changes}"


@dataclass
class Bench:
    """One invocation: options, files, and what has been measured so far."""

    args: argparse.Namespace
    gen: Generator
    root: Path
    files: Files
    env: dict[str, str]
    code: str
    runs: list[Run] = field(default_factory=list)
    starts: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    profiles: list[tuple[str, int, str, str]] = field(default_factory=list)  # spec, workers, auth, summary
    pg_label: str = "?"
    running: Served | None = None

    def stop(self, data_dir: Path | None = None) -> None:
        if self.running is not None:
            self.running.stop()
            self.running = None
        if data_dir is None or self.args.database_url:
            return
        if stop_left_postgres(data_dir / "pg"):
            self.notes.append("embedded PostgreSQL outlived the server; the bench stopped it")

    def server(self, first: bool, workers: int, auth: str, data_dir: Path) -> None:
        """Start ehr serve (timing it), seed, run every case, profile, PG floor, stop.
        Each server gets its own new data dir, so each starts from the same state."""
        args, files = self.args, self.files
        port = free_port()
        cmd = ["ehr", "serve", *opts(host="127.0.0.1", port=port, data_dir=data_dir)]
        cmd += opts(workers=workers, log_level="warning")
        data_dir.mkdir()
        env = server_env(self.env, auth)
        name = f"workers {workers}, auth {auth}"
        self.running = Served("ehr serve", cmd, env, data_dir / "server.log")
        if first or not args.database_url:
            cold = self.running.start()
            self.stop(data_dir)
            what = "migrations" if args.database_url else "empty data dir: initdb, migrations"
            self.starts.append(f"{name}, first start ({what}): {cold:.2f} s")
        self.running = Served("ehr serve", cmd, env, data_dir / "server.log")
        warm = self.running.start()
        what = "second start" if args.database_url else "second start, warm data dir"
        self.starts.append(f"{name}, {what}: {warm:.2f} s")
        print(f"ehr serve --workers {workers} (EHR_AUTH={auth}): started again in {warm:.2f} s", file=sys.stderr)
        dsn = args.database_url or embedded_dsn(data_dir / "pg")
        version, pg_pid = loadgen.run(pgfloor.server_info(dsn))
        where = "system server, --database-url" if args.database_url else "embedded"
        self.pg_label = f"PostgreSQL {version} ({where})"
        held: list[tuple[str, float]] = []  # the token in use and when it was fetched

        def token() -> str | None:
            if auth.startswith("off"):
                return None
            if not held or time.monotonic() - held[0][1] > TOKEN_RENEW_S:
                held[:] = [(access_token(env, port, data_dir), time.monotonic())]
            return held[0][0]

        if {"read", "update"} & set(args.cases):
            body = files.create.read_bytes()
            host = f"127.0.0.1:{port}"
            request = loadgen.http_request("POST", f"{PREFIX}/Patient", body, host, token())
            ids = loadgen.run(loadgen.seed("127.0.0.1", port, request, args.seed))
            files.ids.write_text("\n".join(ids) + "\n")
        assert self.running.proc is not None
        server_pid = self.running.proc.pid

        def on_server(case: str, clients: int) -> LoadResult:
            return self.gen.run(port, case, clients, args.duration, files, token())

        sweep("server", workers, args, on_server, server_pid, pg_pid, self.runs, auth)
        for spec in args.profile if first else []:
            case, _, clients = spec.partition(":")
            raw = data_dir / f"profile-{case}-{clients}.txt"
            spy = profile(server_pid, args.duration + 2, raw, workers > 1)
            self.gen.run(port, case, int(clients or 8), args.duration, files, token())
            spy.wait(60)
            summary = profile_summary(raw) if raw.exists() else "(py-spy wrote nothing)"
            self.profiles.append((spec, workers, auth, summary))
        if "pg" in args.floors and first:
            ids = loadgen.run(pgfloor.prepare(dsn, files.create.read_bytes(), args.seed))
            files.pg_ids.write_text("\n".join(ids) + "\n")

            def on_pg(case: str, clients: int) -> LoadResult:
                cmd = [sys.executable, str(BENCH / "pgfloor.py"), *opts(dsn=dsn, case=case)]
                cmd += opts(clients=clients, duration=args.duration)
                cmd += opts(body=files.create, ids=files.pg_ids)
                return LoadResult(**json.loads(measured(cmd)[0].splitlines()[-1]))

            sweep("pg", 0, args, on_pg, None, pg_pid, self.runs)
            loadgen.run(pgfloor.drop(dsn))
        self.stop(data_dir)

    def asgi(self, workers: int) -> None:
        """The empty app under uvicorn with the server's settings, every case."""
        port = free_port()
        cmd = [sys.executable, "-m", "uvicorn", "empty_app:app", "--no-access-log"]
        cmd += opts(app_dir=BENCH, host="127.0.0.1", port=port, workers=workers)
        cmd += opts(log_level="warning")
        self.running = Served("empty ASGI app", cmd, self.env, self.root / "asgi.log")
        self.running.start()
        assert self.running.proc is not None

        def on_asgi(case: str, clients: int) -> LoadResult:
            return self.gen.run(port, case, clients, self.args.duration, self.files)

        sweep("asgi", workers, self.args, on_asgi, self.running.proc.pid, None, self.runs)
        self.stop()


def server_dir(root: Path, workers: int, index: int, auth: str) -> Path:
    """The data dir of the index-th server (of --auth) with this many workers."""
    return root / f"w{workers}-{index}-auth-{auth.replace(' ', '-')}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.now(UTC)
    gen = Generator(args.generator)
    print(f"generator: {gen.label}", file=sys.stderr)
    root = args.data_dir or Path(tempfile.mkdtemp(prefix="ehrb-", dir="/tmp"))
    root.mkdir(parents=True, exist_ok=True)
    files = Files(*(root / n for n in ("create.json", "update.json", "ids.txt", "pg-ids.txt")))
    files.create.write_bytes(json.dumps(PATIENT, separators=(",", ":")).encode())
    update = {"resourceType": "Patient", "id": "__ID__", **PATIENT, "active": False}
    files.update.write_bytes(json.dumps(update, separators=(",", ":")).encode())
    code = snapshot_code(root / "code")
    env = {k: v for k, v in os.environ.items() if k != "EHR_DATABASE_URL"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root / "code"), env.get("PYTHONPATH")]))
    if args.database_url:
        env["EHR_DATABASE_URL"] = args.database_url
        bench_admin_client(env)
    bench = Bench(args, gen, root, files, env, code)
    try:
        for i, workers in enumerate(args.workers):
            for j, mode in enumerate(modes(args)):
                bench.server(i == 0 and j == 0, workers, mode, server_dir(root, workers, j, mode))
            if "asgi" in args.floors:
                bench.asgi(workers)
    finally:
        bench.stop()
        for workers in args.workers:
            for j, mode in enumerate(modes(args)):
                bench.stop(server_dir(root, workers, j, mode))
        if args.keep or args.data_dir:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    text = report(bench, started)
    print(text)
    if not args.no_results:
        results.record("crud", text, summary(bench, started))
    return 0


if __name__ == "__main__":
    sys.exit(main())
