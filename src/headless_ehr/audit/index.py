"""The search columns of an audit record, derived from its AuditEvent content alone
(so `ehr audit verify` can recompute and compare them)."""

from __future__ import annotations

from typing import Any, NamedTuple


class Index(NamedTuple):  # a tuple: built for every request, so as cheap as can be
    patients: list[str]
    agents: list[str]
    entities: list[str]
    subtype: str
    outcome: str
    action: str
    address: str | None

    def row(self) -> tuple[object, ...]:
        return tuple(self)


def _versionless(reference: str) -> str:
    return reference.split("/_history/", 1)[0]


def index_of(event: dict[str, Any]) -> Index:
    agents: list[str] = []
    patients: list[str] = []
    address = None
    for agent in event.get("agent", []):
        who = agent.get("who", {})
        if "reference" in who:
            agents.append(who["reference"])
            if who["reference"].startswith("Patient/"):
                patients.append(who["reference"])
        ident = who.get("identifier")
        if ident and "value" in ident:
            agents += [f"{ident.get('system', '')}|{ident['value']}", ident["value"]]
        if address is None:  # where the request came from: the one agent with a network
            address = agent.get("network", {}).get("address")
    entities: list[str] = []
    for entity in event.get("entity", []):
        what = entity.get("what", {})
        ident = what.get("identifier")
        if ident and "value" in ident:  # security events name accounts so: urn:ehr:admin:users/alice
            entities += [f"{ident.get('system', '')}|{ident['value']}", ident["value"]]
        ref = what.get("reference")
        if ref:
            entities += [ref, _versionless(ref)] if "/_history/" in ref else [ref]
            if ref.startswith("Patient/"):
                patients.append(_versionless(ref))
    subtypes = event.get("subtype") or [{}]
    return Index(
        distinct(patients),
        distinct(agents),
        distinct(entities),
        subtypes[0].get("code", ""),
        event.get("outcome", ""),
        event.get("action", ""),
        address,
    )


def distinct(values: list[str]) -> list[str]:
    return list(dict.fromkeys(v.replace("\x1f", "") for v in values))  # \x1f separates them in transit (chain.py)
