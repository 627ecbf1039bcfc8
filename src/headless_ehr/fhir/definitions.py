"""The official R4 definitions vendored in `fhir/data/`, loaded once per process.

Each file is gzip of one definition Bundle from the specification; the parts are
loaded on first use so a process pays only for what it touches.
"""

from __future__ import annotations

import gzip
from functools import cached_property, lru_cache
from importlib import resources
from typing import Any

import orjson

Resource = dict[str, Any]


def _bundle_resources(name: str) -> list[Resource]:
    data = resources.files("headless_ehr.fhir").joinpath("data", f"{name}.json.gz").read_bytes()
    bundle = orjson.loads(gzip.decompress(data))
    return [entry["resource"] for entry in bundle.get("entry", [])]


class Definitions:
    """Index over the R4 definition Bundles; every property is computed once."""

    @cached_property
    def _profiles_resources(self) -> list[Resource]:
        return _bundle_resources("profiles-resources")

    @cached_property
    def structure_definitions(self) -> dict[str, Resource]:
        """Base StructureDefinitions of all types and resources, keyed by type name."""
        out: dict[str, Resource] = {}
        for res in _bundle_resources("profiles-types") + self._profiles_resources:
            if res["resourceType"] == "StructureDefinition" and res.get("derivation") != "constraint":
                out[res["type"] if res["kind"] != "logical" else res["id"]] = res
        return out

    @cached_property
    def extension_definitions(self) -> dict[str, Resource]:
        """Core extension StructureDefinitions keyed by canonical URL."""
        return {r["url"]: r for r in _bundle_resources("extension-definitions")}

    @cached_property
    def resource_types(self) -> frozenset[str]:
        """Every concrete (non-abstract) R4 resource type."""
        return frozenset(
            name
            for name, sd in self.structure_definitions.items()
            if sd["kind"] == "resource" and not sd.get("abstract")
        )

    @cached_property
    def search_parameters(self) -> list[Resource]:
        return _bundle_resources("search-parameters")

    @cached_property
    def compartment_definitions(self) -> dict[str, Resource]:
        return {r["code"]: r for r in self._profiles_resources if r["resourceType"] == "CompartmentDefinition"}

    @cached_property
    def operation_definitions(self) -> dict[str, Resource]:
        return {r["url"]: r for r in self._profiles_resources if r["resourceType"] == "OperationDefinition"}

    @cached_property
    def _terminology(self) -> list[Resource]:
        return _bundle_resources("valuesets") + _bundle_resources("v3-codesystems")

    @cached_property
    def value_sets(self) -> dict[str, Resource]:
        return {r["url"]: r for r in self._terminology if r["resourceType"] == "ValueSet"}

    @cached_property
    def code_systems(self) -> dict[str, Resource]:
        return {r["url"]: r for r in self._terminology if r["resourceType"] == "CodeSystem"}

    @cached_property
    def expansions(self) -> dict[str, Resource]:
        """ValueSets with the specification's pre-computed expansion, keyed by URL."""
        return {r["url"]: r for r in _bundle_resources("expansions")}


@lru_cache(maxsize=1)
def definitions() -> Definitions:
    """The process-wide definitions index."""
    return Definitions()
