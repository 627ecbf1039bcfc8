"""Clients and users of the authorisation server (auth/accounts.py), on the real database."""

from __future__ import annotations

import uuid

import pytest

from headless_ehr.auth import accounts
from headless_ehr.auth.accounts import AccountError, AccountExists


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def test_a_confidential_client_gets_a_secret_once_and_it_is_stored_as_a_digest(db):
    client, secret = await accounts.create_client(db, "app", ["https://app.example/cb"], ["user/*.rs"])
    assert secret and client.auth_method == "client_secret_basic"
    stored = await db.fetchval("SELECT secret_hash FROM auth_client WHERE client_id = $1", client.client_id)
    assert stored != secret and len(stored) == 64
    assert secret not in str(client.as_json()) and stored not in str(client.as_json())


async def test_check_client_secret_accepts_only_the_right_secret_of_an_enabled_client(db):
    client, secret = await accounts.create_client(db, "app", scopes=["system/*.rs"])
    assert (await accounts.check_client_secret(db, client.client_id, secret)).client_id == client.client_id
    assert await accounts.check_client_secret(db, client.client_id, secret + "x") is None
    assert await accounts.check_client_secret(db, "no-such-client", secret) is None
    await accounts.disable_client(db, client.client_id)
    assert await accounts.check_client_secret(db, client.client_id, secret) is None


async def test_a_public_client_has_no_secret(db):
    client, secret = await accounts.create_client(db, "spa", ["http://127.0.0.1:9/cb"], ["patient/*.rs"], public=True)
    assert secret is None and client.auth_method == "none"
    assert await accounts.check_client_secret(db, client.client_id, "") is None


async def test_an_asymmetric_client_registers_public_keys_only(db):
    from joserfc.jwk import RSAKey

    key = RSAKey.generate_key(2048, parameters={"kid": "k1"})
    client, secret = await accounts.create_client(
        db, "svc", scopes=["system/*.rs"], jwks={"keys": [key.as_dict(private=False)]}
    )
    assert secret is None and client.auth_method == "private_key_jwt"
    assert (await accounts.get_client(db, client.client_id)).jwks["keys"][0]["kid"] == "k1"
    with pytest.raises(AccountError):
        await accounts.create_client(db, "svc", jwks={"keys": [key.as_dict(private=True)]})


@pytest.mark.parametrize(
    "changes",
    [
        {"name": ""},
        {"redirect_uris": ["not a uri"]},
        {"redirect_uris": ["http://app.example/cb"]},
        {"redirect_uris": ["https://app.example/cb#frag"]},
        {"scopes": ["patient/Observation.bogus"]},
        {"jwks_uri": "http://keys.example/jwks"},
        {"public": True, "jwks_uri": "https://keys.example/jwks"},
        {"client_id": "bad id"},
    ],
)
async def test_bad_client_registrations_are_refused(db, changes):
    args = {"name": "app", "redirect_uris": ["https://app.example/cb"], "scopes": ["user/*.rs"]} | changes
    with pytest.raises(AccountError):
        await accounts.create_client(db, **args)


async def test_a_client_id_is_unique(db):
    client_id = _name("fixed")
    await accounts.create_client(db, "a", client_id=client_id)
    with pytest.raises(AccountExists):
        await accounts.create_client(db, "b", client_id=client_id)


async def test_clients_are_listed_disabled_and_deleted(db):
    client, _ = await accounts.create_client(db, "app")
    assert client.client_id in {c.client_id for c in await accounts.list_clients(db)}
    assert (await accounts.disable_client(db, client.client_id)).enabled is False
    assert await accounts.delete_client(db, client.client_id)
    assert await accounts.get_client(db, client.client_id) is None
    assert not await accounts.delete_client(db, client.client_id)


async def test_a_user_authenticates_with_the_password_hashed_by_argon2id(db):
    username = _name("alice")
    user = await accounts.create_user(db, username, "correct horse", "Practitioner/7", ["doctor"], ["p1", "Patient/p2"])
    assert user.patients == ("p1", "p2")
    stored = await db.fetchval("SELECT password_hash FROM auth_user WHERE username = $1", username)
    assert stored.startswith("$argon2id$")
    assert (await accounts.authenticate_user(db, username, "correct horse")).fhir_user == "Practitioner/7"
    assert await accounts.authenticate_user(db, username, "wrong horse") is None
    assert await accounts.authenticate_user(db, _name("nobody"), "correct horse") is None


async def test_a_disabled_user_cannot_authenticate(db):
    username = _name("bob")
    await accounts.create_user(db, username, "password1")
    await accounts.disable_user(db, username)
    assert await accounts.authenticate_user(db, username, "password1") is None
    assert await accounts.delete_user(db, username)
    assert await accounts.get_user(db, username) is None


async def test_a_patient_user_acts_for_their_own_record_only(db):
    user = await accounts.create_user(db, _name("pat"), "password1", "Patient/123", patients=["456"])
    assert user.patient_choices == ("123",)


@pytest.mark.parametrize(
    "changes", [{"username": "a b"}, {"password": "short"}, {"fhir_user": "Observation/1"}, {"patients": ["a/b/c"]}]
)
async def test_bad_users_are_refused(db, changes):
    args = {"username": _name("u"), "password": "long enough"} | changes
    with pytest.raises(AccountError):
        await accounts.create_user(db, **args)
