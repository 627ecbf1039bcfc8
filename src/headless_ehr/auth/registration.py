"""Registering clients and users from JSON: the admin API and `ehr client/user create` share it.

The shape of the request (known fields, JSON types) is checked here; what the values may
be is auth/accounts.py's rule. Access policy names (issue 11) are stored alongside, in
the same transaction as the account.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from . import accounts
from .accounts import AccountError
from .policies import unknown_policies

CLIENT_FIELDS = ("name", "client_id", "redirect_uris", "scopes", "public", "jwks", "jwks_uri", "admin", "policies")
USER_FIELDS = ("username", "password", "fhir_user", "roles", "patients", "policies")
_KIND = {  # table and key column of each account kind, for the policies they carry
    "client": ("auth_client", "client_id"),
    "user": ("auth_user", "username"),
}
MAX_POLICY_NAME = 200


def _fields(body: Any, known: tuple[str, ...]) -> dict[str, Any]:
    """The non-null fields of a JSON object; an unknown field is refused (a typo would be ignored otherwise)."""
    if not isinstance(body, dict):
        raise AccountError("the body must be a JSON object")
    unknown = sorted(set(body) - set(known))
    if unknown:
        raise AccountError(f"unknown field '{unknown[0][:100]}' (known: {', '.join(known)})")
    return {k: v for k, v in body.items() if v is not None}


def _policies(value: object) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise AccountError("policies must be a list of policy names")
    if any(len(v) > MAX_POLICY_NAME for v in value) or len(value) > accounts.MAX_LIST:
        raise AccountError(f"at most {accounts.MAX_LIST} policies of at most {MAX_POLICY_NAME} characters")
    return list(dict.fromkeys(value))


def _typed(fields: dict[str, Any], strings: tuple[str, ...], flags: tuple[str, ...] = ()) -> None:
    for name in strings:
        if name in fields and not isinstance(fields[name], str):
            raise AccountError(f"{name} must be a string")
    for name in flags:
        if name in fields and not isinstance(fields[name], bool):
            raise AccountError(f"{name} must be true or false")


async def register_client(pool: asyncpg.Pool, body: Any) -> dict[str, Any]:
    """Create a client from a registration; its JSON, with `client_secret` when one was made (shown once)."""
    fields = _fields(body, CLIENT_FIELDS)
    policies = _policies(fields.pop("policies", None))
    _typed(fields, ("name", "client_id", "jwks_uri"), ("public", "admin"))
    if "name" not in fields:
        raise AccountError("name is required")
    if isinstance(fields.get("scopes"), str):
        raise AccountError("scopes must be a list of strings")
    async with pool.acquire() as conn, conn.transaction():
        client, secret = await accounts.create_client(conn, **fields)
        await set_policies(conn, "client", client.client_id, policies)
    out = {**client.as_json(), "policies": policies}
    if secret is not None:
        out["client_secret"] = secret
    return out


async def register_user(pool: asyncpg.Pool, body: Any) -> dict[str, Any]:
    """Create a user from a registration; its JSON (never the password)."""
    fields = _fields(body, USER_FIELDS)
    policies = _policies(fields.pop("policies", None))
    _typed(fields, ("username", "password", "fhir_user"))
    for name in ("username", "password"):
        if name not in fields:
            raise AccountError(f"{name} is required")
    async with pool.acquire() as conn, conn.transaction():
        user = await accounts.create_user(conn, **fields)
        await set_policies(conn, "user", user.username, policies)
    return {**user.as_json(), "policies": policies}


async def set_policies(db: accounts.Db, kind: str, key: str, policies: list[str]) -> None:
    """Assign policies by name; an unknown name is refused (AccountError)."""
    unknown = await unknown_policies(db, policies)
    if unknown:
        raise AccountError(f"no access policy named '{unknown[0][:200]}' (create it with POST /admin/policies)")
    table, column = _KIND[kind]
    await db.execute(f"UPDATE {table} SET policies = $2 WHERE {column} = $1", key, policies)


async def policies_of(db: accounts.Db, kind: str, keys: list[str]) -> dict[str, list[str]]:
    """The policy names of each account."""
    table, column = _KIND[kind]
    rows = await db.fetch(f"SELECT {column} AS key, policies FROM {table} WHERE {column} = ANY($1::text[])", keys)
    return {r["key"]: list(r["policies"]) for r in rows}
