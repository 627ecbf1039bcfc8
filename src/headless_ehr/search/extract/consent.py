"""A Consent's provisions flattened into search_consent rows (docs/security.md "Consent").

Only an active patient-privacy Consent of a Patient on this server gives rows: one per
provision that has a `type`, with its depth and the conditions of it and all its
ancestors (a provision applies only where its ancestors do), as JSON groups that
search/consent.py matches in SQL. Every Consent written is held to the nesting and size
bounds below, whatever its status, so a refusal never depends on when it is activated.
"""

from __future__ import annotations

from typing import Any

import orjson

from ...fhir.outcome import FhirError
from ...fhir.references import local_path
from ..normalize import DateFormatError, date_range
from .references import parse_reference

MAX_DEPTH = 8  # nested provisions below the root
MAX_PROVISIONS = 100  # the root and every nested provision
MAX_VALUES = 100  # actors, classes, codes, … of one provision
CONSENT_SCOPE = "http://terminology.hl7.org/CodeSystem/consentscope"
RESOURCE_TYPES = "http://hl7.org/fhir/resource-types"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
CONSENT_ACTION = "http://terminology.hl7.org/CodeSystem/consentaction"
ACTOR_TYPES = frozenset({"Practitioner", "PractitionerRole", "Organization", "RelatedPerson", "CareTeam"})
READ_ACTIONS = frozenset({"access", "use", "disclose"})  # what reading the data is, of consentaction

# patient_id, node, depth, decision, conditions (JSON text)
ConsentRow = tuple[str, int, int, str, str]


def _refuse(message: str, where: str) -> FhirError:
    return FhirError.of(422, "business-rule", message, where)


def check_bounds(root: Any) -> None:
    """422 for provisions nested deeper than MAX_DEPTH, more than MAX_PROVISIONS of them,
    or a condition list longer than MAX_VALUES: the read predicate's cost follows them."""
    stack = [(root, 0, "Consent.provision")]
    count = 0
    while stack:
        node, depth, where = stack.pop()
        if type(node) is not dict:
            continue
        count += 1
        if count > MAX_PROVISIONS:
            raise _refuse(f"a Consent may hold at most {MAX_PROVISIONS} provisions", "Consent.provision")
        if depth > MAX_DEPTH:
            raise _refuse(f"Consent provisions may nest at most {MAX_DEPTH} levels below the root", where)
        for key in ("actor", "class", "code", "securityLabel", "purpose", "data", "action"):
            values = node.get(key)
            if type(values) is list and len(values) > MAX_VALUES:
                raise _refuse(f"a provision may list at most {MAX_VALUES} {key} values", f"{where}.{key}")
        children = node.get("provision")
        if type(children) is list:
            stack += [(c, depth + 1, f"{where}.provision[{i}]") for i, c in enumerate(children)]


def _is_patient_privacy(consent: dict[str, Any]) -> bool:
    scope = consent.get("scope")
    codings = scope.get("coding") if type(scope) is dict else None
    return type(codings) is list and any(
        type(c) is dict and c.get("system") == CONSENT_SCOPE and c.get("code") == "patient-privacy" for c in codings
    )


def _local(text: Any, local_base: str | None) -> tuple[str | None, str | None]:
    """(type, id) of a reference to a resource on this server, else (None, None)."""
    if type(text) is not str or not text:
        return None, None
    target = parse_reference(text)
    if target.url is not None and (target.id is None or local_path(target.url, local_base) is None):
        return None, None
    return target.type, target.id


def _codings(items: Any) -> list[dict[str, Any]]:
    return [c for c in items if type(c) is dict] if type(items) is list else []


def _token(coding: dict[str, Any]) -> str | None:
    """`system|code`, or `*|code` for a coding without a system (it matches any system)."""
    code = coding.get("code")
    if type(code) is not str:
        return None
    system = coding.get("system")
    return f"{system if type(system) is str else '*'}|{code}"


def _period(value: Any) -> dict[str, str | None] | None:
    """{"lo", "hi"} of a Period (None for an open end); None when it has neither."""
    if type(value) is not dict:
        return None
    lo = hi = None
    try:
        if type(value.get("start")) is str:
            lo = date_range(value["start"])[0].isoformat()
        if type(value.get("end")) is str:
            hi = date_range(value["end"])[1].isoformat()
    except DateFormatError:
        return {"lo": "infinity", "hi": "-infinity"}  # unreadable: matches nothing
    return {"lo": lo, "hi": hi} if lo or hi else None


def _conditions(node: dict[str, Any], local_base: str | None) -> list[dict[str, Any]]:
    """The condition groups one provision sets; each group matches when any value does."""
    groups: list[dict[str, Any]] = []
    actors = node.get("actor")
    if type(actors) is list and actors:
        refs = []
        for actor in actors:
            ref = actor.get("reference") if type(actor) is dict else None
            rtype, rid = _local(ref.get("reference") if type(ref) is dict else None, local_base)
            if rtype in ACTOR_TYPES and rid:
                refs.append(f"{rtype}/{rid}")
        groups.append({"k": "actor", "v": sorted(set(refs))})  # none we know: matches no one
    classes = _codings(node.get("class"))
    if classes:
        types = [c.get("code") for c in classes if c.get("system") in (None, RESOURCE_TYPES)]
        groups.append({"k": "class", "v": sorted({t for t in types if type(t) is str})})
    concepts = node.get("code")  # CodeableConcepts
    if type(concepts) is list and concepts:
        codings = [c for cc in _codings(concepts) for c in _codings(cc.get("coding"))]
        groups.append({"k": "code", "v": sorted({t for c in codings if (t := _token(c))})})
    labels = _codings(node.get("securityLabel"))  # Codings
    if labels:
        groups.append({"k": "security", "v": sorted({t for c in labels if (t := _token(c))})})
    purposes = _codings(node.get("purpose"))
    if purposes:
        codes = [c.get("code") for c in purposes if c.get("system") in (None, ACT_REASON)]
        groups.append({"k": "purpose", "v": sorted({c for c in codes if type(c) is str})})
    data = node.get("data")
    if type(data) is list and data:
        refs = []
        for item in data:
            if type(item) is dict and item.get("meaning") == "instance":
                ref = item.get("reference")
                rtype, rid = _local(ref.get("reference") if type(ref) is dict else None, local_base)
                if rtype and rid:
                    refs.append(f"{rtype}/{rid}")
        groups.append({"k": "data", "v": sorted(set(refs))})
    actions = node.get("action")
    if type(actions) is list and actions:
        codes = {c.get("code") for cc in _codings(actions) for c in _codings(cc.get("coding"))}
        if not codes & READ_ACTIONS:
            groups.append({"k": "never"})  # about writing or collecting, not reading
    for key, kind in (("period", "period"), ("dataPeriod", "dataPeriod")):
        period = _period(node.get(key))
        if period is not None:
            groups.append({"k": kind, **period})
    return groups


def consent_rows(consent: dict[str, Any], local_base: str | None) -> list[ConsentRow]:
    """The search_consent rows of a Consent (none unless active, patient-privacy, of a
    Patient here, with a root provision); 422 beyond the bounds."""
    root = consent.get("provision")
    check_bounds(root)
    if consent.get("status") != "active" or not _is_patient_privacy(consent) or type(root) is not dict:
        return []
    patient = consent.get("patient")
    ptype, pid = _local(patient.get("reference") if type(patient) is dict else None, local_base)
    if ptype != "Patient" or not pid:
        return []
    inherited: list[dict[str, Any]] = []
    if type(consent.get("dateTime")) is str:  # not in force before it was given
        try:
            inherited.append({"k": "period", "lo": date_range(consent["dateTime"])[0].isoformat(), "hi": None})
        except DateFormatError:
            return []
    rows: list[ConsentRow] = []
    stack = [(root, 0, inherited)]
    node = 0
    while stack:
        provision, depth, above = stack.pop()
        groups = above + _conditions(provision, local_base)
        decision = provision.get("type")
        if decision in ("deny", "permit"):
            rows.append((pid, node, depth, decision, orjson.dumps(groups).decode()))
        node += 1
        children = provision.get("provision")
        if type(children) is list:
            stack += [(c, depth + 1, groups) for c in reversed(children) if type(c) is dict]
    return rows
