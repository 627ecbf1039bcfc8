"""Parsing the instant-valued parameters of history and search (_since, _at)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from ..fhir.outcome import FhirError

_DATE_OR_INSTANT = re.compile(
    r"^\d{4}(-\d{2}(-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:\d{2})?)?)?)?$", re.ASCII
)


def parse_instant(name: str, value: str) -> datetime:
    """A date or dateTime given as a parameter; 400 when it is not one.

    Partial dates mean their start (2024 = 2024-01-01T00:00Z); no zone means UTC.
    """
    # An unencoded '+' in a query string arrives as a space: read it as the zone sign.
    text = value.strip().replace(" ", "+")
    if not _DATE_OR_INSTANT.match(text):
        raise FhirError.of(400, "invalid", f"{name}: '{value}' is not a valid instant")
    if len(text) == 4:
        text += "-01-01"
    elif len(text) == 7:
        text += "-01"
    frac = re.search(r"\.(\d+)", text)
    if frac and len(frac.group(1)) > 6:
        text = text.replace(frac.group(0), "." + frac.group(1)[:6])
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise FhirError.of(400, "invalid", f"{name}: '{value}' is not a valid instant") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
