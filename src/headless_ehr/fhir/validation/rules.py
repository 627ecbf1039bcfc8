"""The compiled form of a StructureDefinition: what the validator looks up per JSON key.

A `TypeModel` is one object shape (a resource, a complex data type or a backbone
element); its `properties` map every JSON key that may appear in that object,
choice variants (`valueQuantity`) and primitive extension keys (`_birthDate`)
included, to the `ElementRule` that says how to check the value. Validation is then
one pass over the JSON with dict lookups; nothing is re-read from the snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .primitives import PrimitiveType
from .valuesets import CodeSet

# ElementRule.kind: how the JSON value of a key is checked.
PRIMITIVE = 0  # a JSON string/number/boolean checked by `primitive`
COMPLEX = 1  # a JSON object checked against `model`
RESOURCE = 2  # a whole resource of any type (contained, Bundle.entry.resource, ...)
SHADOW = 3  # `_name`: the id/extensions of the primitive element `name`
RESOURCE_TYPE = 4  # the `resourceType` key of a resource, checked before the walk
XHTML = 5  # a narrative div: a JSON string parsed as XHTML (txt-1, txt-2)


@dataclass(slots=True, eq=False)
class ElementRule:
    """How to check the value of one JSON key."""

    key: str  # the JSON property name: "name", "valueQuantity", "_birthDate"
    name: str  # FHIRPath step for expressions: "name", "value.ofType(Quantity)"
    kind: int
    type_code: str  # the FHIR type of the value, e.g. "HumanName", "code"
    is_array: bool  # JSON array exactly where the base max is not "1"
    min: int = 0
    max: int | None = None  # None: unbounded
    choice: str | None = None  # the choice element ("value") this key is one type of
    primitive: PrimitiveType | None = None
    model: TypeModel | None = None  # children of COMPLEX values, Element for SHADOW
    binding: CodeSet | None = None  # required binding we can enforce
    targets: frozenset[str] | None = None  # allowed Reference target types; None: any
    is_reference: bool = False
    contained: bool = False  # RESOURCE rule of `contained`: contained-resource rules apply


@dataclass(slots=True, eq=False)
class Requirement:
    """An element with min > 0: at least `min` values under any of `keys`."""

    name: str  # FHIRPath step of the element, e.g. "status", "value"
    keys: tuple[str, ...]
    min: int


@dataclass(slots=True, eq=False)
class TypeModel:
    """One object shape: the JSON keys it allows and the elements it requires."""

    name: str  # type name or backbone path, for messages
    properties: dict[str, ElementRule] = field(default_factory=dict)
    required: tuple[Requirement, ...] = ()
    choices: dict[str, tuple[str, ...]] = field(default_factory=dict)  # "value" -> types
    is_extension: bool = False  # Extension: ext-1 (value[x] or extensions, not both)
