"""Opaque paging cursors: the sort key values of the row a page ends (or starts) at.

Keyset paging instead of OFFSET: a `next` link names the last row seen, so rows
inserted or deleted before it do not shift the following pages.
"""

from __future__ import annotations

import base64
from typing import Any

import orjson

from ..fhir.outcome import FhirError


def encode_cursor(payload: Any) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(payload)).decode().rstrip("=")


def decode_cursor(cursor: str) -> Any:
    try:
        return orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, orjson.JSONDecodeError):
        raise FhirError.of(400, "invalid", "malformed paging cursor") from None
