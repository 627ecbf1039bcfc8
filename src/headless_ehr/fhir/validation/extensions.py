"""The value types the specification's own extensions allow.

An extension whose URL is one of the R4 core extension definitions must carry the
value type that definition names (`patient-birthTime` is a dateTime, not a string),
and a complex core extension carries no value at all. Extensions we have no
definition for are open: servers must accept extensions from any profile.
"""

from __future__ import annotations

from ..definitions import Definitions

_SYSTEM_TYPE_PREFIX = "http://hl7.org/fhirpath/System."


def extension_value_keys(defs: Definitions) -> dict[str, frozenset[str]]:
    """Core extension URL -> JSON keys its value may use (`valueDateTime`); empty if complex."""
    out: dict[str, frozenset[str]] = {}
    for url, sd in defs.extension_definitions.items():
        for element in sd.get("snapshot", {}).get("element", []):
            if element["path"] != "Extension.value[x]" or "sliceName" in element:
                continue
            if element["max"] == "0":
                out[url] = frozenset()
            else:
                codes = [t["code"] for t in element.get("type", [])]
                if codes and not any(c.startswith(_SYSTEM_TYPE_PREFIX) for c in codes):
                    out[url] = frozenset("value" + c[0].upper() + c[1:] for c in codes)
            break
    return out
