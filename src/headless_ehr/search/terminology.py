"""Token `:in`, `:not-in`, `:above`, `:below` against the R4 value sets and code systems
we ship (http://hl7.org/fhir/R4/search.html#token).

Value sets are expanded by the validator's resolver (one expansion per process);
subsumption follows the CodeSystem's concept nesting and `parent`/`child` properties.
A value set or code system we cannot enumerate in full is a 400 naming it: a search
that silently matched less would be worse.
"""

from __future__ import annotations

from ..fhir.definitions import definitions
from ..fhir.outcome import FhirError
from ..fhir.validation.valuesets import CodeSet, resolver_for

# The most codes one modifier may put into a query (bound as two array parameters).
MAX_CODES = 10_000


def value_set_codes(name: str, url: str) -> CodeSet:
    """The expansion of the value set `url` for the search parameter `name`."""
    defs = definitions()
    # known names only reach the resolver: it remembers every answer, so a client's
    # made-up URLs must not grow its cache
    if url.split("|", 1)[0] not in defs.value_sets:
        raise FhirError.of(400, "not-found", f"'{name}': unknown value set '{url}'")
    found = resolver_for(defs).resolve(url)
    if found is None:
        raise FhirError.of(400, "not-supported", f"'{name}': value set '{url}' cannot be expanded on this server")
    if len(found.pairs) > MAX_CODES:
        raise FhirError.of(400, "too-costly", f"'{name}': value set '{url}' has more than {MAX_CODES} codes")
    return found


def subsumed_codes(name: str, system: str, code: str, upwards: bool) -> list[str]:
    """`code` and the codes it subsumes (`:below`) or that subsume it (`:above`) in `system`."""
    defs = definitions()
    if system not in defs.code_systems:  # as above: only known systems reach the cache
        raise FhirError.of(400, "not-found", f"'{name}': unknown code system '{system}'")
    hierarchy = resolver_for(defs).hierarchy(system)
    if hierarchy is None:
        raise FhirError.of(400, "not-supported", f"'{name}': code system '{system}' is not available in full")
    if code not in hierarchy:
        raise FhirError.of(400, "invalid", f"'{name}': code '{code}' is not in '{system}'")
    codes = hierarchy.closure(code, upwards)
    if len(codes) > MAX_CODES:
        raise FhirError.of(400, "too-costly", f"'{name}': '{system}|{code}' subsumes more than {MAX_CODES} codes")
    return sorted(codes)
