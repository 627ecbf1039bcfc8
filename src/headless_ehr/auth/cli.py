"""The `ehr client create`, `ehr user create` and `ehr token` commands.

`client create` and `user create` write to the database directly (as the admin API
would, through auth/registration.py), so they work before any server runs. `ehr token`
asks a running server for a system token with the admin client's credentials, as any
SMART backend service would (client_credentials, client_secret_basic).
"""

from __future__ import annotations

import asyncio
import getpass
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus, urlsplit

import orjson

from ..config import Settings
from .accounts import AccountError
from .bootstrap import admin_client_file


class CommandError(Exception):
    """A failure the command reports in one line on stderr (no traceback)."""


# ---- client and user create --------------------------------------------------------------


async def _register(database_url: str, kind: str, body: dict[str, Any], audit: bool) -> dict[str, Any]:
    from ..db.migrate import migrate
    from ..db.pool import create_pool
    from .audit_trail import record_command
    from .registration import register_client, register_user

    key_name = "client_id" if kind == "client" else "username"
    pool = await create_pool(database_url, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            await migrate(conn)  # a database no server has started on yet
        try:
            created = await (register_client if kind == "client" else register_user)(pool, body)
        except AccountError as error:
            if audit:
                claimed = body.get(key_name)
                await record_command(pool, kind, claimed if isinstance(claimed, str) else None, str(error))
            raise
        if audit:
            await record_command(pool, kind, created[key_name], None)
        return created
    finally:
        await pool.close()


def register(settings: Settings, kind: str, body: dict[str, Any]) -> dict[str, Any]:
    """Create a client or user in the settings' database; CommandError with the reason when refused."""
    assert settings.database_url
    try:
        return asyncio.run(_register(settings.database_url, kind, body, settings.audit))
    except AccountError as error:
        raise CommandError(str(error)) from None


def client_body(args: Any) -> dict[str, Any]:
    """The registration the `ehr client create` options describe."""
    body: dict[str, Any] = {
        "name": args.name,
        "redirect_uris": args.redirect_uri,
        "scopes": [s for value in args.scope for s in value.split()],
        "public": args.public,
        "jwks_uri": args.jwks_uri,
        "admin": args.admin,
        "policies": args.policy,
        "client_id": args.client_id,
    }
    if args.jwks_file:
        try:
            body["jwks"] = orjson.loads(Path(args.jwks_file).read_bytes())
        except OSError as error:
            raise CommandError(f"cannot read {args.jwks_file}: {error.strerror}") from None
        except orjson.JSONDecodeError as error:
            raise CommandError(f"{args.jwks_file} is not JSON: {error}") from None
    return {k: v for k, v in body.items() if v is not None}


def user_body(args: Any) -> dict[str, Any]:
    """The registration the `ehr user create` options describe (the password from stdin when asked)."""
    password = args.password
    if args.password_stdin:  # a terminal is asked without echo; a pipe gives its first line
        password = getpass.getpass("password: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise CommandError("give the password with --password-stdin (or --password)")
    body = {
        "username": args.username,
        "password": password,
        "fhir_user": args.fhir_user,
        "roles": args.role,
        "patients": args.patient,
        "policies": args.policy,
    }
    return {k: v for k, v in body.items() if v is not None}


# ---- token ------------------------------------------------------------------------------


def admin_credentials(data_dir: Path) -> tuple[str, str]:
    """EHR_ADMIN_CLIENT_ID/SECRET when set, else the data dir's admin-client.json."""
    client_id, secret = os.environ.get("EHR_ADMIN_CLIENT_ID"), os.environ.get("EHR_ADMIN_CLIENT_SECRET")
    if client_id and secret:
        return client_id, secret
    path = admin_client_file(data_dir).absolute()
    try:
        credentials = orjson.loads(path.read_bytes())
        return str(credentials["client_id"]), str(credentials["client_secret"])
    except FileNotFoundError:
        raise CommandError(
            f"no admin client credentials: {path} does not exist (the server writes it on its first start"
            " against an empty database; pass the server's --data-dir, or set EHR_ADMIN_CLIENT_ID and"
            " EHR_ADMIN_CLIENT_SECRET)"
        ) from None
    except OSError as error:
        raise CommandError(f"cannot read {path}: {error.strerror}") from None
    except (orjson.JSONDecodeError, KeyError, TypeError):
        raise CommandError(f"{path} is not an admin client file (client_id, client_secret)") from None


def fetch_token(url: str, client_id: str, secret: str, scope: str, purpose: str = "") -> str:
    """A system access token from the server whose FHIR base is url (purpose: purpose_of_use codes)."""
    import httpx

    base = url.rstrip("/")
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise CommandError(f"--url must be the server's FHIR base, e.g. http://127.0.0.1:8080/fhir (not '{url}')")
    # RFC 6749 §2.3.1: client_secret_basic form-encodes both parts first
    auth = httpx.BasicAuth(quote_plus(client_id), quote_plus(secret))
    try:
        with httpx.Client(timeout=30) as http:
            endpoint = _token_endpoint(http, base)
            form = {"grant_type": "client_credentials", "scope": scope}
            if purpose:
                form["purpose_of_use"] = purpose
            res = http.post(endpoint, data=form, auth=auth)
    except httpx.ConnectError:
        raise CommandError(f"no server answers at {base} (start one with `ehr serve`, or pass --url)") from None
    except httpx.HTTPError as error:
        raise CommandError(f"could not reach {base}: {error}") from None
    body = _json_of(res)
    token = body.get("access_token") if res.status_code == 200 else None
    if isinstance(token, str) and token:
        return token
    reason = f"{body.get('error', f'HTTP {res.status_code}')}: {body.get('error_description', res.text[:200])}"
    if res.status_code == 401:
        raise CommandError(
            f"the server refused the admin client '{client_id}' ({reason}); is it the server of this data dir?"
        )
    raise CommandError(f"the server gave no token ({reason})")


def _token_endpoint(http: Any, base: str) -> str:
    """From the server's SMART configuration; the conventional /oauth/token when it has none."""
    res = http.get(f"{base}/.well-known/smart-configuration")
    endpoint = _json_of(res).get("token_endpoint") if res.status_code == 200 else None
    if isinstance(endpoint, str) and endpoint.startswith(("http://", "https://")):
        return endpoint
    if res.status_code == 200 or res.status_code == 404:
        parts = urlsplit(base)
        return f"{parts.scheme}://{parts.netloc}/oauth/token"
    raise CommandError(f"{base} does not look like this server's FHIR base (HTTP {res.status_code})")


def _json_of(res: Any) -> dict[str, Any]:
    try:
        value = res.json()
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
