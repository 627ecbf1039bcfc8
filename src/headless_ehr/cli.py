"""The `ehr` command."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__
from .config import Settings

if TYPE_CHECKING:
    from .db.embedded import EmbeddedPostgres

log = logging.getLogger("headless_ehr")


def app_from_env():  # used as a uvicorn factory by worker processes
    from .app import create_app

    return create_app(Settings.from_env())


def open_database(args: argparse.Namespace) -> tuple[Settings, EmbeddedPostgres | None, str]:
    """Settings with a database URL: EHR_DATABASE_URL, or an embedded server started now
    (exits with a message when that cannot start)."""
    from .db.embedded import EmbeddedPostgres, EmbeddedPostgresError

    settings = Settings.from_env(data_dir=Path(args.data_dir) if args.data_dir else None)
    if settings.database_url:
        return settings, None, "PostgreSQL from EHR_DATABASE_URL"
    try:
        embedded = EmbeddedPostgres(settings.data_dir)
        dsn = embedded.start()
    except EmbeddedPostgresError as exc:
        print(f"ehr: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    os.environ["EHR_DATABASE_URL"] = dsn  # worker processes read it
    settings = Settings.from_env(data_dir=settings.data_dir)
    return settings, embedded, f"embedded PostgreSQL in {embedded.pgdata} ({embedded.source})"


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    settings, embedded, where = open_database(args)
    print(
        f"ehr {__version__}: FHIR API at http://{args.host}:{args.port}{settings.base_path} using {where}",
        flush=True,
    )
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal to the
    # handler that was installed before it: ours, so the embedded database is stopped too.
    signal.signal(signal.SIGTERM, _exit_quietly)
    signal.signal(signal.SIGINT, _exit_quietly)
    try:
        if args.workers > 1:
            uvicorn.run(
                "headless_ehr.cli:app_from_env",
                factory=True,
                host=args.host,
                port=args.port,
                workers=args.workers,
                log_level=args.log_level,
                access_log=args.access_log,
                date_header=False,  # the app sets Date itself (rest/responses.py DateHeader)
            )
        else:
            from .app import create_app

            uvicorn.run(
                create_app(settings),
                host=args.host,
                port=args.port,
                log_level=args.log_level,
                access_log=args.access_log,
                date_header=False,  # the app sets Date itself (rest/responses.py DateHeader)
            )
    except _Stopped:
        pass
    finally:
        if embedded is not None:
            embedded.stop()
    return 0


class _Stopped(Exception):
    """Raised by the signal handler once the server has shut down."""


def _exit_quietly(signum: int, frame: object) -> None:
    raise _Stopped


def import_files(args: argparse.Namespace) -> int:
    from .bulk.cli import run_import

    settings, embedded, where = open_database(args)
    print(f"importing into {where}", flush=True)
    signal.signal(signal.SIGTERM, _exit_quietly)
    try:
        return run_import(settings, args.paths, args.batch_size, args.concurrency, args.processes)
    except (_Stopped, KeyboardInterrupt):
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return 130
    finally:
        if embedded is not None:
            embedded.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ehr", description="Headless EHR: a FHIR R4 server")
    parser.add_argument("--version", action="version", version=f"ehr {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser("serve", help="serve the FHIR API")
    p_serve.add_argument("--host", default=os.environ.get("EHR_HOST", "127.0.0.1"))
    p_serve.add_argument("--port", type=int, default=int(os.environ.get("EHR_PORT", "8080")))
    p_serve.add_argument("--data-dir", default=None, help="embedded database folder (./.ehr-data)")
    p_serve.add_argument("--workers", type=int, default=int(os.environ.get("EHR_WORKERS", "1")))
    p_serve.add_argument("--log-level", default=os.environ.get("EHR_LOG_LEVEL", "info"))
    p_serve.add_argument("--access-log", action="store_true", help="log every request")
    p_import = sub.add_parser("import", help="load FHIR Bundles and NDJSON files (resumable)")
    p_import.add_argument("paths", nargs="+", help="files or folders (.json, .ndjson, optionally .gz)")
    p_import.add_argument("--data-dir", default=None, help="embedded database folder (./.ehr-data)")
    p_import.add_argument("--batch-size", type=int, default=500, help="NDJSON lines per transaction")
    p_import.add_argument("--concurrency", type=int, default=2, help="files loaded at once per process")
    p_import.add_argument(
        "--processes", type=int, default=os.cpu_count() or 1, help="worker processes (default: one per core)"
    )
    args = parser.parse_args(argv)
    level = args.log_level.upper() if args.command == "serve" else "WARNING"
    logging.basicConfig(level=level)
    if args.command == "serve":
        return serve(args)
    if args.command == "import":
        return import_files(args)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
