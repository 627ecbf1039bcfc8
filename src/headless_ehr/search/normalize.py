"""Normalising values for search: strings, dates with their precision, numbers.

Shared by index extraction (write time) and query compilation (read time), so both
sides agree on what "matches" means.
"""

from __future__ import annotations

import calendar
import re
import unicodedata
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation

# -- strings ------------------------------------------------------------------------

_SPACES = re.compile(r"\s+")


def normalize_string(value: str) -> str:
    """Case- and accent-insensitive form: NFKD, combining marks dropped, casefolded,
    white space collapsed (R4: string search ignores case and accents)."""
    decomposed = unicodedata.normalize("NFKD", value)
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return _SPACES.sub(" ", stripped.casefold()).strip()


# -- dates --------------------------------------------------------------------------

_DATE = re.compile(
    r"^(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})"
    r"(?:T(?P<H>\d{2})(?::(?P<M>\d{2})(?::(?P<S>\d{2})(?:\.(?P<f>\d+))?)?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$",
    re.ASCII,  # int() would read other scripts' digits too
)
MIN_INSTANT = datetime(1, 1, 1, tzinfo=UTC)
MAX_INSTANT = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
_ONE_MICRO = timedelta(microseconds=1)


class DateFormatError(ValueError):
    """Not an R4 date, dateTime or instant."""


def _zone(text: str | None) -> timezone:
    if not text or text == "Z":
        return UTC
    sign = 1 if text[0] == "+" else -1
    hours, minutes = int(text[1:3]), int(text[4:6])
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


def date_range(value: str) -> tuple[datetime, datetime]:
    """The closed interval [low, high] of instants a date/dateTime/instant covers.

    `2024` covers the whole year, `2024-03-05T10:00` the whole minute. Values without
    a zone are read as UTC (the server's zone), as HAPI does.
    """
    match = _DATE.match(value.strip())
    if not match:
        raise DateFormatError(f"'{value}' is not a valid date")
    g = match.groupdict()
    high: datetime | None
    try:
        year = int(g["y"])
        tz = _zone(g["tz"])
        if g["m"] is None:
            low = datetime(year, 1, 1, tzinfo=tz)
            high = datetime(year + 1, 1, 1, tzinfo=tz) if year < 9999 else None
        elif g["d"] is None:
            month = int(g["m"])
            low = datetime(year, month, 1, tzinfo=tz)
            days = calendar.monthrange(year, month)[1]
            high = low + timedelta(days=days)
        elif g["H"] is None:
            low = datetime(year, int(g["m"]), int(g["d"]), tzinfo=tz)
            high = low + timedelta(days=1)
        else:
            base = datetime(year, int(g["m"]), int(g["d"]), int(g["H"]), int(g["M"] or 0), tzinfo=tz)
            if g["S"] is None:
                low, high = base, base + timedelta(minutes=1)
            else:
                low = base.replace(second=int(g["S"]))
                frac = g["f"]
                if frac is None:
                    high = low + timedelta(seconds=1)
                else:
                    digits = frac[:6]
                    low = low.replace(microsecond=int(digits.ljust(6, "0")))
                    high = low + timedelta(microseconds=10 ** (6 - len(digits)))
    except OverflowError:  # the end of 9999-12-31 lies past datetime's range
        high = None
    except ValueError as exc:  # e.g. month 13, Feb 30, hour 25
        raise DateFormatError(f"'{value}' is not a valid date: {exc}") from None
    return _utc(low), _utc(high - _ONE_MICRO) if high is not None else MAX_INSTANT


def _utc(moment: datetime) -> datetime:
    """moment in UTC, clamped at the edges of datetime's range (year 1 at +01:00)."""
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        return MIN_INSTANT if moment.year == 1 else MAX_INSTANT


# -- numbers ------------------------------------------------------------------------


def number_range(value: Decimal | int | str) -> tuple[Decimal, Decimal, Decimal]:
    """(value, low, high): a decimal stands for the interval its precision implies,
    e.g. 100 → [99.5, 100.5), 1.50 → [1.495, 1.505) (R4 search, number precision)."""
    try:
        number = value if isinstance(value, Decimal) else Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"'{value}' is not a number") from None
    if not number.is_finite():
        raise ValueError(f"'{value}' is not a finite number")
    exponent = number.as_tuple().exponent
    assert isinstance(exponent, int)
    half = Decimal(5).scaleb(exponent - 1)
    return number, number - half, number + half
