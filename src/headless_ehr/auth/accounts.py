"""Clients and users of the authorisation server (tables auth_client, auth_user of 0014).

Client secrets are random tokens stored as their SHA-256 digest, shown once when made;
user passwords are Argon2id hashes, computed off the event loop (150 ms of CPU each).
A disabled client or user keeps its row but can get no token.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit

import asyncpg
import orjson
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from ..fhir.references import RESOURCE_ID
from . import secrets
from .scopes import ScopeError, parse_grant, split_scopes

Db = asyncpg.Pool | asyncpg.Connection
A = TypeVar("A")

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}", re.ASCII)  # client ids and usernames
_FHIR_USER = re.compile(r"(Patient|Practitioner|PractitionerRole|RelatedPerson|Person)/[A-Za-z0-9\-.]{1,64}", re.ASCII)
MIN_PASSWORD = 8
MAX_PASSWORD = 1024  # Argon2 hashes anything, but a megabyte password is an attack
MAX_LIST = 100


class AccountError(ValueError):
    """Input that cannot make a client or user (the admin API answers 400)."""


class AccountExists(AccountError):
    """The client_id or username is taken (409)."""


@dataclass(frozen=True)
class Client:
    client_id: str
    name: str
    public: bool
    redirect_uris: tuple[str, ...]
    scopes: tuple[str, ...]
    jwks: dict[str, Any] | None
    jwks_uri: str | None
    admin: bool
    enabled: bool
    has_secret: bool
    created_at: datetime | None = None

    @property
    def asymmetric(self) -> bool:
        return self.jwks is not None or self.jwks_uri is not None

    def as_json(self) -> dict[str, Any]:
        """What the admin API shows (never the secret's digest)."""
        out: dict[str, Any] = {
            "client_id": self.client_id,
            "name": self.name,
            "public": self.public,
            "redirect_uris": list(self.redirect_uris),
            "scopes": list(self.scopes),
            "admin": self.admin,
            "enabled": self.enabled,
            "token_endpoint_auth_method": self.auth_method,
        }
        if self.jwks is not None:
            out["jwks"] = self.jwks
        if self.jwks_uri is not None:
            out["jwks_uri"] = self.jwks_uri
        if self.created_at is not None:
            out["created_at"] = self.created_at.isoformat()
        return out

    @property
    def auth_method(self) -> str:
        if self.public:
            return "none"
        return "private_key_jwt" if self.asymmetric else "client_secret_basic"


@dataclass(frozen=True)
class User:
    username: str
    fhir_user: str | None
    roles: tuple[str, ...]
    patients: tuple[str, ...]
    enabled: bool
    created_at: datetime | None = None

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "username": self.username,
            "fhir_user": self.fhir_user,
            "roles": list(self.roles),
            "patients": list(self.patients),
            "enabled": self.enabled,
        }
        if self.created_at is not None:
            out["created_at"] = self.created_at.isoformat()
        return out

    @property
    def patient_choices(self) -> tuple[str, ...]:
        """The patients this user may act for: their own record when they are a Patient, else the list."""
        if self.fhir_user and self.fhir_user.startswith("Patient/"):
            return (self.fhir_user.removeprefix("Patient/"),)
        return self.patients


_CLIENT_COLUMNS = (
    "client_id, name, public, redirect_uris, scopes, jwks, jwks_uri, admin, enabled,"
    " secret_hash IS NOT NULL AS has_secret, created_at"
)
_USER_COLUMNS = "username, fhir_user, roles, patients, enabled, created_at"


def _client(row: asyncpg.Record) -> Client:
    jwks = row["jwks"]
    return Client(
        client_id=row["client_id"],
        name=row["name"],
        public=row["public"],
        redirect_uris=tuple(row["redirect_uris"]),
        scopes=tuple(row["scopes"]),
        jwks=orjson.loads(jwks) if isinstance(jwks, str | bytes) else jwks,
        jwks_uri=row["jwks_uri"],
        admin=row["admin"],
        enabled=row["enabled"],
        has_secret=row["has_secret"],
        created_at=row["created_at"],
    )


def _user(row: asyncpg.Record) -> User:
    return User(
        username=row["username"],
        fhir_user=row["fhir_user"],
        roles=tuple(row["roles"]),
        patients=tuple(row["patients"]),
        enabled=row["enabled"],
        created_at=row["created_at"],
    )


@dataclass(frozen=True)
class _Accounts(Generic[A]):
    """Reading and enabling one kind of account: clients and users follow the same rules."""

    table: str
    key: str  # the column naming an account, also auth_refresh_token's column naming its holder
    columns: str
    make: Callable[[asyncpg.Record], A]

    async def get(self, db: Db, key: str) -> A | None:
        row = await db.fetchrow(f"SELECT {self.columns} FROM {self.table} WHERE {self.key} = $1", key)
        return self.make(row) if row is not None else None

    async def list(self, db: Db) -> list[A]:
        rows = await db.fetch(f"SELECT {self.columns} FROM {self.table} ORDER BY created_at, {self.key}")
        return [self.make(r) for r in rows]

    async def set_enabled(self, db: Db, key: str, enabled: bool) -> A | None:
        row = await db.fetchrow(
            f"UPDATE {self.table} SET enabled = $2 WHERE {self.key} = $1 RETURNING {self.columns}", key, enabled
        )
        if row is not None and not enabled:
            # its refresh tokens die with it (access tokens run out within their short lifetime)
            await db.execute(
                f"UPDATE auth_refresh_token SET revoked_at = now() WHERE {self.key} = $1 AND revoked_at IS NULL", key
            )
        return self.make(row) if row is not None else None


_CLIENTS = _Accounts("auth_client", "client_id", _CLIENT_COLUMNS, _client)
_USERS = _Accounts("auth_user", "username", _USER_COLUMNS, _user)


# ---- validation -------------------------------------------------------------------------


def _strings(value: object, what: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise AccountError(f"{what} must be a list of strings")
    if len(value) > MAX_LIST:
        raise AccountError(f"at most {MAX_LIST} {what}")
    return list(dict.fromkeys(value))


def is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# schemes whose URL a browser runs or reads locally rather than hands to an app (RFC 8252 §7.1
# allows private-use schemes such as com.example.app: for native apps)
_UNSAFE_SCHEMES = frozenset({"javascript", "data", "vbscript", "file", "blob", "about", "filesystem"})


def _redirect_uri(uri: str) -> str:
    parts = urlsplit(uri)
    if not parts.scheme or len(uri) > 2000 or parts.fragment or any(c.isspace() for c in uri):
        raise AccountError(f"redirect_uri '{uri[:200]}' must be an absolute URI without a fragment")
    if parts.scheme.lower() in _UNSAFE_SCHEMES:
        raise AccountError(f"redirect_uri '{uri[:200]}' uses a scheme a browser would run or read locally")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise AccountError(f"redirect_uri '{uri[:200]}' must use https (http only for loopback addresses)")
    if parts.scheme in ("http", "https") and not parts.hostname:
        raise AccountError(f"redirect_uri '{uri[:200]}' has no host")
    return uri


def _scopes(scopes: object) -> list[str]:
    if isinstance(scopes, str):
        try:
            scopes = split_scopes(scopes)
        except ScopeError as error:
            raise AccountError(str(error)) from None
    listed = _strings(scopes, "scopes")
    for scope in listed:
        if not scope or any(c.isspace() for c in scope):
            raise AccountError(f"scope '{scope[:100]}' is empty or holds white space")
        try:
            parse_grant(scope)
        except ScopeError as error:
            raise AccountError(str(error)) from None
    return listed


def check_jwks(jwks: object) -> dict[str, Any]:
    """A JWK Set of public keys (RSA or EC) a client signs its assertions with."""
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list) or not jwks["keys"]:
        raise AccountError("jwks must be a JWK Set: {'keys': [ ... ]}")
    if len(jwks["keys"]) > 20:
        raise AccountError("jwks may hold at most 20 keys")
    for key in jwks["keys"]:
        if not isinstance(key, dict) or key.get("kty") not in ("RSA", "EC"):
            raise AccountError("every key of jwks must be an RSA or EC JWK")
        if "d" in key:
            raise AccountError("jwks must hold public keys only (a private key was sent)")
    try:
        KeySet.import_key_set(jwks)  # type: ignore[arg-type]
    except (JoseError, ValueError, TypeError, KeyError) as error:
        raise AccountError(f"jwks holds a key that cannot be read ({type(error).__name__})") from None
    return jwks


def check_jwks_uri(uri: str) -> str:
    parts = urlsplit(uri)
    if parts.scheme == "https" and parts.hostname:
        return uri
    if parts.scheme == "http" and is_loopback(parts.hostname):
        return uri
    raise AccountError("jwks_uri must be an https URL (http only for loopback addresses)")


# ---- clients ----------------------------------------------------------------------------


async def create_client(
    db: Db,
    name: str,
    redirect_uris: list[str] | None = None,
    scopes: list[str] | str | None = None,
    public: bool = False,
    jwks: dict[str, Any] | None = None,
    jwks_uri: str | None = None,
    admin: bool = False,
    client_id: str | None = None,
    secret: str | None = None,
) -> tuple[Client, str | None]:
    """Register a client; returns it and, for a confidential-symmetric client, its secret (shown once).

    Public: no credentials (authorization code + PKCE only). Asymmetric: jwks or jwks_uri
    (private_key_jwt). Otherwise confidential-symmetric with a random (or given) secret.
    """
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise AccountError("name is required (at most 200 characters)")
    uris = [_redirect_uri(u) for u in _strings(redirect_uris, "redirect_uris")]
    granted = _scopes(scopes)
    if not isinstance(public, bool) or not isinstance(admin, bool):
        raise AccountError("public and admin must be true or false")
    if jwks is not None and jwks_uri is not None:
        raise AccountError("give jwks or jwks_uri, not both")
    if jwks is not None:
        jwks = check_jwks(jwks)
    if jwks_uri is not None:
        if not isinstance(jwks_uri, str):
            raise AccountError("jwks_uri must be a URL")
        jwks_uri = check_jwks_uri(jwks_uri)
    asymmetric = jwks is not None or jwks_uri is not None
    if public and (asymmetric or secret is not None):
        raise AccountError("a public client has no secret and no keys")
    if public and admin:
        raise AccountError("an admin client must be confidential")
    if asymmetric and secret is not None:
        raise AccountError("a client with keys has no secret")
    if client_id is None:
        client_id = secrets.new_token(16)
    elif not isinstance(client_id, str) or not _NAME.fullmatch(client_id):
        raise AccountError("client_id: letters, digits and . _ @ + - (at most 128)")
    if not public and not asymmetric:
        if secret is None:
            secret = secrets.new_token()
        elif not isinstance(secret, str) or len(secret) < 16 or len(secret) > 512:
            raise AccountError("a client secret must have 16 to 512 characters")
    try:
        row = await db.fetchrow(
            "INSERT INTO auth_client"
            " (client_id, name, secret_hash, public, redirect_uris, scopes, jwks, jwks_uri, admin)"
            f" VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8, $9) RETURNING {_CLIENT_COLUMNS}",
            client_id,
            name.strip(),
            secrets.digest(secret) if secret is not None else None,
            public,
            uris,
            granted,
            orjson.dumps(jwks).decode() if jwks is not None else None,
            jwks_uri,
            admin,
        )
    except asyncpg.UniqueViolationError:
        raise AccountExists(f"a client '{client_id}' exists already") from None
    assert row is not None
    return _client(row), secret


async def get_client(db: Db, client_id: str) -> Client | None:
    return await _CLIENTS.get(db, client_id)


async def list_clients(db: Db) -> list[Client]:
    return await _CLIENTS.list(db)


async def set_client_enabled(db: Db, client_id: str, enabled: bool) -> Client | None:
    return await _CLIENTS.set_enabled(db, client_id, enabled)


async def disable_client(db: Db, client_id: str) -> Client | None:
    return await set_client_enabled(db, client_id, False)


async def delete_client(db: Db, client_id: str) -> bool:
    """Remove a client (its codes and refresh tokens go with it)."""
    return await db.fetchval("DELETE FROM auth_client WHERE client_id = $1 RETURNING true", client_id) is not None


async def check_client_secret(db: Db, client_id: str, secret: str) -> Client | None:
    """The enabled confidential-symmetric client these credentials prove; None otherwise.
    Compares digests in constant time, and does the same work for an unknown client."""
    row = await db.fetchrow(
        f"SELECT {_CLIENT_COLUMNS}, secret_hash FROM auth_client WHERE client_id = $1",
        client_id,
    )
    stored = row["secret_hash"] if row is not None and row["secret_hash"] else secrets.digest("")
    matches = secrets.same(secrets.digest(secret), stored)
    if row is None or not matches or not row["enabled"] or not row["secret_hash"]:
        return None
    return _client(row)


# ---- users ------------------------------------------------------------------------------


async def create_user(
    db: Db,
    username: str,
    password: str,
    fhir_user: str | None = None,
    roles: list[str] | None = None,
    patients: list[str] | None = None,
) -> User:
    if not isinstance(username, str) or not _NAME.fullmatch(username):
        raise AccountError("username: letters, digits and . _ @ + - (at most 128), starting with a letter or digit")
    if not isinstance(password, str) or not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise AccountError(f"password must have {MIN_PASSWORD} to {MAX_PASSWORD} characters")
    if fhir_user is not None and (not isinstance(fhir_user, str) or not _FHIR_USER.fullmatch(fhir_user)):
        raise AccountError("fhir_user must be a reference such as Patient/123 or Practitioner/7")
    role_list = _strings(roles, "roles")
    patient_list = _strings(patients, "patients")
    for patient in patient_list:
        if not RESOURCE_ID.fullmatch(patient.removeprefix("Patient/")):
            raise AccountError(f"patients: '{patient[:100]}' is not a Patient id")
    patient_list = [p.removeprefix("Patient/") for p in patient_list]
    password_hash = await asyncio.to_thread(secrets.hash_password, password)
    try:
        row = await db.fetchrow(
            "INSERT INTO auth_user (username, password_hash, fhir_user, roles, patients)"
            f" VALUES ($1, $2, $3, $4, $5) RETURNING {_USER_COLUMNS}",
            username,
            password_hash,
            fhir_user,
            role_list,
            patient_list,
        )
    except asyncpg.UniqueViolationError:
        raise AccountExists(f"a user '{username}' exists already") from None
    assert row is not None
    return _user(row)


async def get_user(db: Db, username: str) -> User | None:
    return await _USERS.get(db, username)


async def list_users(db: Db) -> list[User]:
    return await _USERS.list(db)


async def set_user_enabled(db: Db, username: str, enabled: bool) -> User | None:
    return await _USERS.set_enabled(db, username, enabled)


async def disable_user(db: Db, username: str) -> User | None:
    return await set_user_enabled(db, username, False)


async def delete_user(db: Db, username: str) -> bool:
    deleted = await db.fetchval("DELETE FROM auth_user WHERE username = $1 RETURNING true", username)
    if deleted:
        await db.execute("DELETE FROM auth_refresh_token WHERE username = $1", username)
        await db.execute("DELETE FROM auth_code WHERE username = $1", username)
    return deleted is not None


async def authenticate_user(db: Db, username: str, password: str) -> User | None:
    """The enabled user this password proves; None otherwise (same work for an unknown user)."""
    if not isinstance(username, str) or not isinstance(password, str) or len(password) > MAX_PASSWORD:
        return None
    row = None
    if _NAME.fullmatch(username):
        row = await db.fetchrow(f"SELECT {_USER_COLUMNS}, password_hash FROM auth_user WHERE username = $1", username)
    ok = await asyncio.to_thread(secrets.verify_password, password, row["password_hash"] if row else None)
    if row is None or not ok or not row["enabled"]:
        return None
    return _user(row)


async def user_is_enabled(db: Db, username: str) -> bool:
    return bool(await db.fetchval("SELECT enabled FROM auth_user WHERE username = $1", username))
