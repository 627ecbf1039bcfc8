"""Small helpers for reading FHIRPath expression text."""

from __future__ import annotations


def split_top_level(expression: str, separator: str) -> list[str]:
    """Split on `separator` where it is outside parentheses and 'quoted strings'
    (`a.where(b='x.y').c` on "." gives ["a", "where(b='x.y')", "c"])."""
    parts, depth, quote, cur = [], 0, False, []
    for ch in expression:
        if ch == "'" and (not cur or cur[-1] != "\\"):
            quote = not quote
        elif not quote and ch == "(":
            depth += 1
        elif not quote and ch == ")":
            depth -= 1
        if ch == separator and depth == 0 and not quote:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts
