"""The first admin client, made at start-up so a new server can be administered at all.

On an empty database (no admin client) the first node to start makes one and writes
`{"client_id": …, "client_secret": …}` to `<data dir>/admin-client.json` (mode 600);
the database keeps only the secret's digest. With EHR_ADMIN_CLIENT_ID and
EHR_ADMIN_CLIENT_SECRET set, that client is made (or its secret, scopes and admin flag
restored) instead, and no file is written. Nodes starting at once serialise on an
advisory lock, so only one of them creates anything.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import uuid
from pathlib import Path

import asyncpg
import orjson

from ..config import Settings
from .secrets import digest, new_token

log = logging.getLogger("headless_ehr.auth")

ADMIN_CLIENT_FILE = "admin-client.json"
ADMIN_CLIENT_NAME = "admin"
ADMIN_SCOPES = ["system/*.*", "system/*.cruds"]  # v1 and v2 spellings of everything
_BOOTSTRAP_LOCK = 0x5EC0_0002  # advisory lock key: one node bootstraps at a time


def admin_client_file(data_dir: Path) -> Path:
    return data_dir / ADMIN_CLIENT_FILE


async def ensure_admin_client(pool: asyncpg.Pool, settings: Settings) -> None:
    """Make sure an admin client exists (see the module docstring); logs what it did."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _BOOTSTRAP_LOCK)
        if settings.admin_client_id and settings.admin_client_secret:
            await _upsert(conn, settings.admin_client_id, settings.admin_client_secret)
            log.info("admin client '%s' from EHR_ADMIN_CLIENT_ID/EHR_ADMIN_CLIENT_SECRET", settings.admin_client_id)
            return
        if await conn.fetchval("SELECT EXISTS (SELECT 1 FROM auth_client WHERE admin)"):
            return
        client_id, secret = f"admin-{uuid.uuid4().hex[:12]}", new_token()
        await _upsert(conn, client_id, secret)
        # written before the commit: if the file cannot be written, nothing is stored and
        # the next start tries again, rather than an admin client whose secret nobody has
        credentials = {"client_id": client_id, "client_secret": secret}
        path = write_private_json(admin_client_file(settings.data_dir), credentials)
    log.warning("created admin client '%s'; its credentials are in %s (mode 600)", client_id, path)


async def _upsert(conn: asyncpg.Connection, client_id: str, secret: str) -> None:
    await conn.execute(
        """INSERT INTO auth_client (client_id, name, secret_hash, scopes, admin)
           VALUES ($1, $2, $3, $4, true)
           ON CONFLICT (client_id) DO UPDATE
           SET secret_hash = EXCLUDED.secret_hash, scopes = EXCLUDED.scopes, admin = true, enabled = true,
               public = false, jwks = NULL, jwks_uri = NULL""",
        client_id,
        ADMIN_CLIENT_NAME,
        digest(secret),
        ADMIN_SCOPES,
    )


def write_private_json(path: Path, value: object) -> Path:
    """Write JSON readable by this OS user only (mode 600), atomically; returns the absolute path."""
    path = path.absolute()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mkstemp creates it 600
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(orjson.dumps(value, option=orjson.OPT_INDENT_2) + b"\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path
