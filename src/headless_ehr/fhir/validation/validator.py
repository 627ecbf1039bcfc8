"""Validate a parsed FHIR R4 JSON resource against the compiled base definitions.

One pass over the JSON: each key is looked up in the compiled TypeModel of the
object it sits in, its value checked by kind, and the requirements of the object
checked once its keys are seen. Expressions are built only along the path being
walked, and strings for leaf values only when an issue is reported.

FHIRPath invariants (`constraint`) are not evaluated per request: evaluating
FHIRPath for every element costs far more than the structural pass. Only a few
cheap ones are hand-compiled here: ele-1 (an element has a value or children),
ext-1 (an extension has a value or nested extensions, not both) and, for contained
resources, dom-2 (no nested contained), dom-4 (no meta.versionId/lastUpdated) and
dom-5 (no meta.security).
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

from ..definitions import Definitions, definitions
from ..outcome import Issue
from .compiler import RuleCompiler
from .extensions import extension_value_keys
from .narrative import DEFAULT_MAX_BYTES, NarrativeRules, check_narrative, narrative_rules
from .primitives import json_kind
from .references import check_reference
from .rules import COMPLEX, PRIMITIVE, RESOURCE, SHADOW, XHTML, ElementRule, Requirement, TypeModel

# JSON objects inside one another. Real resources stay far below this (a Questionnaire
# 50 items deep is ~100); JSON nests at most twice as deep (an array between objects),
# and the JSON writer refuses more than 255 levels, a response Bundle adding 3.
MAX_NESTING = 100


class _TooDeep(Exception):
    """Raised from deep inside a walk to abandon it at once."""


class Validator:
    """Checks resources against the R4 StructureDefinitions; thread-safe, reusable."""

    def __init__(self, defs: Definitions | None = None) -> None:
        self._defs = defs if defs is not None else definitions()
        self.compiler = RuleCompiler(self._defs)

    def validate(
        self, resource: Any, *, path: str | None = None, max_narrative_bytes: int = DEFAULT_MAX_BYTES
    ) -> list[Issue]:
        """Every problem found in `resource`; an empty list means it is valid.

        `path` is the expression of the resource itself when it sits inside
        something larger (e.g. `Bundle.entry[2].resource`); by default the
        resource type, so that expressions read `Patient.name[0].given[1]`.
        A narrative (`text.div`) larger than `max_narrative_bytes` is refused.
        """
        walk = _Walk(self, max_narrative_bytes)
        try:
            walk.resource(resource, path, contained=False)
        except _TooDeep:
            pass  # the issue is recorded
        except RecursionError:
            # Only hostile input nests this deep; answer it as an issue, not a crash.
            walk.error("too-costly", "the resource is nested too deeply to validate", path)
        return walk.issues

    def compile(self, resource_type: str) -> bool:
        """Compile the rules of `resource_type` now; False if there is no such type."""
        return self.compiler.resource_model(resource_type) is not None

    @cached_property
    def extension_value_keys(self) -> dict[str, frozenset[str]]:
        return extension_value_keys(self._defs)

    @cached_property
    def narrative_rules(self) -> NarrativeRules:
        return narrative_rules(self._defs)


class _Walk:
    """The state of one validate() call: issues so far and the current resource's context."""

    __slots__ = (
        "allow_conditional",
        "compiler",
        "contained_ids",
        "depth",
        "issues",
        "max_narrative_bytes",
        "validator",
    )

    def __init__(self, validator: Validator, max_narrative_bytes: int) -> None:
        self.validator = validator
        self.compiler = validator.compiler
        self.issues: list[Issue] = []
        self.contained_ids: frozenset[str] | None = None
        self.allow_conditional = False
        self.max_narrative_bytes = max_narrative_bytes
        self.depth = 0  # JSON objects open around the one being walked

    def error(self, code: str, message: str, expression: str | None) -> None:
        self.issues.append(Issue("error", code, message, expression))

    # resources

    def resource(self, value: Any, path: str | None, *, contained: bool) -> None:
        if type(value) is not dict:
            self.error("structure", f"a resource must be a JSON object, not {json_kind(value)}", path)
            return
        resource_type = value.get("resourceType")
        if type(resource_type) is not str:
            self.error("required", "a resource must have a resourceType", path)
            return
        model = self.compiler.resource_model(resource_type)
        if model is None:
            self.error(
                "structure",
                f"unknown resource type {resource_type!r}",
                f"{path}.resourceType" if path else "resourceType",
            )
            return
        if path is None:
            path = resource_type
        saved = self.contained_ids, self.allow_conditional
        if contained:
            self.contained_rules(value, path)
        else:
            items = value.get("contained")
            self.contained_ids = (
                frozenset(c["id"] for c in items if type(c) is dict and type(c.get("id")) is str)
                if type(items) is list
                else None
            )
        if resource_type == "Bundle":
            self.allow_conditional = value.get("type") in ("transaction", "batch")
        self.object(value, model, path)
        self.contained_ids, self.allow_conditional = saved

    def contained_rules(self, value: dict[str, Any], path: str) -> None:
        if "id" not in value:
            self.error("required", "a contained resource must have an id", f"{path}.id")
        if "contained" in value:
            self.error(
                "invariant",
                "dom-2: a contained resource must not contain resources",
                f"{path}.contained",
            )
        meta = value.get("meta")
        if type(meta) is dict:
            for key in ("versionId", "lastUpdated"):
                if key in meta:
                    self.error(
                        "invariant",
                        f"dom-4: a contained resource must not have meta.{key}",
                        f"{path}.meta.{key}",
                    )
            if "security" in meta:
                self.error(
                    "invariant",
                    "dom-5: a contained resource must not have a security label",
                    f"{path}.meta.security",
                )

    # objects

    def object(self, obj: dict[str, Any], model: TypeModel, path: str) -> None:
        self.depth += 1  # not restored when a walk is abandoned: the walk is over then
        if self.depth > MAX_NESTING:
            self.error("too-costly", f"elements are nested more than {MAX_NESTING} levels deep", path)
            raise _TooDeep
        properties = model.properties
        chosen: dict[str, str] | None = None
        for key, value in obj.items():
            rule = properties.get(key)
            if rule is None:
                self.unknown(model, key, path)
                continue
            if rule.choice is not None:
                if chosen is None:
                    chosen = {rule.choice: rule.type_code}
                elif chosen.setdefault(rule.choice, rule.type_code) != rule.type_code:
                    self.error(
                        "structure",
                        f"{rule.choice}[x] must have only one type, found {chosen[rule.choice]} and {rule.type_code}",
                        f"{path}.{rule.choice}",
                    )
            kind = rule.kind
            if rule.is_array:
                if type(value) is not list:
                    self.error(
                        "structure",
                        f"'{key}' must be a JSON array, not {json_kind(value)}",
                        f"{path}.{rule.name}",
                    )
                    continue
                if not value:
                    self.error(
                        "structure",
                        f"'{key}' is an empty array; omit the element instead",
                        f"{path}.{rule.name}",
                    )
                    continue
                if rule.max is not None and len(value) > rule.max:
                    self.error(
                        "structure",
                        f"'{key}' allows at most {rule.max} values, found {len(value)}",
                        f"{path}.{rule.name}",
                    )
                if kind == PRIMITIVE:
                    self.primitive_array(obj, rule, value, path)
                elif kind == COMPLEX:
                    base = f"{path}.{rule.name}"
                    for i, item in enumerate(value):
                        self.complex(item, rule, f"{base}[{i}]")
                elif kind == RESOURCE:
                    base = f"{path}.{rule.name}"
                    for i, item in enumerate(value):
                        self.resource(item, f"{base}[{i}]", contained=rule.contained)
                elif kind == SHADOW:
                    self.shadow_array(obj, rule, value, path)
            elif type(value) is list:
                self.error(
                    "structure",
                    f"'{key}' allows a single value, not a JSON array",
                    f"{path}.{rule.name}",
                )
            elif kind == PRIMITIVE:
                problem = rule.primitive.check(value)  # type: ignore[union-attr]
                if problem is not None:
                    self.primitive_problem(rule, value, problem, f"{path}.{rule.name}")
                elif rule.binding is not None and value not in rule.binding.codes:
                    self.not_in_value_set(rule, value, f"{path}.{rule.name}")
            elif kind == COMPLEX:
                self.complex(value, rule, f"{path}.{rule.name}")
            elif kind == RESOURCE:
                self.resource(value, f"{path}.{rule.name}", contained=rule.contained)
            elif kind == SHADOW:
                self.element(value, rule, f"{path}.{rule.name}")
            elif kind == XHTML:
                self.narrative(value, rule, f"{path}.{rule.name}")
        for requirement in model.required:
            for key in requirement.keys:
                if key in obj:
                    break
            else:
                self.missing(model, requirement, path, 0)
                continue
            if requirement.min > 1:
                count = max(len(obj[k]) if type(obj[k]) is list else 1 for k in requirement.keys if k in obj)
                if count < requirement.min:
                    self.missing(model, requirement, path, count)
        self.depth -= 1

    def missing(self, model: TypeModel, requirement: Requirement, path: str, count: int) -> None:
        found = f"found {count}" if count else "none found"
        self.error(
            "required",
            f"{model.name}.{requirement.name}: minimum required = {requirement.min}, but {found}",
            f"{path}.{requirement.name}",
        )

    def complex(self, value: Any, rule: ElementRule, path: str) -> None:
        if type(value) is not dict:
            self.error("structure", f"{rule.type_code} must be a JSON object, not {json_kind(value)}", path)
            return
        if not value:
            self.error("structure", "empty objects are not allowed in FHIR JSON; omit the element", path)
            return
        model: TypeModel = rule.model  # type: ignore[assignment]
        self.object(value, model, path)
        if len(value) == 1 and "id" in value:
            self.error("invariant", "ele-1: an element must have a value or children", path)
        if rule.binding is not None:
            self.coded(value, rule, path)
        if rule.is_reference:
            reference = value.get("reference")
            if type(reference) is str:
                self.reference(reference, rule, f"{path}.reference")
        if model.is_extension:
            self.extension(value, path)

    def unknown(self, model: TypeModel, key: str, path: str) -> None:
        hint = ""
        bare = key[1:] if key.startswith("_") else key
        for base, types in model.choices.items():
            if bare.startswith(base) and bare[len(base) :][:1].isupper():
                hint = f"; {base}[x] allows only {', '.join(types)}"
        if key.startswith("_") and bare in model.properties:
            hint = f"; '{bare}' is not a primitive element, so it has no '{key}'"
        self.error("structure", f"unknown element '{key}' in {model.name}{hint}", f"{path}.{key}")

    # primitives

    def primitive_problem(self, rule: ElementRule, value: Any, problem: str, path: str) -> None:
        """A wrong JSON kind is a structure issue, a wrong lexical form a value issue."""
        right_kind = rule.primitive.accepts_kind(value)  # type: ignore[union-attr]
        self.error("value" if right_kind else "structure", problem, path)

    def narrative(self, value: Any, rule: ElementRule, path: str) -> None:
        problem = rule.primitive.check(value)  # type: ignore[union-attr]
        if problem is not None:
            self.primitive_problem(rule, value, problem, path)
            return
        found = check_narrative(value, self.validator.narrative_rules, self.max_narrative_bytes)
        if found is not None:
            self.error(found.code, found.message, path)

    def primitive_array(self, obj: dict[str, Any], rule: ElementRule, values: list[Any], path: str) -> None:
        check = rule.primitive.check  # type: ignore[union-attr]
        codes = rule.binding.codes if rule.binding is not None else None
        shadow: Any = None
        for i, item in enumerate(values):
            if item is None:
                if shadow is None:
                    shadow = obj.get("_" + rule.key)
                if not (type(shadow) is list and i < len(shadow) and shadow[i] is not None):
                    self.error(
                        "structure",
                        f"null in '{rule.key}' is only allowed where '_{rule.key}' has extensions at the same index",
                        f"{path}.{rule.name}[{i}]",
                    )
                continue
            problem = check(item)
            if problem is not None:
                self.primitive_problem(rule, item, problem, f"{path}.{rule.name}[{i}]")
            elif codes is not None and item not in codes:
                self.not_in_value_set(rule, item, f"{path}.{rule.name}[{i}]")

    def shadow_array(self, obj: dict[str, Any], rule: ElementRule, values: list[Any], path: str) -> None:
        partner = obj.get(rule.key[1:])
        base = f"{path}.{rule.name}"
        if type(partner) is list and len(partner) != len(values):
            self.error(
                "structure",
                f"'{rule.key}' must have as many entries as '{rule.key[1:]}' ({len(values)} != {len(partner)})",
                base,
            )
        for i, item in enumerate(values):
            if item is None:
                if not (type(partner) is list and i < len(partner)):
                    self.error("structure", f"null in '{rule.key}' has no value to go with", f"{base}[{i}]")
                continue
            self.element(item, rule, f"{base}[{i}]")

    def element(self, value: Any, rule: ElementRule, path: str) -> None:
        """The `_name` object of a primitive: its id and extensions."""
        if type(value) is not dict:
            self.error("structure", f"'{rule.key}' must be a JSON object, not {json_kind(value)}", path)
        elif not value:
            self.error("structure", "empty objects are not allowed in FHIR JSON", path)
        else:
            self.object(value, rule.model, path)  # type: ignore[arg-type]

    # terminology, references, extensions

    def not_in_value_set(self, rule: ElementRule, code: str, path: str) -> None:
        url = rule.binding.url  # type: ignore[union-attr]
        self.error("code-invalid", f"'{code}' is not in the required value set {url}", path)

    def coded(self, value: dict[str, Any], rule: ElementRule, path: str) -> None:
        pairs = rule.binding.pairs  # type: ignore[union-attr]
        if rule.type_code == "Coding":
            system, code = value.get("system"), value.get("code")
            if type(system) is str and type(code) is str and (system, code) not in pairs:
                self.not_in_value_set(rule, f"{system}#{code}", path)
            return
        codings = value.get("coding")
        if type(codings) is not list:
            return
        checked: list[str] = []
        for coding in codings:
            if type(coding) is dict:
                system, code = coding.get("system"), coding.get("code")
                if type(system) is str and type(code) is str:
                    if (system, code) in pairs:
                        return
                    checked.append(f"{system}#{code}")
        if checked:
            self.not_in_value_set(rule, ", ".join(checked), f"{path}.coding")

    def reference(self, reference: str, rule: ElementRule, path: str) -> None:
        problem = check_reference(
            reference,
            targets=rule.targets,
            resource_types=self.compiler.resource_types,
            contained_ids=self.contained_ids,
            allow_conditional=self.allow_conditional,
        )
        if problem is not None:
            self.error(problem.code, problem.message, path)

    def extension(self, value: dict[str, Any], path: str) -> None:
        value_keys = [k for k in value if k.startswith("value") or k.startswith("_value")]
        nested = "extension" in value
        if value_keys and nested:
            self.error(
                "invariant",
                "ext-1: an extension must have either extensions or value[x], not both",
                path,
            )
        elif not value_keys and not nested:
            self.error("invariant", "ext-1: an extension must have either extensions or value[x]", path)
        url = value.get("url")
        allowed = self.validator.extension_value_keys.get(url) if type(url) is str else None
        if allowed is None:
            return
        properties = self.compiler.type_model("Extension").properties
        for key in value_keys:
            bare = key.lstrip("_")
            if bare not in allowed and bare in properties:
                kinds = ", ".join(sorted(properties[k].type_code for k in allowed))
                found = properties[bare].type_code
                self.error(
                    "structure",
                    f"extension {url} allows {kinds or 'no value (it is a complex extension)'}, not {found}",
                    f"{path}.{properties[bare].name}",
                )
