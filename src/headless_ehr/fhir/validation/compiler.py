"""Compile StructureDefinition snapshots into TypeModels, lazily and once per type.

A resource type is compiled on its first use; the data types it uses are compiled
with it and shared by every later type. Backbone elements become their own
TypeModels, and `contentReference` elements (`Questionnaire.item.item`) point at the
model of the element they reference, so recursive structures cost nothing extra.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Any

from ..definitions import Definitions
from .primitives import FHIR_TYPE_EXTENSION, PrimitiveType, primitive_types
from .rules import (
    COMPLEX,
    PRIMITIVE,
    RESOURCE,
    RESOURCE_TYPE,
    SHADOW,
    ElementRule,
    Requirement,
    TypeModel,
)
from .valuesets import CodeSet, resolver_for

Element = dict[str, Any]

_SYSTEM_TYPE_PREFIX = "http://hl7.org/fhirpath/System."
_PROFILE_PREFIX = "http://hl7.org/fhir/StructureDefinition/"
_BOUND_TYPES = frozenset({"code", "Coding", "CodeableConcept"})
_INLINE_TYPES = frozenset({"BackboneElement", "Element"})


class RuleCompiler:
    """Builds and caches the TypeModel of every resource and data type on demand."""

    def __init__(self, defs: Definitions) -> None:
        self._defs = defs
        self._sds = defs.structure_definitions
        self._resource_types = defs.resource_types
        self.primitives: dict[str, PrimitiveType] = primitive_types(defs)
        self.value_sets = resolver_for(defs)
        self._models: dict[str, TypeModel] = {}  # complete models, read without the lock
        self._building: dict[str, TypeModel] = {}  # models of the compile in progress
        self._depth = 0
        self._lock = threading.RLock()

    @property
    def resource_types(self) -> frozenset[str]:
        return self._resource_types

    def resource_model(self, resource_type: str) -> TypeModel | None:
        """The model of a concrete resource type, or None if there is no such type."""
        model = self._models.get(resource_type)
        if model is not None:
            return model
        if resource_type not in self._resource_types:
            return None
        return self.type_model(resource_type)

    def type_model(self, type_name: str) -> TypeModel:
        """The model of a resource or complex data type (compiled on first call)."""
        model = self._models.get(type_name)
        if model is not None:
            return model
        with self._lock:
            model = self._models.get(type_name) or self._building.get(type_name)
            if model is not None:
                return model
            self._depth += 1
            try:
                model = self._compile(type_name)
            except BaseException:
                if self._depth == 1:
                    self._building.clear()  # never publish half-built models
                raise
            finally:
                self._depth -= 1
            if self._depth == 0:
                # Publish only whole models: other threads read _models without the lock.
                self._models.update(self._building)
                self._building.clear()
        return model

    def _compile(self, type_name: str) -> TypeModel:
        sd = self._sds[type_name]
        snapshot = _Snapshot(sd["snapshot"]["element"])
        # Registered before it is filled, so that recursive types (Identifier ->
        # Reference -> Identifier) find the model instead of compiling forever.
        model = TypeModel(name=type_name, is_extension=type_name == "Extension")
        self._building[type_name] = model
        snapshot.models[snapshot.root] = model
        self._fill(model, snapshot.root, snapshot, is_resource=sd["kind"] == "resource")
        return model

    def _backbone(self, path: str, snapshot: _Snapshot) -> TypeModel:
        model = snapshot.models.get(path)
        if model is None:
            model = TypeModel(name=path)
            snapshot.models[path] = model
            self._fill(model, path, snapshot, is_resource=False)
        return model

    def _fill(self, model: TypeModel, path: str, snapshot: _Snapshot, *, is_resource: bool) -> None:
        """Add a rule for every JSON key the children of `path` may use."""
        if is_resource:
            model.properties["resourceType"] = ElementRule(
                key="resourceType",
                name="resourceType",
                kind=RESOURCE_TYPE,
                type_code="code",
                is_array=False,
            )
        required: list[Requirement] = []
        for element in snapshot.children.get(path, []):
            if element["max"] == "0":
                continue
            name = element["path"].rpartition(".")[2]
            base = name.removesuffix("[x]")
            rules = self._element_rules(element, snapshot, is_resource_id=is_resource and name == "id")
            for rule in rules:
                model.properties[rule.key] = rule
            if name.endswith("[x]"):
                model.choices[base] = tuple(r.type_code for r in rules if r.kind != SHADOW)
            if int(element["min"]) > 0:
                keys = tuple(rule.key for rule in rules)
                required.append(Requirement(base, keys, int(element["min"])))
        model.required = tuple(required)

    def _element_rules(self, element: Element, snapshot: _Snapshot, *, is_resource_id: bool) -> list[ElementRule]:
        """The rules of one element: one per type (choice) plus `_name` keys for primitives."""
        name = element["path"].rpartition(".")[2]
        reference = element.get("contentReference")
        source = snapshot.by_path[reference.lstrip("#")] if reference else element
        is_choice = name.endswith("[x]")
        base = name.removesuffix("[x]")
        binding = self._binding(source)
        rules: list[ElementRule] = []
        for type_ in source.get("type", []):
            # Resource.id is an id, though the snapshot types it System.String.
            code = "id" if is_resource_id else self._type_code(type_)
            key = base + code[0].upper() + code[1:] if is_choice else name
            rule = ElementRule(
                key=key,
                name=f"{base}.ofType({code})" if is_choice else name,
                kind=COMPLEX,
                type_code=code,
                is_array=element.get("base", {}).get("max", element["max"]) != "1",
                min=int(element["min"]),
                max=None if element["max"] == "*" else int(element["max"]),
                choice=base if is_choice else None,
                binding=binding if code in _BOUND_TYPES else None,
            )
            rules.append(rule)
            if code in self.primitives:
                rule.kind = PRIMITIVE
                rule.primitive = self.primitives[code]
                if code != "xhtml":  # xhtml.extension is max 0: a narrative has no `_div`
                    rules.append(self._shadow(rule))
            elif code == "Resource":
                rule.kind = RESOURCE
                rule.contained = name == "contained"
            elif reference:
                rule.model = self._backbone(source["path"], snapshot)
            elif code in _INLINE_TYPES and snapshot.children.get(element["path"]):
                rule.model = self._backbone(element["path"], snapshot)
            else:
                rule.model = self.type_model(code)
                if code == "Reference":
                    rule.is_reference = True
                    rule.targets = _targets(type_)
        return rules

    def _shadow(self, rule: ElementRule) -> ElementRule:
        """The `_name` key of a primitive element: an Element holding its id and extensions."""
        return ElementRule(
            key="_" + rule.key,
            name=rule.name,
            kind=SHADOW,
            type_code=rule.type_code,
            is_array=rule.is_array,
            choice=rule.choice,
            model=self.type_model("Element"),
        )

    def _type_code(self, type_: Element) -> str:
        code: str = type_["code"]
        if code.startswith(_SYSTEM_TYPE_PREFIX):
            for ext in type_.get("extension", []):
                if ext["url"] == FHIR_TYPE_EXTENSION:
                    return str(ext["valueUrl"])
            return "string"
        return code

    def _binding(self, element: Element) -> CodeSet | None:
        binding = element.get("binding")
        if not binding or binding.get("strength") != "required" or "valueSet" not in binding:
            return None
        if not any(t["code"] in _BOUND_TYPES for t in element.get("type", [])):
            return None
        return self.value_sets.resolve(binding["valueSet"])


class _Snapshot:
    """A snapshot's elements indexed by path and by parent path."""

    def __init__(self, elements: list[Element]) -> None:
        self.root: str = elements[0]["path"]
        self.by_path: dict[str, Element] = {}
        self.children: dict[str, list[Element]] = defaultdict(list)
        self.models: dict[str, TypeModel] = {}  # backbone path -> model
        for element in elements[1:]:
            if "sliceName" in element:
                continue
            self.by_path[element["path"]] = element
            self.children[element["path"].rpartition(".")[0]].append(element)


def _targets(type_: Element) -> frozenset[str] | None:
    """Resource types a Reference may point to; None when any type is allowed."""
    names = set()
    for profile in type_.get("targetProfile", []):
        if not profile.startswith(_PROFILE_PREFIX):
            return None
        names.add(profile[len(_PROFILE_PREFIX) :])
    if not names or "Resource" in names or "DomainResource" in names:
        return None
    return frozenset(names)
