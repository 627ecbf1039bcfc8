"""Settings from the environment, in one place."""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return int(raw) if raw else default


def env_flag(name: str, default: bool = False) -> bool:
    """A true/false setting (1/0, yes/no, on/off too); anything else stops start-up."""
    raw = (os.environ.get(name) or "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name} must be true or false, not '{raw}'")


def _list(name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    """A comma list; unset gives default, set but empty gives ()."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    return tuple(part.strip() for part in raw.split(",") if part.strip())


# EHR_WEBHOOK_BLOCKED_NETWORKS' default (events/webhook.py): where no webhook may go
WEBHOOK_BLOCKED_NETWORKS = (
    "127.0.0.0/8",
    "::1/128",
    "0.0.0.0/8",
    "::/128",
    "169.254.0.0/16",  # link-local, with 169.254.169.254: AWS, GCP and Azure instance metadata
    "fe80::/10",
    "fd00:ec2::/32",  # AWS's IPv6 metadata service
    "100.100.100.200/32",  # Alibaba Cloud's metadata service
    "224.0.0.0/4",
    "ff00::/8",
    "255.255.255.255/32",
)


@dataclass(frozen=True)
class Settings:
    """Everything the server can be configured with.

    database_url: PostgreSQL DSN; when None the embedded server in data_dir is used.
    """

    database_url: str | None = None
    data_dir: Path = Path(".ehr-data")
    base_path: str = "/fhir"
    public_base_url: str | None = None  # e.g. https://ehr.example.org/fhir; else from request
    max_body_bytes: int = 16 * 1024 * 1024
    default_page_size: int = 20
    max_page_size: int = 1000
    pool_min_size: int = 2
    pool_max_size: int = 10
    extra: dict[str, str] = field(default_factory=dict)
    # conditional
    conditional_delete: str = "single"  # single: several matches are 412; multiple: delete them all
    # searchspec
    index_contained: bool = False  # index contained resources, for _contained=true|both
    # restspec
    trusted_proxies: tuple[str, ...] = ("127.0.0.0/8", "::1")  # peers whose Forwarded/X-Forwarded-* count
    allowed_hosts: tuple[str, ...] = ()  # Host names answered to (`*.example.org` allowed); empty: any
    # limits
    max_chain_branches: int = 32  # chain branches (target types per hop) per search
    statement_timeout_ms: int = 30_000  # per SQL statement of a request; 0 for none
    max_includes: int = 1000  # included resources per searchset page
    # references
    search_expression_budget_ms: int = 100  # time budget of one custom SearchParameter expression per resource
    # import
    import_max_bundle_bytes: int = 256 * 1024 * 1024  # a larger Bundle file (decompressed) is refused
    # hostile input
    max_narrative_bytes: int = 1024 * 1024  # a larger text.div is refused (422)
    # auth
    auth: bool = True  # False (EHR_AUTH=off): no tokens, every request is the system; loopback only
    access_token_lifetime: int = 300  # seconds, at most 3600
    signing_key_rotation_hours: int = 24  # a new token signing key this often
    # admin
    admin_client_id: str | None = None  # with admin_client_secret: this admin client, no admin-client.json
    admin_client_secret: str | None = field(default=None, repr=False)
    # auth extras: rate limits, an external OpenID Connect issuer
    rate_limit_per_minute: int = 6000  # requests per client and per source address; 0: no limit
    redis_url: str | None = None  # rate-limit counters shared by every node; unset: in memory per node
    redis_key_prefix: str = "ehr"  # keys in that Redis start with it
    trusted_issuer: str | None = None  # an OpenID Connect issuer whose access tokens are accepted too
    trusted_audience: str | None = None  # the `aud` its tokens must carry (required with trusted_issuer)
    trusted_fhir_user_claim: str = "fhirUser"  # its claim naming the user's FHIR resource
    trusted_policies: tuple[str, ...] = ()  # the access policies of its practitioner users
    # audit
    audit: bool = True  # False (EHR_AUDIT=off): no AuditEvents recorded; for benchmark comparisons only
    # True (EHR_AUDIT_SYNC_COMMIT=on): a request's batched event waits for the disk flush too
    audit_sync_commit: bool = False
    # events
    event_retention_days: int = 7  # outbox rows, notifications and delivery log kept this long
    # events: the broker stream (events/broker.py); unset nats_url: no broker publication
    nats_url: str | None = None  # e.g. nats://127.0.0.1:4222 (a comma list for a cluster)
    nats_stream: str = "EHR"  # the JetStream stream, created if absent
    nats_subject_prefix: str = "ehr"  # subjects <prefix>.<ResourceType>.<create|update|delete>
    # websocket: open WebSocket connections per node (the channel of Subscriptions)
    ws_max_connections: int = 1000
    # bulk export (docs/bulk.md, "Export ($export)")
    bulk_file_bytes: int = 64 * 1024 * 1024  # an output file is cut when it reaches this size
    bulk_retention_hours: int = 24  # a finished export's files are removed this long after it ended
    bulk_page_rows: int = 1000  # resources read per keyset page (one progress commit each)
    bulk_export_jobs: bool = True  # False (EHR_BULK_EXPORT_JOBS=off): this node runs no export jobs
    bulk_s3_url: str | None = None  # s3://bucket/prefix: export files go there (pre-signed downloads)
    # bulk import (docs/bulk.md, "Import ($import)")
    bulk_import_jobs: bool = True  # False (EHR_BULK_IMPORT_JOBS=off): this node loads no $import inputs
    bulk_import_concurrency: int = 2  # inputs a node loads at once
    bulk_import_max_bytes: int = 16 * 1024**3  # an http(s) or s3 input is refused past this size
    bulk_import_fetch_seconds: float = 3600.0  # the longest an input may take to download
    bulk_import_max_errors: int = 10_000  # line errors kept per job (all are counted)
    # asynchronous requests (Prefer: respond-async; docs/rest.md, "Asynchronous requests")
    async_max_open: int = 10  # requests one client (user, patient context) may have queued or running
    async_max_result_bytes: int = 256 * 1024 * 1024  # a larger answer is refused (its writes rolled back)
    # webhooks (events/delivery.py)
    webhook_retry_base_seconds: float = 2.0  # the first retry's wait; it doubles per failure (with jitter)
    webhook_retry_hours: float = 24.0  # retries spread over at least this long, then the subscription is in error
    webhook_timeout_seconds: float = 10.0  # per request to an endpoint (connect at most 5)
    webhook_concurrency: int = 16  # subscriptions a node delivers to at once
    webhook_blocked_networks: tuple[str, ...] = WEBHOOK_BLOCKED_NETWORKS  # CIDRs no webhook may reach

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        values: dict[str, object] = {
            "database_url": os.environ.get("EHR_DATABASE_URL") or None,
            "data_dir": Path(os.environ.get("EHR_DATA_DIR", ".ehr-data")),
            "public_base_url": os.environ.get("EHR_PUBLIC_BASE_URL") or None,
            "max_body_bytes": _int("EHR_MAX_BODY_BYTES", 16 * 1024 * 1024),
            "default_page_size": _int("EHR_DEFAULT_PAGE_SIZE", 20),
            "max_page_size": _int("EHR_MAX_PAGE_SIZE", 1000),
            "pool_min_size": _int("EHR_POOL_MIN_SIZE", 2),
            "pool_max_size": _int("EHR_POOL_MAX_SIZE", 10),
            # conditional
            "conditional_delete": _choice("EHR_CONDITIONAL_DELETE", ("single", "multiple")),
            # searchspec
            "index_contained": env_flag("EHR_INDEX_CONTAINED"),
            # restspec
            "trusted_proxies": _list("EHR_TRUSTED_PROXIES", ("127.0.0.0/8", "::1")),
            "allowed_hosts": _list("EHR_ALLOWED_HOSTS", ()),
            # limits
            "max_chain_branches": _int("EHR_MAX_CHAIN_BRANCHES", 32),
            "statement_timeout_ms": _int("EHR_STATEMENT_TIMEOUT_MS", 30_000),
            "max_includes": _int("EHR_MAX_INCLUDES", 1000),
            # references
            "search_expression_budget_ms": _int("EHR_SEARCH_EXPRESSION_BUDGET_MS", 100),
            # import
            "import_max_bundle_bytes": _int("EHR_IMPORT_MAX_BUNDLE_BYTES", 256 * 1024 * 1024),
            # hostile input
            "max_narrative_bytes": _int("EHR_MAX_NARRATIVE_BYTES", 1024 * 1024),
            # auth
            "auth": _choice("EHR_AUTH", ("on", "off")) == "on",
            "access_token_lifetime": _bounded("EHR_ACCESS_TOKEN_LIFETIME", 300, 30, 3600),
            "signing_key_rotation_hours": _bounded("EHR_SIGNING_KEY_ROTATION_HOURS", 24, 1, 24 * 365),
            # admin
            **_admin_client(),
            # auth extras
            "rate_limit_per_minute": _bounded("EHR_RATE_LIMIT_PER_MINUTE", 6000, 0, 10**9),
            "redis_url": os.environ.get("EHR_REDIS_URL") or None,
            "redis_key_prefix": os.environ.get("EHR_REDIS_KEY_PREFIX") or "ehr",
            "trusted_issuer": os.environ.get("EHR_TRUSTED_ISSUER") or None,  # compared exactly with `iss`
            "trusted_audience": os.environ.get("EHR_TRUSTED_AUDIENCE") or None,
            "trusted_fhir_user_claim": os.environ.get("EHR_TRUSTED_FHIR_USER_CLAIM") or "fhirUser",
            "trusted_policies": tuple(
                n.strip() for n in (os.environ.get("EHR_TRUSTED_POLICIES") or "").split(",") if n.strip()
            ),
            # audit
            "audit": _choice("EHR_AUDIT", ("on", "off")) == "on",
            "audit_sync_commit": _choice("EHR_AUDIT_SYNC_COMMIT", ("off", "on")) == "on",
            # events
            "event_retention_days": _bounded("EHR_EVENT_RETENTION_DAYS", 7, 1, 3650),
            # events: broker stream
            "nats_url": _nats_url(),
            "nats_stream": _name("EHR_NATS_STREAM", "EHR", _NATS_TOKEN),
            "nats_subject_prefix": _name("EHR_NATS_SUBJECT_PREFIX", "ehr", rf"{_NATS_TOKEN}(\.{_NATS_TOKEN})*"),
            # websocket
            "ws_max_connections": _bounded("EHR_WS_MAX_CONNECTIONS", 1000, 1, 1_000_000),
            # bulk export
            "bulk_file_bytes": _bounded("EHR_BULK_FILE_BYTES", 64 * 1024 * 1024, 1024, 2**40),
            "bulk_retention_hours": _bounded("EHR_BULK_RETENTION_HOURS", 24, 1, 24 * 365),
            "bulk_page_rows": _bounded("EHR_BULK_PAGE_ROWS", 1000, 1, 100_000),
            "bulk_export_jobs": _choice("EHR_BULK_EXPORT_JOBS", ("on", "off")) == "on",
            "bulk_s3_url": os.environ.get("EHR_BULK_S3_URL") or None,
            # bulk import
            "bulk_import_jobs": _choice("EHR_BULK_IMPORT_JOBS", ("on", "off")) == "on",
            "bulk_import_concurrency": _bounded("EHR_BULK_IMPORT_CONCURRENCY", 2, 1, 64),
            "bulk_import_max_bytes": _bounded("EHR_BULK_IMPORT_MAX_BYTES", 16 * 1024**3, 1024, 2**44),
            "bulk_import_fetch_seconds": _seconds("EHR_BULK_IMPORT_FETCH_SECONDS", 3600.0, 1, 7 * 24 * 3600),
            "bulk_import_max_errors": _bounded("EHR_BULK_IMPORT_MAX_ERRORS", 10_000, 0, 10_000_000),
            # asynchronous requests
            "async_max_open": _bounded("EHR_ASYNC_MAX_OPEN", 10, 1, 10_000),
            "async_max_result_bytes": _bounded("EHR_ASYNC_MAX_RESULT_BYTES", 256 * 1024 * 1024, 1024, 2**40),
            # webhooks
            "webhook_retry_base_seconds": _seconds("EHR_WEBHOOK_RETRY_BASE_SECONDS", 2.0, 0.001, 3600),
            "webhook_retry_hours": _seconds("EHR_WEBHOOK_RETRY_HOURS", 24.0, 0.0, 24 * 30),
            "webhook_timeout_seconds": _seconds("EHR_WEBHOOK_TIMEOUT_SECONDS", 10.0, 0.1, 120),
            "webhook_concurrency": _bounded("EHR_WEBHOOK_CONCURRENCY", 16, 1, 1000),
            "webhook_blocked_networks": _networks("EHR_WEBHOOK_BLOCKED_NETWORKS", WEBHOOK_BLOCKED_NETWORKS),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        if values["trusted_issuer"] and not values["trusted_audience"]:
            raise ValueError("EHR_TRUSTED_AUDIENCE is required with EHR_TRUSTED_ISSUER")
        return cls(**values)  # type: ignore[arg-type]


MIN_ADMIN_SECRET_LENGTH = 16


def _admin_client() -> dict[str, str | None]:
    """EHR_ADMIN_CLIENT_ID and EHR_ADMIN_CLIENT_SECRET: both or neither; a short secret stops start-up."""
    client_id = os.environ.get("EHR_ADMIN_CLIENT_ID") or None
    secret = os.environ.get("EHR_ADMIN_CLIENT_SECRET") or None
    if (client_id is None) != (secret is None):
        raise ValueError("set EHR_ADMIN_CLIENT_ID and EHR_ADMIN_CLIENT_SECRET together, or neither")
    if client_id is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}", client_id):
        raise ValueError(
            "EHR_ADMIN_CLIENT_ID: letters, digits and . _ @ + - (at most 128), starting with one of the first two"
        )
    if secret is not None and len(secret) < MIN_ADMIN_SECRET_LENGTH:
        raise ValueError(f"EHR_ADMIN_CLIENT_SECRET must be at least {MIN_ADMIN_SECRET_LENGTH} characters")
    return {"admin_client_id": client_id, "admin_client_secret": secret}


def _bounded(name: str, default: int, low: int, high: int) -> int:
    """An integer setting within [low, high]; outside it stops start-up."""
    value = _int(name, default)
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}, not {value}")
    return value


def _nats_url() -> str | None:
    """EHR_NATS_URL: nats://, tls://, ws:// or wss:// URLs with a host, comma-separated; else start-up stops."""
    raw = os.environ.get("EHR_NATS_URL") or None
    if raw is None:
        return None
    for part in raw.split(","):
        try:
            where = urlsplit(part.strip())
            valid = where.scheme in ("nats", "tls", "ws", "wss") and bool(where.hostname) and where.port != 0
        except ValueError:  # a malformed port
            valid = False
        if not valid:
            raise ValueError(f"EHR_NATS_URL must be nats://host:port URLs (a comma list), not '{part.strip()[:100]}'")
    return raw


_NATS_TOKEN = r"[A-Za-z0-9_-]{1,64}"  # a stream name, a subject token: no dots, spaces or wildcards


def _name(name: str, default: str, pattern: str) -> str:
    """A name matching pattern (a stream name, subject tokens); anything else stops start-up."""
    raw = os.environ.get(name) or default
    if not re.fullmatch(pattern, raw):
        raise ValueError(f"{name} must match {pattern}, not '{raw[:100]}'")
    return raw


def _seconds(name: str, default: float, low: float, high: float) -> float:
    """A number (fractions allowed) within [low, high]; anything else stops start-up."""
    raw = os.environ.get(name)
    try:
        value = float(raw) if raw else default
    except ValueError:
        raise ValueError(f"{name} must be a number, not '{raw}'") from None
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}, not {value}")
    return value


def _networks(name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    """A comma list of CIDRs (empty: none); a malformed one stops start-up."""
    cidrs = _list(name, default)
    for cidr in cidrs:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise ValueError(f"{name}: '{cidr}' is not an IP network (CIDR)") from None
    return cidrs


def _choice(name: str, allowed: tuple[str, ...]) -> str:
    """One of allowed (the first by default); anything else stops start-up."""
    raw = os.environ.get(name) or allowed[0]
    if raw not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, not '{raw}'")
    return raw
