"""PATCH documents: JSON Patch (RFC 6902) and FHIRPath Patch (http://hl7.org/fhir/R4/fhirpatch.html).

Both produce a new resource from the current one; the caller validates and stores it
like any update. FHIRPath Patch paths are located with a small evaluator over the
JSON (dotted names, choice types, [n], first(), last(), where(child = 'literal')),
which covers the paths the specification's examples and common clients use.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import jsonpatch
import jsonpointer

from .expressions import split_top_level
from .outcome import FhirError

Resource = dict[str, Any]


def apply_json_patch(resource: Resource, operations: Any) -> Resource:
    if not isinstance(operations, list):
        raise FhirError.of(400, "invalid", "a JSON Patch document is an array of operations")
    try:
        patched = jsonpatch.JsonPatch(operations).apply(copy.deepcopy(resource))
    except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
        raise FhirError.of(422, "processing", f"JSON Patch failed: {exc}") from None
    except (TypeError, KeyError, IndexError, ValueError) as exc:
        raise FhirError.of(400, "invalid", f"malformed JSON Patch: {exc}") from None
    if not isinstance(patched, dict):
        raise FhirError.of(422, "processing", "the patch did not produce a resource")
    return patched


# -- FHIRPath Patch -------------------------------------------------------------------

_STEP = re.compile(
    r"""\s*(?:
        (?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:\[(?P<index>\d+)\])?
      | (?P<func>first|last)\(\)
      | where\(\s*(?P<wpath>[A-Za-z0-9_.]+)\s*=\s*'(?P<wvalue>(?:[^'\\]|\\.)*)'\s*\)
    )\s*""",
    re.VERBOSE,
)


class _Slot:
    """A place in the JSON: container[key], or container[key][index] for list items."""

    def __init__(self, container: dict[str, Any], key: str, index: int | None):
        self.container, self.key, self.index = container, key, index

    def get(self) -> Any:
        value = self.container.get(self.key)
        return value if self.index is None else value[self.index]


def _child_key(node: dict[str, Any], name: str) -> str | None:
    if name in node:
        return name
    for key in node:  # choice types: value -> valueQuantity
        if key.startswith(name) and len(key) > len(name) and key[len(name)].isupper():
            return key
    return None


def _select(node: Any, dotted: str) -> list[Any]:
    items = [node]
    for name in dotted.split("."):
        nxt: list[Any] = []
        for item in items:
            if isinstance(item, dict):
                key = _child_key(item, name)
                value = item.get(key) if key else None
                if isinstance(value, list):
                    nxt.extend(value)
                elif value is not None:
                    nxt.append(value)
        items = nxt
    return items


def locate(resource: Resource, path: str) -> list[_Slot]:
    """The slots a FHIRPath Patch path selects (the resource type may lead the path)."""
    steps = split_top_level(path.strip(), ".")
    if steps and steps[0] == resource.get("resourceType"):
        steps = steps[1:]
    slots: list[_Slot] | None = None  # None: the resource root
    for step in steps:
        match = _STEP.fullmatch(step)
        if not match:
            raise FhirError.of(400, "not-supported", f"FHIRPath Patch path step '{step}' is not supported")
        values = [resource] if slots is None else [s.get() for s in slots]
        if match.group("name"):
            found: list[_Slot] = []
            for value in values:
                if not isinstance(value, dict):
                    continue
                key = _child_key(value, match.group("name"))
                if key is None:
                    continue
                child = value[key]
                if isinstance(child, list):
                    found += [_Slot(value, key, i) for i in range(len(child))]
                else:
                    found.append(_Slot(value, key, None))
            if match.group("index") is not None:
                i = int(match.group("index"))
                found = found[i : i + 1]
            slots = found
        elif match.group("func"):
            current = slots or []
            slots = current[:1] if match.group("func") == "first" else current[-1:]
        else:
            wanted = match.group("wvalue").replace("\\'", "'")
            slots = [s for s in (slots or []) if any(str(v) == wanted for v in _select(s.get(), match.group("wpath")))]
    if slots is None:
        raise FhirError.of(400, "invalid", "a FHIRPath Patch path must select an element, not the resource")
    return slots


def _parts(param: dict[str, Any]) -> dict[str, Any]:
    return {p.get("name"): p for p in param.get("part") or [] if isinstance(p, dict)}


def _value(part: dict[str, Any] | None) -> Any:
    """The value of a `value` part: value[x], or nested parts building a complex value."""
    if part is None:
        raise FhirError.of(400, "required", "the operation needs a value")
    for key, val in part.items():
        if key.startswith("value"):
            return copy.deepcopy(val)
    if part.get("part"):
        out: dict[str, Any] = {}
        for child in part["part"]:
            name = child.get("name")
            value = _value(child)
            if name in out:
                out[name] = out[name] if isinstance(out[name], list) else [out[name]]
                out[name].append(value)
            else:
                out[name] = value
        return out
    raise FhirError.of(400, "required", "the value part has no value")


def _one(slots: list[_Slot], path: str) -> _Slot:
    if len(slots) != 1:
        raise FhirError.of(422, "processing", f"path '{path}' selects {len(slots)} elements; exactly one is needed")
    return slots[0]


def apply_fhirpath_patch(resource: Resource, parameters: Any) -> Resource:
    if not isinstance(parameters, dict) or parameters.get("resourceType") != "Parameters":
        raise FhirError.of(400, "invalid", "a FHIRPath Patch is a Parameters resource")
    out = copy.deepcopy(resource)
    for op_param in parameters.get("parameter") or []:
        if not isinstance(op_param, dict) or op_param.get("name") != "operation":
            raise FhirError.of(400, "invalid", "each FHIRPath Patch parameter must be an 'operation'")
        parts = _parts(op_param)
        kind = (parts.get("type") or {}).get("valueCode")
        path = (parts.get("path") or {}).get("valueString")
        if not kind or not path:
            raise FhirError.of(400, "required", "an operation needs type and path")
        _apply_op(out, kind, path, parts)
    return out


def _apply_op(out: Resource, kind: str, path: str, parts: dict[str, Any]) -> None:
    if kind == "add":
        name = (parts.get("name") or {}).get("valueString")
        if not name:
            raise FhirError.of(400, "required", "add needs a name")
        value = _value(parts.get("value"))
        if path.strip() == out.get("resourceType"):
            targets: list[Any] = [out]
        else:
            targets = [s.get() for s in locate(out, path)]
        target = targets[0] if len(targets) == 1 else None
        if not isinstance(target, dict):
            raise FhirError.of(422, "processing", f"add: '{path}' must select exactly one element")
        existing = target.get(name)
        if isinstance(existing, list):
            existing.append(value)
        elif existing is None:
            target[name] = value
        else:
            target[name] = [existing, value]
    elif kind == "insert":
        slots = locate(out, path)
        if not slots:
            raise FhirError.of(422, "processing", f"insert: '{path}' selects nothing")
        container, key = slots[0].container, slots[0].key
        items = container[key] if isinstance(container[key], list) else [container[key]]
        index = (parts.get("index") or {}).get("valueInteger")
        if not isinstance(index, int) or not 0 <= index <= len(items):
            raise FhirError.of(422, "processing", f"insert: index {index} is out of range")
        items.insert(index, _value(parts.get("value")))
        container[key] = items
    elif kind == "delete":
        slots = locate(out, path)
        if not slots:
            return  # deleting nothing is not an error (R4 fhirpatch)
        slot = _one(slots, path)
        if slot.index is None:
            del slot.container[slot.key]
        else:
            slot.container[slot.key].pop(slot.index)
            if not slot.container[slot.key]:
                del slot.container[slot.key]
    elif kind == "replace":
        slot = _one(locate(out, path), path)
        value = _value(parts.get("value"))
        if slot.index is None:
            slot.container[slot.key] = value
        else:
            slot.container[slot.key][slot.index] = value
    elif kind == "move":
        slots = locate(out, path)
        if not slots:
            raise FhirError.of(422, "processing", f"move: '{path}' selects nothing")
        container, key = slots[0].container, slots[0].key
        items = container[key]
        source = (parts.get("source") or {}).get("valueInteger")
        dest = (parts.get("destination") or {}).get("valueInteger")
        if not isinstance(items, list) or not isinstance(source, int) or not isinstance(dest, int):
            raise FhirError.of(400, "invalid", "move needs a list path, source and destination")
        if not (0 <= source < len(items) and 0 <= dest < len(items)):
            raise FhirError.of(422, "processing", "move: source or destination out of range")
        items.insert(dest, items.pop(source))
    else:
        raise FhirError.of(400, "invalid", f"unknown FHIRPath Patch operation type '{kind}'")
