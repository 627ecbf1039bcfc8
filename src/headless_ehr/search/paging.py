"""Opaque paging cursors: the sort key values of the row a page ends (or starts) at.

Keyset paging instead of OFFSET: a `next` link names the last row seen, so rows
inserted or deleted before it do not shift the following pages.
"""

from __future__ import annotations

import base64
from typing import Any

import orjson

from ..fhir.outcome import FhirError


def parse_count(raw: str, maximum: int) -> int:
    """`_count` (search and history): ASCII digits only, capped at `maximum`.

    str.isdigit() also accepts '²' (which int() refuses) and '١٢' (which it reads
    as 12); R4's integer is ASCII. Long digit strings are capped without int().
    """
    if not (raw.isascii() and raw.isdigit()):
        raise FhirError.of(400, "invalid", f"_count must be a non-negative integer, got '{raw[:50]}'")
    return maximum if len(raw) > 9 else min(int(raw), maximum)


def encode_cursor(payload: Any) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(payload)).decode().rstrip("=")


def decode_cursor(cursor: str) -> Any:
    """The payload of a cursor; 400 when it is not one of ours (its shape is checked by the caller)."""
    try:
        return orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, TypeError, orjson.JSONDecodeError):
        raise FhirError.of(400, "invalid", "malformed paging cursor") from None
