"""Text for `_text` (the narrative) and `_content` (the whole resource) full-text search."""

from __future__ import annotations

import html
import re
from typing import Any

CONTENT_LIMIT = 64 * 1024  # characters of _content text kept per resource
# A tag is `<` up to the next `>` with no `<` between: every character is scanned at
# most twice, where `<[^>]*>` rescans the rest of the text from every unclosed `<`
# (quadratic: 80,000 of them took 10 s). Valid narratives have no `<` in a tag.
_TAG = re.compile(r"<[^<>]*>")
_SPACES = re.compile(r"\s+")
_BASE64 = re.compile(r"^[A-Za-z0-9+/=\r\n]+$")
_LONG = 256  # a string this long without spaces may be base64 data
# Keys whose values are not content: ids and metadata. The narrative (a `text`
# object) is skipped too; its text is added once, without markup, by `content_text`.
_SKIP_KEYS = frozenset({"id", "meta", "resourceType", "div"})
_URI_PREFIXES = ("http://", "https://", "urn:")


def narrative_text(resource: dict[str, Any]) -> str | None:
    """The text of `text.div` with markup removed and entities decoded, or None."""
    narrative = resource.get("text")
    if not isinstance(narrative, dict):
        return None
    div = narrative.get("div")
    if not isinstance(div, str):
        return None
    text = _SPACES.sub(" ", html.unescape(_TAG.sub(" ", div))).strip()
    return text or None


def content_text(resource: dict[str, Any], narrative: str | None = None) -> str | None:
    """Every string value of the resource joined with spaces, each distinct value
    once, capped at CONTENT_LIMIT characters.

    Skipped: `id`, `meta` and `resourceType` keys, URIs and references given as
    absolute URLs or `urn:` (system and extension URLs are noise for full text), and
    long base64 data. The narrative's text (markup removed) comes last.
    """
    seen: dict[str, None] = {}
    size = [0]
    uri_prefixes, long, base64 = _URI_PREFIXES, _LONG, _BASE64.match

    def walk_dict(node: dict[str, Any]) -> None:
        if size[0] >= CONTENT_LIMIT:
            return
        for key, value in node.items():
            kind = type(value)
            if kind is str:
                if (
                    key not in _SKIP_KEYS
                    and value not in seen
                    and not value.startswith(uri_prefixes)
                    and (len(value) < long or " " in value or not base64(value))
                ):
                    seen[value] = None
                    size[0] += len(value) + 1
            elif kind is dict:
                if key not in _SKIP_KEYS and key != "text":  # a `text` object is a Narrative
                    walk_dict(value)
            elif kind is list and key not in _SKIP_KEYS:
                walk_list(value)

    def walk_list(items: list[Any]) -> None:
        for value in items:
            kind = type(value)
            if kind is dict:
                walk_dict(value)
            elif kind is str:
                if (
                    value not in seen
                    and not value.startswith(uri_prefixes)
                    and (len(value) < long or " " in value or not base64(value))
                ):
                    seen[value] = None
                    size[0] += len(value) + 1
            elif kind is list:
                walk_list(value)

    walk_dict(resource)
    if narrative is None:
        narrative = narrative_text(resource)
    if narrative:
        seen[narrative] = None
    if not seen:
        return None
    text = " ".join(seen)
    return text[:CONTENT_LIMIT] if len(text) > CONTENT_LIMIT else text
