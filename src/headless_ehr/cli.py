"""The `ehr` command."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Iterator
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


@contextlib.contextmanager
def database(args: argparse.Namespace) -> Iterator[tuple[Settings, str]]:
    """open_database() for the length of a command: the embedded server, if one was started, is stopped after."""
    settings, embedded, where = open_database(args)
    try:
        yield settings, where
    finally:
        if embedded is not None:
            embedded.stop()


def is_loopback(host: str) -> bool:
    """Whether a listen address is reachable from this machine only."""
    import ipaddress

    host = host.strip().strip("[]")
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .events.websocket import MAX_MESSAGE_BYTES
    from .rest.origin import networks

    try:
        configured = Settings.from_env()
    except ValueError as exc:
        print(f"ehr: {exc}", file=sys.stderr)
        return 2
    try:
        networks(configured.trusted_proxies)
    except ValueError as exc:
        print(f"ehr: EHR_TRUSTED_PROXIES: {exc}", file=sys.stderr)
        return 2
    if not configured.auth and not is_loopback(args.host):
        print(
            f"ehr: EHR_AUTH=off serves every request without a token, so it listens on a loopback address only"
            f" (127.0.0.1, ::1, localhost), not on {args.host}; set EHR_AUTH=on or --host 127.0.0.1",
            file=sys.stderr,
        )
        return 2
    settings, embedded, where = open_database(args)
    os.environ["EHR_DATA_DIR"] = str(settings.data_dir)  # worker processes write admin-client.json there
    print(
        f"ehr {__version__}: FHIR API at http://{args.host}:{args.port}{settings.base_path} using {where}",
        flush=True,
    )
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal to the
    # handler that was installed before it: ours, so the embedded database is stopped too.
    signal.signal(signal.SIGTERM, _exit_quietly)
    signal.signal(signal.SIGINT, _exit_quietly)
    options = {
        "host": args.host,
        "port": args.port,
        "log_level": args.log_level,
        "access_log": args.access_log,
        # the app reads Forwarded/X-Forwarded-* itself, from EHR_TRUSTED_PROXIES only; uvicorn
        # rewriting the client address first would hide which peer actually connected
        "proxy_headers": False,
        "date_header": False,  # the app sets Date itself (rest/responses.py DateHeader)
        "ws_max_size": MAX_MESSAGE_BYTES,  # a WebSocket client's messages are commands (events/websocket.py)
    }
    try:
        if args.workers > 1:
            uvicorn.run("headless_ehr.cli:app_from_env", factory=True, workers=args.workers, **options)
        else:
            from .app import create_app

            uvicorn.run(create_app(settings), **options)
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

    with database(args) as (settings, where):
        print(f"importing into {where}", flush=True)
        signal.signal(signal.SIGTERM, _exit_quietly)
        try:
            return run_import(
                settings, args.paths, args.batch_size, args.concurrency, args.processes, with_events=not args.no_events
            )
        except (_Stopped, KeyboardInterrupt):
            print("interrupted: run the same command again to resume", file=sys.stderr)
            return 130


def create_account(args: argparse.Namespace) -> int:
    """`ehr client create` and `ehr user create`: the new account as JSON on stdout."""
    from .auth.cli import CommandError, client_body, register, user_body

    command = f"ehr {args.command} create"
    try:
        body = client_body(args) if args.command == "client" else user_body(args)
    except CommandError as error:
        print(f"{command}: {error}", file=sys.stderr)
        return 2
    with database(args) as (settings, _):
        try:
            created = register(settings, args.command, body)
        except CommandError as error:
            print(f"{command}: {error}", file=sys.stderr)
            return 1
    import orjson

    print(orjson.dumps(created, option=orjson.OPT_INDENT_2).decode())
    if "client_secret" in created:
        print("keep client_secret now: it is not shown again", file=sys.stderr)
    return 0


def audit(args: argparse.Namespace) -> int:
    """`ehr audit verify` (exit 1 naming the first broken record) and `ehr audit export` (NDJSON)."""
    from .audit.cli import parse_since, run_export, run_verify

    since = None
    if args.action == "export" and args.since:
        try:
            since = parse_since(args.since)
        except ValueError:
            print(f"ehr audit export: --since '{args.since}' is not an ISO 8601 date or instant", file=sys.stderr)
            return 2
    with database(args) as (settings, _):
        assert settings.database_url
        if args.action == "verify":
            return run_verify(settings.database_url)
        if args.output and args.output != "-":
            with open(args.output, "wb") as out:
                return run_export(settings.database_url, since, out)
        return run_export(settings.database_url, since, sys.stdout.buffer)


def events(args: argparse.Namespace) -> int:
    """`ehr events tail`: the JetStream stream when EHR_NATS_URL is set, else the outbox."""
    from .events.tail import print_line, run_tail, tail_outbox, tail_stream
    from .fhir.definitions import definitions

    if args.type is not None and args.type not in definitions().resource_types:
        print(f"ehr events tail: --type '{args.type[:100]}' is not an R4 resource type", file=sys.stderr)
        return 2
    try:
        configured = Settings.from_env()
    except ValueError as exc:
        print(f"ehr events tail: {exc}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _exit_quietly)
    if configured.nats_url:
        stream, prefix = configured.nats_stream, configured.nats_subject_prefix
        try:
            return run_tail(tail_stream(configured.nats_url, stream, prefix, args.type, print_line))
        except _Stopped:
            return 0
    with database(args) as (settings, _):
        assert settings.database_url
        try:
            return run_tail(tail_outbox(settings.database_url, args.type, print_line))
        except _Stopped:
            return 0


def print_token(args: argparse.Namespace) -> int:
    """`ehr token`: a system access token, and nothing else, on one line."""
    from .auth.cli import CommandError, admin_credentials, fetch_token

    data_dir = Path(args.data_dir or os.environ.get("EHR_DATA_DIR") or ".ehr-data")
    try:
        client_id, secret = admin_credentials(data_dir)
        token = fetch_token(args.url, client_id, secret, args.scope, " ".join(args.purpose))
    except CommandError as error:
        print(f"ehr token: {error}", file=sys.stderr)
        return 1
    print(token, flush=True)
    return 0


# Settings only the environment sets (the options below each name theirs); the README's
# configuration table has them all.
_ENV_ONLY = [
    ("EHR_DATABASE_URL", "PostgreSQL DSN; unset: an embedded PostgreSQL in the data dir"),
    ("EHR_PUBLIC_BASE_URL", "the base URL clients see (Location, fullUrl, links); unset: from the request"),
    ("EHR_TRUSTED_PROXIES", "peers whose Forwarded/X-Forwarded-* headers count (default 127.0.0.0/8,::1)"),
    ("EHR_ALLOWED_HOSTS", "Host names answered to, `*.example.org` allowed (default: any)"),
    ("EHR_MAX_BODY_BYTES", "largest request body (default 16 MiB)"),
    ("EHR_MAX_NARRATIVE_BYTES", "largest narrative (text.div), else 422 (default 1 MiB)"),
    ("EHR_DEFAULT_PAGE_SIZE", "search page size without _count (default 20)"),
    ("EHR_MAX_PAGE_SIZE", "largest _count (default 1000)"),
    ("EHR_POOL_MIN_SIZE", "database connections kept open per worker (default 2)"),
    ("EHR_POOL_MAX_SIZE", "database connections at most per worker (default 10)"),
    ("EHR_CONDITIONAL_DELETE", "several matches of a conditional delete: single (412) or multiple (default single)"),
    ("EHR_INDEX_CONTAINED", "index contained resources for _contained searches (default false)"),
    ("EHR_MAX_CHAIN_BRANCHES", "chain branches one search may expand to (default 32)"),
    ("EHR_STATEMENT_TIMEOUT_MS", "longest SQL statement of a request, 0 for none (default 30000)"),
    ("EHR_MAX_INCLUDES", "included resources per search page (default 1000)"),
    ("EHR_SEARCH_EXPRESSION_BUDGET_MS", "time of a custom SearchParameter expression per resource (default 100)"),
    ("EHR_IMPORT_MAX_BUNDLE_BYTES", "largest Bundle file `ehr import` reads (default 256 MiB)"),
    # bulk export
    ("EHR_BULK_FILE_BYTES", "$export output files are cut at this size (default 64 MiB)"),
    ("EHR_BULK_RETENTION_HOURS", "finished $export jobs, their files and async answers are removed after (default 24)"),
    ("EHR_BULK_PAGE_ROWS", "resources an $export job reads per page and progress commit (default 1000)"),
    ("EHR_BULK_EXPORT_JOBS", "off: this node runs no $export jobs, other nodes do (default on)"),
    ("EHR_BULK_S3_URL", "s3://bucket/prefix: $export files go there, pre-signed downloads (default: data dir)"),
    ("EHR_BULK_IMPORT_JOBS", "off: this node loads no $import inputs, other nodes do (default on)"),
    ("EHR_BULK_IMPORT_CONCURRENCY", "$import inputs a node loads at once (default 2)"),
    ("EHR_BULK_IMPORT_MAX_BYTES", "largest $import input fetched over http(s) or S3 (default 16 GiB)"),
    ("EHR_BULK_IMPORT_FETCH_SECONDS", "longest an $import input may take to download (default 3600)"),
    ("EHR_BULK_IMPORT_MAX_ERRORS", "line errors an $import job keeps (default 10000)"),
    # asynchronous requests
    ("EHR_ASYNC_MAX_OPEN", "Prefer: respond-async requests one client may have open (default 10)"),
    ("EHR_ASYNC_MAX_RESULT_BYTES", "a larger async answer is refused, its writes rolled back (default 256 MiB)"),
    # admin
    ("EHR_ADMIN_CLIENT_ID", "with EHR_ADMIN_CLIENT_SECRET: the admin client (no admin-client.json is written)"),
    ("EHR_ADMIN_CLIENT_SECRET", "the admin client's secret, at least 16 characters (`ehr token` uses it too)"),
    # auth
    ("EHR_AUTH", "on: every request needs a token; off: no tokens, loopback listen address only (default on)"),
    ("EHR_ACCESS_TOKEN_LIFETIME", "access token lifetime in seconds, 30 to 3600 (default 300)"),
    ("EHR_SIGNING_KEY_ROTATION_HOURS", "a new token signing key this often (default 24)"),
    ("EHR_RATE_LIMIT_PER_MINUTE", "requests a minute per client and per source address, 0 for none (default 6000)"),
    ("EHR_REDIS_URL", "Redis for rate-limit counters shared by all nodes, e.g. redis://host:6379/0 (default: memory)"),
    ("EHR_REDIS_KEY_PREFIX", "prefix of this server's keys in that Redis (default ehr)"),
    ("EHR_TRUSTED_ISSUER", "an OpenID Connect issuer whose access tokens are accepted too (default none)"),
    ("EHR_TRUSTED_AUDIENCE", "the audience its tokens must name (required with EHR_TRUSTED_ISSUER)"),
    ("EHR_TRUSTED_FHIR_USER_CLAIM", "its claim naming the user's FHIR resource (default fhirUser)"),
    ("EHR_TRUSTED_POLICIES", "access policies (comma list) of that issuer's practitioner users (default none)"),
    ("EHR_AUDIT", "on: record an AuditEvent for every FHIR request (default); off: none, for benchmarks only"),
    ("EHR_AUDIT_SYNC_COMMIT", "on: a request's AuditEvent waits for the disk flush too (default off)"),
    ("EHR_EVENT_RETENTION_DAYS", "days events, notifications and the delivery log are kept for replay (default 7)"),
    # events
    ("EHR_NATS_URL", "NATS with JetStream, e.g. nats://127.0.0.1:4222: every change published there (default none)"),
    ("EHR_NATS_STREAM", "the JetStream stream of the changes, created if absent (default EHR)"),
    ("EHR_NATS_SUBJECT_PREFIX", "its subjects: <prefix>.<ResourceType>.<create|update|delete> (default ehr)"),
    # websocket
    ("EHR_WS_MAX_CONNECTIONS", "open WebSocket connections per node (default 1000)"),
    ("EHR_WEBHOOK_RETRY_BASE_SECONDS", "first wait after a failed webhook; doubles per failure (default 2)"),
    ("EHR_WEBHOOK_RETRY_HOURS", "webhooks are retried this long from the first failure, then error (default 24)"),
    ("EHR_WEBHOOK_TIMEOUT_SECONDS", "per webhook request (default 10)"),
    ("EHR_WEBHOOK_CONCURRENCY", "rest-hook Subscriptions a node delivers to at once (default 16)"),
    ("EHR_WEBHOOK_BLOCKED_NETWORKS", "CIDRs no webhook goes to (default loopback, link-local, metadata)"),
]


def _epilog() -> str:
    width = max(len(name) for name, _ in _ENV_ONLY)
    lines = [f"  {name.ljust(width)}  {text}" for name, text in _ENV_ONLY]
    return "environment-only settings:\n" + "\n".join(lines) + "\n\nthe README's configuration table says more of each."


def build_parser() -> argparse.ArgumentParser:
    """The `ehr` command line; every option's help names its default and its EHR_* variable."""
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="ehr", description="Headless EHR: a FHIR R4 server", epilog=_epilog(), formatter_class=formatter
    )
    parser.add_argument("--version", action="version", version=f"ehr {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{serve,import,client,user,token,audit,events}")
    p_serve = sub.add_parser(
        "serve",
        help="serve the FHIR API",
        description="Serve the FHIR API.",
        epilog=_epilog(),
        formatter_class=formatter,
    )
    p_serve.add_argument(
        "--host",
        default=os.environ.get("EHR_HOST", "127.0.0.1"),
        help="listen address (default 127.0.0.1, env EHR_HOST)",
    )
    p_serve.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("EHR_PORT", "8080")),
        help="listen port (default 8080, env EHR_PORT)",
    )
    p_serve.add_argument("--data-dir", default=None, help=_DATA_DIR_HELP)
    p_serve.add_argument(
        "--workers",
        type=int,
        default=int(os.environ.get("EHR_WORKERS", "1")),
        help="server processes (default 1, env EHR_WORKERS)",
    )
    p_serve.add_argument(
        "--log-level",
        default=os.environ.get("EHR_LOG_LEVEL", "info"),
        type=str.lower,
        choices=["critical", "error", "warning", "info", "debug"],
        help="log level (default info, env EHR_LOG_LEVEL)",
    )
    p_serve.add_argument("--access-log", action="store_true", help="log every request (default off)")
    p_import = sub.add_parser(
        "import",
        help="load FHIR Bundles and NDJSON files (resumable)",
        description="Load FHIR Bundles and NDJSON files; a rerun resumes where the last run stopped.",
        epilog=_epilog(),
        formatter_class=formatter,
    )
    p_import.add_argument("paths", nargs="+", help="files or folders (.json, .ndjson, optionally .gz)")
    p_import.add_argument("--data-dir", default=None, help=_DATA_DIR_HELP)
    p_import.add_argument(
        "--batch-size", type=int, default=500, help="NDJSON lines per transaction (default 500; no env variable)"
    )
    p_import.add_argument(
        "--concurrency", type=int, default=2, help="files loaded at once per process (default 2; no env variable)"
    )
    p_import.add_argument(
        "--processes",
        type=int,
        default=os.cpu_count() or 1,
        help="worker processes (default one per core; no env variable)",
    )
    p_import.add_argument(
        "--no-events",
        action="store_true",
        help="write no events for these resources (an initial load): no outbox rows, so no Subscription"
        " notifications and no broker messages (default: events on; no env variable)",
    )
    _account_parsers(sub, formatter)
    _audit_parsers(sub)
    _events_parsers(sub)
    return parser


def _actions(sub: argparse._SubParsersAction, name: str, metavar: str, **kwargs: str) -> argparse._SubParsersAction:
    """A command `name` whose first argument is one of its actions (args.action)."""
    return sub.add_parser(name, **kwargs).add_subparsers(dest="action", metavar=metavar, required=True)


def _events_parsers(sub: argparse._SubParsersAction) -> None:
    events_sub = _actions(
        sub, "events", "{tail}", help="follow the change events", description="The change events (docs/events.md)."
    )
    tail = events_sub.add_parser(
        "tail",
        help="print each change as it commits, until Ctrl-C",
        description="Print each committed create, update, patch and delete as it happens, one line each:"
        " time, interaction, Type/id/_history/version, sequence number, event id. With EHR_NATS_URL set it"
        " follows the JetStream stream (EHR_NATS_STREAM); otherwise the outbox of the database"
        " (EHR_DATABASE_URL, or the embedded one of --data-dir).",
    )
    tail.add_argument("--type", default=None, help="only this resource type, e.g. Patient (default all)")
    tail.add_argument("--data-dir", default=None, help=_DATA_DIR_HELP)


def _audit_parsers(sub: argparse._SubParsersAction) -> None:
    audit_sub = _actions(
        sub,
        "audit",
        "{verify,export}",
        help="check and export the audit trail",
        description="The hash-chained audit trail of AuditEvents.",
    )
    verify = audit_sub.add_parser(
        "verify",
        help="check the whole hash chain",
        description="Check every audit record's hash and link; exit 1 naming the first record changed,"
        " inserted or deleted.",
    )
    verify.add_argument("--data-dir", default=None, help=_DATA_DIR_HELP)
    export = audit_sub.add_parser(
        "export", help="write AuditEvents as NDJSON", description="Write the AuditEvents, oldest first, as NDJSON."
    )
    export.add_argument("--data-dir", default=None, help=_DATA_DIR_HELP)
    export.add_argument("--since", default=None, help="only events recorded at or after this ISO 8601 date or instant")
    export.add_argument("--output", "-o", default="-", help="file to write (default standard output)")


def _account_parsers(sub: argparse._SubParsersAction, formatter: type[argparse.HelpFormatter]) -> None:
    """`ehr client create`, `ehr user create` and `ehr token` (auth/cli.py)."""
    client_sub = _actions(
        sub,
        "client",
        "{create}",
        help="register OAuth clients",
        description="Register OAuth clients (SMART apps and services).",
    )
    create = client_sub.add_parser(
        "create",
        help="register a client; prints it as JSON, with its secret when it has one",
        description="Register a client in the database of --data-dir (or EHR_DATABASE_URL) and print it as JSON."
        " A client without --public, --jwks-file or --jwks-uri is confidential and gets a client_secret,"
        " shown only now.",
        formatter_class=formatter,
    )
    create.add_argument("--name", required=True, help="a name people recognise (required)")
    create.add_argument("--client-id", default=None, help="its client_id (default: a random one)")
    create.add_argument(
        "--redirect-uri", action="append", default=[], help="a redirect URI, exact; repeat for more (default none)"
    )
    create.add_argument(
        "--scope",
        action="append",
        default=[],
        help="a scope it may be granted, e.g. patient/*.rs or system/*.rs; repeat for more (default none)",
    )
    create.add_argument("--public", action="store_true", help="a public client: no secret, PKCE only (default off)")
    keys = create.add_mutually_exclusive_group()
    keys.add_argument("--jwks-file", default=None, help="its public keys, a JWK Set file (private_key_jwt)")
    keys.add_argument("--jwks-uri", default=None, help="where its public keys are published (private_key_jwt)")
    create.add_argument("--admin", action="store_true", help="may use the admin API (default off)")
    create.add_argument("--policy", action="append", default=[], help="an access policy name; repeat for more")
    create.add_argument("--data-dir", default=None, help=_DATA_DIR_HELP)

    user_sub = _actions(
        sub, "user", "{create}", help="register users", description="Register users who log in to SMART apps."
    )
    create = user_sub.add_parser(
        "create",
        help="register a user; prints it as JSON (never the password)",
        description="Register a user in the database of --data-dir (or EHR_DATABASE_URL) and print it as JSON.",
        formatter_class=formatter,
    )
    create.add_argument("--username", required=True, help="the login name (required)")
    password = create.add_mutually_exclusive_group(required=True)
    password.add_argument(
        "--password-stdin", action="store_true", help="read the password from the first line of stdin (preferred)"
    )
    password.add_argument("--password", default=None, help="the password (visible to other users of this machine)")
    create.add_argument("--fhir-user", default=None, help="the user's own resource, e.g. Practitioner/7 or Patient/123")
    create.add_argument("--role", action="append", default=[], help="a role; repeat for more (default none)")
    create.add_argument(
        "--patient", action="append", default=[], help="a patient id the user may pick; repeat for more (default none)"
    )
    create.add_argument("--policy", action="append", default=[], help="an access policy name; repeat for more")
    create.add_argument("--data-dir", default=None, help=_DATA_DIR_HELP)

    p_token = sub.add_parser(
        "token",
        help="print a short-lived system access token of the admin client",
        description="Print a system access token (only the token, on one line) from the running server's"
        " /oauth/token, with the admin client of the data dir's admin-client.json, or EHR_ADMIN_CLIENT_ID and"
        ' EHR_ADMIN_CLIENT_SECRET when set. Example: curl -H "Authorization: Bearer $(ehr token)" '
        "http://127.0.0.1:8080/fhir/Patient",
        formatter_class=formatter,
    )
    p_token.add_argument(
        "--data-dir",
        default=None,
        help="the server's data dir, holding admin-client.json (default ./.ehr-data, env EHR_DATA_DIR)",
    )
    p_token.add_argument(
        "--url", default=_DEFAULT_URL, help=f"the server's FHIR base (default {_DEFAULT_URL}; no env variable)"
    )
    p_token.add_argument(
        "--purpose",
        action="append",
        default=[],
        help="a purpose of use code of v3-ActReason for the token (TREAT, BTG, …); repeat for more (default none)",
    )
    p_token.add_argument("--scope", default="system/*.*", help="the scope asked for (default system/*.*)")


_DEFAULT_URL = "http://127.0.0.1:8080/fhir"
_DATA_DIR_HELP = (
    "data folder: the embedded database (used when EHR_DATABASE_URL is unset) and the server's"
    " admin-client.json (default ./.ehr-data, env EHR_DATA_DIR)"
)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # bare `ehr`: say what it can do rather than fail
        parser.print_help()
        return 0
    level = args.log_level.upper() if args.command == "serve" else "WARNING"
    logging.basicConfig(level=level)
    if args.command == "serve":
        return serve(args)
    if args.command == "import":
        return import_files(args)
    if args.command in ("client", "user"):
        return create_account(args)
    if args.command == "token":
        return print_token(args)
    if args.command == "audit":
        return audit(args)
    if args.command == "events":
        return events(args)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
