"""Search index values extracted from a resource at write time (R4 search).

`extract(resource)` gives the `IndexRows` of every parameter in force for the
resource's type: expressions are compiled once per parameter (`compile.py`), values
are converted by search-parameter type (`values.py`, `ucum.py`), and `_text` /
`_content` get the narrative and the resource's text (`text.py`). Identical rows are
written once.

An absolute reference is local only when it is on this server's base (`local_base`,
the rule in `fhir.references.local_path`): a reference to another server keeps only
its URL, so it is found by URL (`subject=http://other/fhir/Patient/1`, `:above`) but
never joins a local resource's compartment, includes or chains.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ...config import env_flag
from ...fhir.references import local_path
from ..registry import BUNDLE_PATIENT, COLUMN_PARAMS, SECURITY_CONTEXT, SearchParam, indexed_params
from ..rows import CONTAINED_FIELDS, IndexRows, contained_row
from .compile import Fn, compile_param
from .consent import consent_rows
from .references import parse_reference
from .text import content_text, narrative_text
from .values import Sink

__all__ = ["extract"]


@dataclass(slots=True)
class _Plan:
    """What to run for one set of parameters: fns by top-level key, and the rest."""

    by_key: dict[str, list[Fn]]
    always: list[Fn]
    text: bool
    content: bool


def _plan(params: Iterable[SearchParam], bound_systems: bool = True) -> _Plan:
    by_key: dict[str, list[Fn]] = {}
    always: list[Fn] = []
    text = content = False
    for param in params:
        if param.code in COLUMN_PARAMS:
            continue
        if param.code == "_text":
            text = True
        elif param.code == "_content":
            content = True
        entries, _slow = compile_param(param, bound_systems)
        for key, fn in entries:
            if key is None:
                always.append(fn)
            else:
                by_key.setdefault(key, []).append(fn)
    return _Plan(by_key, always, text, content)


class Options:
    """Process-wide extraction switches, set from Settings at start-up (create_app); a
    process that builds no app (`ehr import`'s workers) takes them from the environment."""

    # EHR_INDEX_CONTAINED: also index contained resources (search_contained), which
    # `_contained=true|both` needs; off by default, as in HAPI, since it adds index rows
    # to every write of a resource with contained resources.
    contained: bool = env_flag("EHR_INDEX_CONTAINED")


OPTIONS = Options()


# Plans for the default parameters, with the params dict they were made from: a new
# dict from the registry (a SearchParameter added) makes a new plan.
_default_plans: dict[str, tuple[dict[str, SearchParam], _Plan]] = {}


def _default_plan(resource_type: str, cache: dict) -> _Plan:
    params = indexed_params(resource_type)
    found = cache.get(resource_type)
    if found is not None and found[0] is params:
        return found[1]
    plan = _plan(params.values())
    cache[resource_type] = (params, plan)
    return plan


def _run(plan: _Plan, resource: dict[str, Any]) -> Sink:
    sink = Sink(resource)
    by_key = plan.by_key
    for key, value in resource.items():
        fns = by_key.get(key)
        if fns:
            values = value if type(value) is list else [value]
            for fn in fns:
                fn(values, sink)
    if plan.always:
        root = [resource]
        for fn in plan.always:
            fn(root, sink)
    return sink


def _unique(rows: list[tuple]) -> list[tuple]:
    return list(dict.fromkeys(rows)) if len(rows) > 1 else rows


def _contained_rows(contained: list[Any], local_base: str | None) -> list[tuple]:
    """search_contained rows of the contained resources (for `_contained=true|both`):
    each one's own index rows under every parameter of its type, plus a `resource` row
    naming it. Contained resources cannot contain others (R4 dom-2)."""
    out: list[tuple] = []
    for item in contained:
        if type(item) is not dict:
            continue
        rtype, cid = item.get("resourceType"), item.get("id")
        if type(rtype) is not str or type(cid) is not str:
            continue
        sink = _run(_default_plan(rtype, _default_plans), item)
        if sink.reference:
            sink.reference = foreign_references(sink.reference, local_base)
        out.append(contained_row(rtype, cid, "resource", ()))
        for kind in CONTAINED_FIELDS:  # every kind search_contained holds
            out += [contained_row(rtype, cid, kind, row) for row in _unique(getattr(sink, kind))]
    return out


def foreign_references(rows: list[tuple], local_base: str | None) -> list[tuple]:
    """Reference rows with the target type and id of absolute URLs not on local_base
    dropped: `http://other/fhir/Patient/1` is not our Patient/1. Only absolute
    references carry both a url and an id, so relative ones cost one test each."""
    out = rows
    for i, row in enumerate(rows):
        url = row[4]
        if url is not None and row[2] is not None and local_path(url, local_base) is None:
            if out is rows:
                out = list(rows)
            out[i] = (row[0], None, None, None, url)
    return out


def _security_context(binary: dict[str, Any]) -> list[tuple]:
    """Binary.securityContext as a reference row: R4 defines no SearchParameter for it,
    but access rules (search/access.py) decide a Binary's readers by it."""
    ref = binary.get("securityContext")
    text = ref.get("reference") if type(ref) is dict else None
    if type(text) is not str or not text:
        return []
    return [(SECURITY_CONTEXT, *parse_reference(text))]


def _bundle_patients(node: Any) -> list[tuple]:
    """Rows for every Patient a Bundle's content names: references to Patients, and
    Patient resources in it (id "" for one without an id: it may be anyone)."""
    out: list[tuple] = []
    stack = [node]
    while stack:
        item = stack.pop()
        if type(item) is list:
            stack += item
        elif type(item) is dict:
            if item.get("resourceType") == "Patient":
                pid = item.get("id")
                out.append((BUNDLE_PATIENT, "Patient", pid if type(pid) is str else "", None, None))
            ref = item.get("reference")
            if type(ref) is str:
                target = parse_reference(ref)
                if target.type == "Patient":
                    out.append((BUNDLE_PATIENT, *target))
            stack += [v for v in item.values() if type(v) in (dict, list)]
    return out


def extract(
    resource: dict[str, Any], params: Iterable[SearchParam] | None = None, local_base: str | None = None
) -> IndexRows:
    """The index rows of resource for params (default: every parameter of its type).

    `_id` and `_lastUpdated` are answered from the resource table and give no rows;
    `_text` and `_content` fill `narrative` and `content`. local_base: this server's
    FHIR base, under which absolute references are local (None: none is).
    """
    plan = _plan(params) if params is not None else _default_plan(resource["resourceType"], _default_plans)
    sink = _run(plan, resource)
    if params is None and resource.get("resourceType") == "Binary":
        sink.reference += _security_context(resource)
    elif params is None and resource.get("resourceType") == "Bundle":
        sink.reference += _bundle_patients(resource.get("entry"))
    if sink.reference:
        sink.reference = foreign_references(sink.reference, local_base)
    narrative = narrative_text(resource) if plan.text or plan.content else None
    contained = resource.get("contained")
    # a Consent's provisions, for the consent predicate on every read (search/consent.py)
    consent = consent_rows(resource, local_base) if params is None and resource.get("resourceType") == "Consent" else []
    return IndexRows(
        consent=consent,
        contained=_contained_rows(contained, local_base)
        if OPTIONS.contained and params is None and type(contained) is list
        else [],
        token=_unique(sink.token),
        string=_unique(sink.string),
        reference=_unique(sink.reference),
        date=_unique(sink.date),
        number=_unique(sink.number),
        quantity=_unique(sink.quantity),
        uri=_unique(sink.uri),
        composite=_unique(sink.composite),
        position=_unique(sink.position),
        narrative=narrative if plan.text else None,
        content=content_text(resource, narrative) if plan.content else None,
    )
