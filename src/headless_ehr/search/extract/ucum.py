"""Canonical UCUM units for quantity search: `1 kg`, `1000 g` and `1000000 mg` match.

A small table, not the whole of UCUM: mass goes to g, length to m (volume to L),
time to s, amount to mol, temperature to K; units made of those with `.`, `/`,
exponents, prefixes, `10*n` factors and `{annotations}` are converted too
(`mg/dL` → `g/L`, `/min` → `/s`). Anything else (arbitrary units, invalid codes
such as `mcg`) has no canonical form: `canonical` returns None and the quantity is
matched on its own code only. The query side converts its value with the same
function, so both sides agree on the canonical code.
"""

from __future__ import annotations

import re
from decimal import Decimal, localcontext
from functools import lru_cache

UCUM = "http://unitsofmeasure.org"

# Dimensions: exponents of the base units, in the order they are printed.
_BASES = ("g", "m", "s", "mol", "eq", "U", "[IU]")
Dims = tuple[int, ...]
_NONE: Dims = (0,) * len(_BASES)


def _dim(**exps: int) -> Dims:
    return tuple(exps.get(b.strip("[]"), 0) for b in _BASES)


_MASS, _LENGTH, _TIME = _dim(g=1), _dim(m=1), _dim(s=1)
_VOLUME = _dim(m=3)

# Atoms that take a metric prefix: symbol -> (factor to base units, dimensions).
_METRIC: dict[str, tuple[Decimal, Dims]] = {
    "g": (Decimal(1), _MASS),
    "m": (Decimal(1), _LENGTH),
    "s": (Decimal(1), _TIME),
    "L": (Decimal("0.001"), _VOLUME),
    "l": (Decimal("0.001"), _VOLUME),
    "mol": (Decimal(1), _dim(mol=1)),
    "eq": (Decimal(1), _dim(eq=1)),
    "U": (Decimal(1), _dim(U=1)),
    "[IU]": (Decimal(1), _dim(IU=1)),
    "[iU]": (Decimal(1), _dim(IU=1)),
    "Pa": (Decimal(1000), _dim(g=1, m=-1, s=-2)),  # kg/(m.s2)
    "bar": (Decimal(100000000), _dim(g=1, m=-1, s=-2)),
    "m[Hg]": (Decimal("133322000"), _dim(g=1, m=-1, s=-2)),  # 133.322 kPa
    "m[H2O]": (Decimal("9806650"), _dim(g=1, m=-1, s=-2)),
    "Hz": (Decimal(1), _dim(s=-1)),
}
# Atoms without prefixes.
_PLAIN: dict[str, tuple[Decimal, Dims]] = {
    "min": (Decimal(60), _TIME),
    "h": (Decimal(3600), _TIME),
    "d": (Decimal(86400), _TIME),
    "wk": (Decimal(604800), _TIME),
    "mo": (Decimal("2629800"), _TIME),  # mean Julian month, 30.4375 d
    "a": (Decimal("31557600"), _TIME),  # Julian year, 365.25 d
    "[lb_av]": (Decimal("453.59237"), _MASS),
    "[oz_av]": (Decimal("28.349523125"), _MASS),
    "[in_i]": (Decimal("0.0254"), _LENGTH),
    "[ft_i]": (Decimal("0.3048"), _LENGTH),
    "[mi_i]": (Decimal("1609.344"), _LENGTH),
    "[gal_us]": (Decimal("0.003785411784"), _VOLUME),
    "[foz_us]": (Decimal("0.0000295735295625"), _VOLUME),
    "%": (Decimal("0.01"), _NONE),
    "[ppm]": (Decimal("0.000001"), _NONE),
    "1": (Decimal(1), _NONE),
}
_PREFIXES: dict[str, Decimal] = {
    "Y": Decimal("1e24"),
    "Z": Decimal("1e21"),
    "E": Decimal("1e18"),
    "P": Decimal("1e15"),
    "T": Decimal("1e12"),
    "G": Decimal("1e9"),
    "M": Decimal("1e6"),
    "k": Decimal("1e3"),
    "h": Decimal("1e2"),
    "da": Decimal("1e1"),
    "d": Decimal("1e-1"),
    "c": Decimal("1e-2"),
    "m": Decimal("1e-3"),
    "u": Decimal("1e-6"),
    "n": Decimal("1e-9"),
    "p": Decimal("1e-12"),
    "f": Decimal("1e-15"),
    "a": Decimal("1e-18"),
}
# Temperatures are affine: converted only when they are the whole unit.
# symbol -> (offset, multiplier, divisor): K = (v + offset) * multiplier / divisor.
_TEMPERATURE = {
    "K": (Decimal(0), Decimal(1), Decimal(1)),
    "Cel": (Decimal("273.15"), Decimal(1), Decimal(1)),
    "[degF]": (Decimal("459.67"), Decimal(5), Decimal(9)),
}

_ANNOTATION = re.compile(r"\{[^}]*\}")
# An annotation standing alone as a component is the unit 1 (`mL/min/{1.73_m2}`).
_LONE_ANNOTATION = re.compile(r"(^|[./(])\{[^}]*\}(?=$|[./)])")
_TOKEN = re.compile(r"[./()]|[^./()]+")
# Exponents are ASCII digits and short (no unit has m1000): longer ones are not units.
_COMPONENT = re.compile(r"^(?P<sym>.*?)(?P<exp>[+-]?\d{1,3})?$", re.ASCII)
_POWER = re.compile(r"^10[*^](?P<exp>[+-]?\d{1,4})$", re.ASCII)
_MAX_PARENTHESES = 16  # nesting is recursive: deeper is refused, not a stack overflow


class _Invalid(ValueError):
    pass


def _atom(symbol: str) -> tuple[Decimal, Dims]:
    found = _PLAIN.get(symbol) or _METRIC.get(symbol)
    if found:
        return found
    for size in (1, 2):
        prefix, rest = symbol[:size], symbol[size:]
        if prefix in _PREFIXES and rest in _METRIC:
            factor, dims = _METRIC[rest]
            return _PREFIXES[prefix] * factor, dims
    raise _Invalid(symbol)


def _component(text: str) -> tuple[Decimal, Dims]:
    power = _POWER.match(text)
    if power:
        return Decimal(10) ** int(power["exp"]), _NONE
    if text.isascii() and text.isdigit():
        return Decimal(text), _NONE
    try:
        return _atom(text)  # symbols ending in digits, e.g. none today, but exact first
    except _Invalid:
        pass
    match = _COMPONENT.match(text)
    assert match is not None
    if not match["sym"] or match["exp"] is None:
        raise _Invalid(text)
    factor, dims = _atom(match["sym"])
    exp = int(match["exp"])
    return factor**exp, tuple(d * exp for d in dims)


def _term(tokens: list[str], pos: int) -> tuple[Decimal, Dims, int]:
    """Parse `component (('.'|'/') component)*` from pos; a leading '/' is allowed."""
    factor, dims = Decimal(1), _NONE
    op = "."
    expect_operand = True
    while pos < len(tokens):
        tok = tokens[pos]
        if tok == ")":
            break
        if tok in "./" and len(tok) == 1:
            if expect_operand and not (tok == "/" and pos == 0):
                raise _Invalid(tok)
            op, expect_operand = tok, True
            pos += 1
            continue
        if not expect_operand:
            raise _Invalid(tok)
        if tok == "(":
            f, d, pos = _term(tokens, pos + 1)
            if pos >= len(tokens) or tokens[pos] != ")":
                raise _Invalid("(")
            pos += 1
        else:
            f, d = _component(tok)
            pos += 1
        if op == "/":
            factor, dims = factor / f, tuple(a - b for a, b in zip(dims, d, strict=True))
        else:
            factor, dims = factor * f, tuple(a + b for a, b in zip(dims, d, strict=True))
        expect_operand = False
    if expect_operand:
        raise _Invalid("missing operand")
    return factor, dims, pos


def _print(dims: Dims) -> tuple[str, Decimal]:
    """The canonical code of dims and the factor from base units to it (m3 is printed as L)."""
    up, down = [], []
    scale = Decimal(1)
    for base, exp in zip(_BASES, dims, strict=True):
        if not exp:
            continue
        name = base
        if base == "m" and exp % 3 == 0:
            name, exp = "L", exp // 3
            scale = Decimal(1000) ** exp
        term = name if abs(exp) == 1 else f"{name}{abs(exp)}"
        (up if exp > 0 else down).append(term)
    code = ".".join(up) + "".join("/" + t for t in down)
    return code or "1", scale


@lru_cache(maxsize=1024)
def unit_factor(code: str) -> tuple[Decimal, str] | None:
    """(factor, canonical code) such that value * factor is in canonical units, or None
    when the unit is not in the table (or is a temperature, see `canonical`)."""
    text = _ANNOTATION.sub("", _LONE_ANNOTATION.sub(r"\g<1>1", code.strip()))
    if not text or any(ch.isspace() for ch in text) or text.count("(") > _MAX_PARENTHESES:
        return None
    tokens = _TOKEN.findall(text)
    try:
        with localcontext() as ctx:
            ctx.prec = 34
            factor, dims, pos = _term(tokens, 0)
            if pos != len(tokens):
                return None
            canon, scale = _print(dims)
            return factor * scale, canon
    except (_Invalid, ArithmeticError):
        return None


@lru_cache(maxsize=8192)
def canonical(value: Decimal, code: str | None) -> tuple[Decimal, str] | None:
    """The value and code of a UCUM quantity in canonical units, or None if unknown.

    Cached: a quantity is converted once per search parameter that indexes it (an
    Observation's value feeds five), and measurements repeat across resources."""
    if not code:
        return None
    temperature = _TEMPERATURE.get(code)
    if temperature is not None:
        offset, multiplier, divisor = temperature
        try:
            with localcontext() as ctx:
                ctx.prec = 34
                return _tidy((value + offset) * multiplier / divisor), "K"
        except ArithmeticError:
            return None
    found = unit_factor(code)
    if found is None:
        return None
    factor, canon = found
    try:
        with localcontext() as ctx:
            ctx.prec = 34
            return _tidy(value * factor), canon
    except ArithmeticError:
        return None


def _tidy(value: Decimal) -> Decimal:
    """Drop trailing zeros without switching to exponent notation for integers."""
    if value == value.to_integral_value():
        return value.quantize(Decimal(1))
    return value.normalize()
