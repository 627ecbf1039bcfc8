"""The short-lived state of the OAuth flows in PostgreSQL: authorization codes, refresh
tokens, EHR launch contexts' use and client assertion ids. Stored as digests, so a copy
of the database gives no usable code or token; any node finishes any flow."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, fields
from datetime import datetime
from typing import TypeVar

import asyncpg

from . import secrets

Db = asyncpg.Pool | asyncpg.Connection
G = TypeVar("G", "CodeGrant", "RefreshGrant")

CODE_LIFETIME = 60  # seconds an authorization code may wait for its redemption
ONLINE_REFRESH_LIFETIME = 12 * 3600  # online_access: a working day; offline_access: until revoked


@dataclass(frozen=True)
class CodeGrant:
    """What an authorization code stands for."""

    client_id: str
    username: str
    redirect_uri: str
    scope: str
    code_challenge: str
    nonce: str | None
    patient: str | None
    encounter: str | None
    aud: str
    expired: bool
    purpose_of_use: str | None = None


@dataclass(frozen=True)
class RefreshGrant:
    family: uuid.UUID
    client_id: str
    username: str | None
    fhir_user: str | None
    scope: str
    patient: str | None
    encounter: str | None
    aud: str
    expires_at: datetime | None
    purpose_of_use: str | None = None


class GrantReused(Exception):
    """A code or refresh token presented a second time: its family has been revoked."""


async def create_code(
    db: Db,
    *,
    client_id: str,
    username: str,
    redirect_uri: str,
    scope: str,
    code_challenge: str,
    nonce: str | None,
    patient: str | None,
    encounter: str | None,
    aud: str,
    purpose_of_use: str | None = None,
) -> str:
    code = secrets.new_token()
    await db.execute(
        "INSERT INTO auth_code (code_hash, client_id, username, redirect_uri, scope, code_challenge, nonce,"
        " patient, encounter, aud, expires_at, purpose_of_use)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, now() + make_interval(secs => $11), $12)",
        secrets.digest(code),
        client_id,
        username,
        redirect_uri,
        scope,
        code_challenge,
        nonce,
        patient,
        encounter,
        aud,
        CODE_LIFETIME,
        purpose_of_use,
    )
    return code


async def redeem_code(db: Db, code: str) -> CodeGrant | None:
    """Use a code once. None for an unknown code; GrantReused for a used one (the refresh
    tokens issued from it are revoked, RFC 6749 §4.1.2). An expired code is used up too."""
    code_hash = secrets.digest(code)
    row = await db.fetchrow(
        "UPDATE auth_code SET used_at = now() WHERE code_hash = $1 AND used_at IS NULL"
        " RETURNING *, expires_at < now() AS expired",
        code_hash,
    )
    if row is None:
        family = await db.fetchrow("SELECT family FROM auth_code WHERE code_hash = $1", code_hash)
        if family is None:
            return None
        if family["family"] is not None:
            await revoke_family(db, family["family"])
        raise GrantReused("the authorization code has been used already")
    return _of_row(CodeGrant, row)


async def purge(db: Db) -> None:
    """Forget codes, refresh tokens and assertion ids that can no longer matter."""
    await db.execute("DELETE FROM auth_code WHERE expires_at < now() - interval '1 day'")
    await db.execute("DELETE FROM auth_assertion_jti WHERE expires_at < now() - interval '10 minutes'")
    await db.execute("DELETE FROM auth_launch WHERE expires_at < now() - interval '1 day'")
    await db.execute("DELETE FROM auth_session WHERE expires_at < now()")
    await db.execute(
        "DELETE FROM auth_refresh_token WHERE (expires_at < now() OR revoked_at IS NOT NULL)"
        " AND created_at < now() - interval '30 days'"
    )
    # spent ones (offline_access: no expiry) are kept a month to catch a reuse, not for ever;
    # a reuse after that is refused as unknown, without revoking the family
    await db.execute("DELETE FROM auth_refresh_token WHERE used_at < now() - interval '30 days'")


async def issue_refresh(
    db: Db,
    *,
    family: uuid.UUID | None,
    client_id: str,
    username: str | None,
    fhir_user: str | None,
    scope: str,
    patient: str | None,
    encounter: str | None,
    aud: str,
    lifetime: int | None,
    purpose_of_use: str | None = None,
) -> tuple[str, uuid.UUID]:
    """A new refresh token (in a new family unless given); lifetime None: until revoked."""
    token = secrets.new_token()
    family = family or uuid.uuid4()
    await db.execute(
        "INSERT INTO auth_refresh_token (token_hash, family, client_id, username, fhir_user, scope, patient,"
        " encounter, aud, expires_at, purpose_of_use)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, now() + make_interval(secs => $10), $11)",
        secrets.digest(token),
        family,
        client_id,
        username,
        fhir_user,
        scope,
        patient,
        encounter,
        aud,
        lifetime,
        purpose_of_use,
    )
    return token, family


async def link_code_family(db: Db, code: str, family: uuid.UUID) -> None:
    await db.execute("UPDATE auth_code SET family = $2 WHERE code_hash = $1", secrets.digest(code), family)


def _of_row(cls: type[G], row: asyncpg.Record) -> G:
    """A grant from its row: every field is the column of its name."""
    return cls(**{f.name: row[f.name] for f in fields(cls)})


def _refresh(row: asyncpg.Record) -> RefreshGrant:
    return _of_row(RefreshGrant, row)


async def use_refresh(conn: asyncpg.Connection, token: str) -> RefreshGrant | None:
    """Spend a refresh token (in the caller's transaction). None when unknown, expired or
    revoked; GrantReused when it was spent before: then its whole family is revoked."""
    row = await conn.fetchrow(
        "SELECT *, expires_at < now() AS expired FROM auth_refresh_token WHERE token_hash = $1 FOR UPDATE",
        secrets.digest(token),
    )
    if row is None or row["revoked_at"] is not None or row["expired"]:
        return None
    if row["used_at"] is not None:
        await revoke_family(conn, row["family"])
        raise GrantReused("the refresh token has been used already")
    await conn.execute("UPDATE auth_refresh_token SET used_at = now() WHERE token_hash = $1", row["token_hash"])
    return _refresh(row)


async def find_refresh(db: Db, token: str) -> RefreshGrant | None:
    """An unspent, unrevoked, unexpired refresh token (introspection, revocation)."""
    row = await db.fetchrow(
        "SELECT * FROM auth_refresh_token WHERE token_hash = $1 AND used_at IS NULL AND revoked_at IS NULL"
        " AND (expires_at IS NULL OR expires_at > now())",
        secrets.digest(token),
    )
    return _refresh(row) if row is not None else None


async def refresh_exists(db: Db, token: str) -> RefreshGrant | None:
    """Any refresh token by its value, spent or not (revocation of a whole family)."""
    row = await db.fetchrow("SELECT * FROM auth_refresh_token WHERE token_hash = $1", secrets.digest(token))
    return _refresh(row) if row is not None else None


async def revoke_family(db: Db, family: uuid.UUID) -> None:
    await db.execute(
        "UPDATE auth_refresh_token SET revoked_at = now() WHERE family = $1 AND revoked_at IS NULL", family
    )


async def record_assertion(db: Db, client_id: str, jti: str, expires_at: float) -> bool:
    """Remember a client assertion's jti until it expires; False when it was seen before."""
    return (
        await db.fetchval(
            "INSERT INTO auth_assertion_jti (client_id, jti, expires_at) VALUES ($1, $2, to_timestamp($3))"
            " ON CONFLICT DO NOTHING RETURNING true",
            client_id,
            jti,
            expires_at,
        )
        is not None
    )
