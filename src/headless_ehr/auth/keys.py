"""Token signing keys (ES256), kept in PostgreSQL so that every node signs and verifies
with the same keys.

The newest unretired key signs. A key older than the rotation period is retired by
whichever node notices first (under an advisory lock) and a new one made; a retired
key keeps verifying, and stays published at /jwks, until every token it signed has
expired (MAX_TOKEN_LIFETIME after retirement); then it is deleted.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta

import asyncpg
import orjson
from joserfc.jwk import ECKey, KeySet

from ..db.periodic import Periodic

log = logging.getLogger("headless_ehr.auth")

MAX_TOKEN_LIFETIME = 3600  # seconds: the longest an access token may live (EHR_ACCESS_TOKEN_LIFETIME)
_ROTATION_LOCK = 0x5EC0_0001  # advisory lock key: one node rotates at a time
REFRESH_SECONDS = 60  # how often a node reloads the key set (a rotation elsewhere shows up by then)


class SigningKeys:
    """The key set of the database: `signing` signs, `keyset` verifies."""

    def __init__(self, pool: asyncpg.Pool, rotation: timedelta) -> None:
        self.pool = pool
        self.rotation = rotation
        self.signing: ECKey | None = None
        self.keyset = KeySet([])
        self.public: list[dict[str, object]] = []
        self.rotated: Callable[[str], Awaitable[None]] | None = None  # told each new kid (the audit trail)
        self._poller = Periodic(
            REFRESH_SECONDS, self.refresh, log, "could not reload the signing keys; keeping the current ones"
        )

    async def start(self) -> None:
        await self._poller.start()

    async def close(self) -> None:
        await self._poller.close()

    async def refresh(self) -> None:
        """Rotate when due, then load every key still published."""
        made = None
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _ROTATION_LOCK)
            newest = await conn.fetchval(
                "SELECT max(created_at) > now() - $1::interval FROM auth_signing_key WHERE retired_at IS NULL",
                self.rotation,
            )
            if not newest:
                made = await self._rotate(conn)
            await conn.execute(
                "DELETE FROM auth_signing_key WHERE retired_at < now() - make_interval(secs => $1)",
                MAX_TOKEN_LIFETIME + 60,
            )
            rows = await conn.fetch(
                "SELECT kid, private_jwk, public_jwk, retired_at IS NULL AS active FROM auth_signing_key"
                " ORDER BY created_at DESC"
            )
        keys = [ECKey.import_key(orjson.loads(r["private_jwk"])) for r in rows]
        self.signing = next(k for k, r in zip(keys, rows, strict=True) if r["active"])
        self.keyset = KeySet(keys)
        self.public = [orjson.loads(r["public_jwk"]) for r in rows]
        if made is not None:
            await self._tell(made)

    async def _tell(self, kid: str) -> None:
        if self.rotated is not None:
            await self.rotated(kid)

    async def _rotate(self, conn: asyncpg.Connection) -> str:
        kid = uuid.uuid4().hex
        key = ECKey.generate_key("P-256", parameters={"kid": kid, "alg": "ES256", "use": "sig"}, private=True)
        await conn.execute("UPDATE auth_signing_key SET retired_at = now() WHERE retired_at IS NULL")
        await conn.execute(
            "INSERT INTO auth_signing_key (kid, private_jwk, public_jwk) VALUES ($1, $2, $3)",
            kid,
            orjson.dumps(key.as_dict(private=True)).decode(),
            orjson.dumps(key.as_dict(private=False)).decode(),
        )
        log.info("new token signing key %s", kid)
        return kid

    async def rotate_now(self) -> None:
        """Retire the signing key and make a new one (tests, key compromise)."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _ROTATION_LOCK)
            kid = await self._rotate(conn)
        await self.refresh()
        await self._tell(kid)

    def jwks(self) -> dict[str, object]:
        return {"keys": self.public}
