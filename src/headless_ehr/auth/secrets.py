"""Secrets at rest: passwords as Argon2id hashes, random tokens (client secrets,
authorization codes, refresh tokens) as SHA-256 digests. Nothing is stored as sent."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

_hasher = PasswordHasher()  # Argon2id, the library's RFC 9106 low-memory defaults
# a hash to verify against when the account does not exist, so timing does not tell
_DUMMY = _hasher.hash("not a password of anyone")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password: str, stored: str | None) -> bool:
    """Constant work whether or not the account exists."""
    try:
        return _hasher.verify(stored or _DUMMY, password) and stored is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def new_token(nbytes: int = 32) -> str:
    """A random URL-safe token (client secrets, codes, refresh tokens, CSRF tokens)."""
    return secrets.token_urlsafe(nbytes)


def digest(token: str) -> str:
    """What is stored of a random token: its SHA-256, hex."""
    return hashlib.sha256(token.encode()).hexdigest()


def same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
