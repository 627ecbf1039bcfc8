"""Access policies (docs/security.md, "Access policies"): what each user or client may
reach, whatever its token's scopes allow.

A policy is a named JSON document of rules; each PUT stores a new version and the
newest is in force. Users and clients name their policies (auth_user/auth_client
.policies). At authentication the subject's rules are put on its Principal
(`Principal.policy`), which intersects them with the scopes (auth/principal.py); the
store and search layers turn them into SQL (search/access.py). Every node caches the
documents and the assignments, and drops its cache when auth_policy_generation moves
(any change of a policy or an assignment bumps it, migration 0018), within a second.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import parse_qsl

import asyncpg
import orjson

from ..db.periodic import Periodic
from ..fhir import json as fhir_json
from ..fhir.definitions import definitions
from ..fhir.outcome import FhirError
from ..search.parse import RESULT_PARAMETERS, ChainBudget, Parser
from ..search.registry import search_params
from .principal import BREAK_THE_GLASS, Principal

log = logging.getLogger("headless_ehr.auth")

INTERACTIONS = ("read", "vread", "search", "history", "create", "update", "patch", "delete", "operation")
RULE_FIELDS = frozenset(
    {"resourceType", "interactions", "criteria", "compartment", "hiddenElements", "readonlyElements"}
)
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
MAX_RULES = 200
POLL_SECONDS = 1.0
_SAMPLE_USER = "Practitioner/policy-check"  # stands for %fhirUser while a document is checked


class PolicyError(ValueError):
    """A policy document that breaks the grammar: 400 with the message."""


@dataclass(frozen=True)
class Rule:
    """One rule, %fhirUser substituted: the rows of resource_type ("*": any type) it opens
    to interactions: those matching criteria (search parameters of the type) and, with
    compartment (search parameters of Patient), in the compartment of a patient it finds."""

    resource_type: str
    interactions: frozenset[str]
    criteria: tuple[tuple[str, str], ...] = ()
    compartment: tuple[tuple[str, str], ...] | None = None
    hidden: tuple[str, ...] = ()
    readonly: tuple[str, ...] = ()

    def covers(self, interaction: str, resource_type: str) -> bool:
        return interaction in self.interactions and self.resource_type in ("*", resource_type)


# ---- the grammar ----------------------------------------------------------------------


def _search(rtype: str, query: object, where: str) -> tuple[tuple[str, str], ...]:
    """A search of rtype our search API accepts (checked with %fhirUser as a sample user)."""
    if not isinstance(query, str) or not query.strip():
        raise PolicyError(f"{where} must be a non-empty search string")
    pairs = tuple(parse_qsl(query.lstrip("?"), keep_blank_values=True))
    if not pairs:
        raise PolicyError(f"{where} '{query[:200]}' holds no search parameter")
    shaping = sorted({n for n, _ in pairs if n.split(":", 1)[0].split(".", 1)[0] in RESULT_PARAMETERS})
    if shaping:
        raise PolicyError(f"{where} may only hold search parameters, not {', '.join(shaping)}")
    try:
        Parser(rtype, strict=True, budget=ChainBudget(64)).parse(list(substitute(pairs, _SAMPLE_USER)))
    except FhirError as error:
        raise PolicyError(f"{where} '{query[:200]}' is not a search of {rtype}: {error}") from None
    return pairs


def _elements(value: object, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(
        isinstance(v, str) and re.fullmatch(r"[a-z][A-Za-z0-9]*", v) for v in value
    ):
        raise PolicyError(f'{where} must be a list of top-level element names (e.g. ["note"])')
    return tuple(dict.fromkeys(value))


def _rule(raw: object, i: int) -> Rule:
    where = f"rules[{i}]"
    if not isinstance(raw, dict):
        raise PolicyError(f"{where} must be an object")
    unknown = sorted(set(raw) - RULE_FIELDS)
    if unknown:
        raise PolicyError(f"{where}: unknown field '{unknown[0][:100]}' (known: {', '.join(sorted(RULE_FIELDS))})")
    rtype = raw.get("resourceType")
    if rtype != "*" and not (isinstance(rtype, str) and rtype in definitions().resource_types):
        raise PolicyError(f'{where}.resourceType must be a FHIR R4 resource type or "*", not {str(rtype)[:100]!r}')
    interactions = raw.get("interactions")
    if not isinstance(interactions, list) or not interactions:
        raise PolicyError(f"{where}.interactions must be a non-empty list of {', '.join(INTERACTIONS)}")
    bad = [v for v in interactions if v not in INTERACTIONS]
    if bad:
        raise PolicyError(
            f"{where}.interactions: unknown interaction {str(bad[0])[:100]!r} (known: {', '.join(INTERACTIONS)})"
        )
    criteria: tuple[tuple[str, str], ...] = ()
    if raw.get("criteria") is not None:
        if rtype == "*":
            raise PolicyError(f"{where}.criteria needs a resourceType (criteria are a search of one type)")
        criteria = _search(rtype, raw["criteria"], f"{where}.criteria")
    compartment = None
    if raw.get("compartment") is not None:
        text = raw["compartment"]
        if not isinstance(text, str) or not text.startswith("Patient?"):
            raise PolicyError(f"{where}.compartment must be 'Patient?<search of Patient>'")
        compartment = _search("Patient", text.removeprefix("Patient"), f"{where}.compartment")
    return Rule(
        rtype,
        frozenset(interactions),
        criteria,
        compartment,
        _elements(raw.get("hiddenElements"), f"{where}.hiddenElements"),
        _elements(raw.get("readonlyElements"), f"{where}.readonlyElements"),
    )


def parse_policy(document: Any, name: str | None = None) -> tuple[str, tuple[Rule, ...]]:
    """(name, rules) of a policy document; PolicyError naming the first problem.
    name: the name in the URL (PUT), which the document must not contradict."""
    if not isinstance(document, dict):
        raise PolicyError('a policy is a JSON object {"name": ..., "rules": [...]}')
    unknown = sorted(set(document) - {"name", "rules", "description", "breakTheGlass"})
    if unknown:
        raise PolicyError(f"unknown field '{unknown[0][:100]}' (known: name, description, rules, breakTheGlass)")
    if not isinstance(document.get("breakTheGlass", False), bool):
        raise PolicyError("breakTheGlass must be true or false")
    found = document.get("name", name)
    if not isinstance(found, str) or not NAME.fullmatch(found):
        raise PolicyError("name must be 1-200 letters, digits, '.', '_' or '-', starting with a letter or digit")
    if name is not None and found != name:
        raise PolicyError(f"the document's name '{found}' is not the name in the URL '{name}'")
    if not isinstance(document.get("description", ""), str):
        raise PolicyError("description must be a string")
    rules = document.get("rules")
    if not isinstance(rules, list) or len(rules) > MAX_RULES:
        raise PolicyError(f"rules must be a list of at most {MAX_RULES} rules")
    return found, tuple(_rule(r, i) for i, r in enumerate(rules))


def breaks_glass(document: Any) -> bool:
    """Whether a (valid) policy document lets its holders use purpose of use BTG."""
    return isinstance(document, dict) and document.get("breakTheGlass") is True


def substitute(pairs: tuple[tuple[str, str], ...], fhir_user: str) -> tuple[tuple[str, str], ...]:
    """%fhirUser.id and %fhirUser replaced by the user's resource id and reference."""
    rid = fhir_user.rsplit("/", 1)[-1]
    return tuple((n, v.replace("%fhirUser.id", rid).replace("%fhirUser", fhir_user)) for n, v in pairs)


def relative(fhir_user: str | None) -> str:
    """`Type/id` of a fhirUser claim, which may be an absolute URL; "" for none."""
    parts = (fhir_user or "").rstrip("/").split("/")
    return "/".join(parts[-2:]) if len(parts) >= 2 else ""


def _uses_user(pairs: tuple[tuple[str, str], ...] | None) -> bool:
    return any("%fhirUser" in v for _, v in pairs or ())


def rules_for(rules: tuple[Rule, ...], fhir_user: str | None) -> tuple[Rule, ...]:
    """The rules of one principal: %fhirUser substituted; a rule naming %fhirUser opens
    nothing to a caller without one (dropped)."""
    out = []
    for rule in rules:
        if _uses_user(rule.criteria) or _uses_user(rule.compartment):
            if not fhir_user:
                continue
            rule = replace(
                rule,
                criteria=substitute(rule.criteria, fhir_user),
                compartment=None if rule.compartment is None else substitute(rule.compartment, fhir_user),
            )
        out.append(rule)
    return tuple(out)


# ---- storage ----------------------------------------------------------------------------


async def put_policy(
    pool: asyncpg.Pool, document: Any, by: str, name: str | None = None, *, create: bool
) -> dict[str, Any]:
    """Store a new version (create: the first; 409 when the name exists)."""
    name, _ = parse_policy(document, name)
    stored = {**document, "name": name}
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('auth_policy:' || $1))", name)
        latest = await conn.fetchval("SELECT max(version) FROM auth_policy WHERE name = $1", name)
        if create and latest is not None:
            raise FhirError.of(
                409, "duplicate", f"a policy named '{name}' exists (PUT /admin/policies/{name} to change it)"
            )
        if not create and latest is None:
            raise FhirError.of(404, "not-found", f"no policy '{name}' (POST /admin/policies to create it)")
        version = (latest or 0) + 1
        row = await conn.fetchrow(
            "INSERT INTO auth_policy (name, version, document, created_by) VALUES ($1, $2, $3::jsonb, $4)"
            " RETURNING created_at",
            name,
            version,
            _dumps(stored),
            by,
        )
    return _json(name, version, stored, row["created_at"])


async def get_policy(pool: asyncpg.Pool, name: str, version: int | None = None) -> dict[str, Any] | None:
    row = await pool.fetchrow(
        "SELECT name, version, document, created_at FROM auth_policy WHERE name = $1"
        " AND ($2::int IS NULL OR version = $2) ORDER BY version DESC LIMIT 1",
        name,
        version,
    )
    return None if row is None else _json(row["name"], row["version"], _loads(row["document"]), row["created_at"])


async def list_policies(pool: asyncpg.Pool) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        "SELECT DISTINCT ON (name) name, version, document, created_at FROM auth_policy ORDER BY name, version DESC"
    )
    return [_json(r["name"], r["version"], _loads(r["document"]), r["created_at"]) for r in rows]


async def delete_policy(pool: asyncpg.Pool, name: str) -> bool:
    """Delete every version; 409 while a user or client is assigned it."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('auth_policy:' || $1))", name)
        holders = await conn.fetch(
            "SELECT 'user ' || username AS who FROM auth_user WHERE $1 = ANY(policies)"
            " UNION ALL SELECT 'client ' || client_id FROM auth_client WHERE $1 = ANY(policies) LIMIT 3",
            name,
        )
        if holders:
            raise FhirError.of(
                409,
                "conflict",
                f"policy '{name}' is assigned ({', '.join(r['who'] for r in holders)}); unassign it first",
            )
        return (
            await conn.fetchval(
                "WITH d AS (DELETE FROM auth_policy WHERE name = $1 RETURNING 1) SELECT count(*) FROM d", name
            )
            > 0
        )


async def unknown_policies(db: Any, names: list[str]) -> list[str]:
    """The names among names that no stored policy has."""
    if not names:
        return []
    known = {
        r["name"] for r in await db.fetch("SELECT DISTINCT name FROM auth_policy WHERE name = ANY($1::text[])", names)
    }
    return [n for n in names if n not in known]


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def _loads(value: Any) -> Any:
    return orjson.loads(value) if isinstance(value, str | bytes) else value


def _json(name: str, version: int, document: dict[str, Any], created_at: Any) -> dict[str, Any]:
    return {**document, "name": name, "version": version, "created": created_at.isoformat()}


# ---- the per-node cache -----------------------------------------------------------------


class Policies:
    """The policies of each subject, cached on this node until any policy or
    assignment changes anywhere (auth_policy_generation, polled every second)."""

    def __init__(self, pool: asyncpg.Pool, external: tuple[str, ...] = ()) -> None:
        self.pool = pool
        self.external = external  # the policies of a trusted external issuer's practitioner users
        self.generation: int | None = None
        # (kind, subject) -> (its rules, None when it has no policy; whether one allows BTG)
        self._subjects: dict[tuple[str, str], tuple[tuple[Rule, ...] | None, bool]] = {}
        # token -> (the verified principal, the principal with its policy): a principal
        # keeps its access answers for as long as its token is used
        self._principals: OrderedDict[str, tuple[Principal, Principal]] = OrderedDict()
        self._poller = Periodic(POLL_SECONDS, self.refresh, log, "policy poll failed; keeping the cached policies")
        self._epoch = 0  # moves on every invalidation: a load begun before one is not kept

    async def start(self) -> None:
        await self._poller.start()

    async def close(self) -> None:
        await self._poller.close()

    async def refresh(self) -> None:
        generation = await self.pool.fetchval("SELECT generation FROM auth_policy_generation")
        if generation != self.generation:
            self.invalidate()
            self.generation = generation

    def invalidate(self) -> None:
        self._epoch += 1
        self._subjects.clear()
        self._principals.clear()

    async def apply(self, token: str, principal: Principal) -> Principal:
        """The principal with its subject's policy on it (unchanged when none applies)."""
        if principal.grants is None:
            return principal  # SYSTEM
        verified = principal
        epoch = self._epoch
        hit = self._principals.get(token)
        if hit is not None and hit[0] is principal:
            self._principals.move_to_end(token)
            return hit[1]
        external = "issuer" in principal.attributes  # its subject names no account of ours
        user = bool(principal.client_id) and principal.subject != principal.client_id
        if external:  # EHR_TRUSTED_POLICIES, for its practitioner users only (below)
            user = bool(principal.fhir_user)
            rules, glass = await self._rules(("issuer", "")) if self.external else (None, False)
        else:
            rules, glass = await self._rules(("user", principal.subject) if user else ("client", principal.subject))
        if BREAK_THE_GLASS in principal.purpose_of_use:
            if not glass:  # the policy was changed since the token was granted
                raise FhirError.of(403, "forbidden", "no access policy of this user or client allows break-the-glass")
            principal = replace(principal, break_the_glass=True)
        fhir_user = relative(principal.fhir_user)
        if rules is None:
            # none assigned: scopes alone (system clients, patients, patient-context tokens),
            # except for practitioner users beyond one patient's record: they need a policy
            practitioner = fhir_user.split("/", 1)[0] in ("Practitioner", "PractitionerRole")
            beyond = any(g.context != "patient" for g in principal.grants)
            rules = () if user and practitioner and beyond else None
        elif external and fhir_user.split("/", 1)[0] not in ("Practitioner", "PractitionerRole"):
            rules = None  # the issuer's patients and clients: their scopes alone
        enriched = principal if rules is None else replace(principal, policy=rules_for(rules, fhir_user))
        if epoch == self._epoch:
            self._principals[token] = (verified, enriched)
        if len(self._principals) > 10_000:
            self._principals.popitem(last=False)
        return enriched

    async def allows_break_the_glass(self, kind: str, subject: str) -> bool:
        """Whether a policy of the user or client (kind "user" or "client") has breakTheGlass."""
        return (await self._rules((kind, subject)))[1]

    async def _rules(self, key: tuple[str, str]) -> tuple[tuple[Rule, ...] | None, bool]:
        """The rules of the newest versions of a subject's policies (None when it has none),
        and whether one of them allows break-the-glass."""
        if key in self._subjects:
            return self._subjects[key]
        epoch = self._epoch
        if key[0] == "issuer":  # the named policies (EHR_TRUSTED_POLICIES)
            rows = await self.pool.fetch(
                "SELECT DISTINCT ON (name) document FROM auth_policy WHERE name = ANY($1::text[])"
                " ORDER BY name, version DESC",
                list(self.external),
            )
            assigned = len(self.external)
        else:
            table, column = ("auth_user", "username") if key[0] == "user" else ("auth_client", "client_id")
            rows = await self.pool.fetch(
                f"SELECT p.document FROM {table} a CROSS JOIN LATERAL unnest(a.policies) AS n(name)"
                " CROSS JOIN LATERAL (SELECT document FROM auth_policy WHERE name = n.name"
                f" ORDER BY version DESC LIMIT 1) p WHERE a.{column} = $1",
                key[1],
            )
            assigned = await self.pool.fetchval(
                f"SELECT cardinality(policies) FROM {table} WHERE {column} = $1", key[1]
            )
        rules: tuple[Rule, ...] | None = None
        glass = False
        if assigned:
            found: list[Rule] = []
            for row in rows:
                try:
                    document = _loads(row["document"])
                    found += parse_policy(document)[1]
                    glass = glass or breaks_glass(document)
                except PolicyError as error:  # stored before a stricter grammar: opens nothing
                    log.error("stored policy for %s %s is invalid: %s", *key, error)
            rules = tuple(found)
        if epoch == self._epoch and len(self._subjects) < 100_000:
            self._subjects[key] = (rules, glass)
        return rules, glass


# ---- hiddenElements and readonlyElements ------------------------------------------------

SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"}


def hidden_elements(principal: Principal, resource_type: str) -> tuple[str, ...]:
    """The elements a principal's policy hides on resources of the type (any of its rules for it)."""
    if principal.policy is None:
        return ()
    return tuple(dict.fromkeys(e for r in principal.rules_of(resource_type) for e in r.hidden))


def readonly_elements(principal: Principal, resource_type: str) -> tuple[str, ...]:
    if principal.policy is None:
        return ()
    return tuple(dict.fromkeys(e for r in principal.rules_of(resource_type) for e in r.readonly))


def masked(principal: Principal, resource_type: str, content: bytes) -> bytes:
    """A stored resource's JSON as this principal may see it: hidden elements removed,
    and tagged SUBSETTED (R4 search.html#summary) when something was."""
    hidden = hidden_elements(principal, resource_type)
    if not hidden:
        return content
    resource = fhir_json.loads(content, check_duplicates=False)  # decimals keep their precision
    return fhir_json.dumps(mask_resource(resource, hidden)) if any(e in resource for e in hidden) else content


def mask_resource(resource: dict[str, Any], hidden: tuple[str, ...]) -> dict[str, Any]:
    for element in hidden:
        resource.pop(element, None)
    meta = resource.setdefault("meta", {})
    tags = meta.setdefault("tag", [])
    if not any(t.get("code") == SUBSETTED["code"] and t.get("system") == SUBSETTED["system"] for t in tags):
        tags.append(dict(SUBSETTED))
    return resource


def unhidden(principal: Principal, resource_type: str, resource: dict[str, Any]) -> dict[str, Any]:
    """The resource without the elements the principal's policy hides (untagged: the
    input of a patch, not a response)."""
    hidden = hidden_elements(principal, resource_type)
    return {k: v for k, v in resource.items() if k not in hidden} if hidden else resource


def guard_search(principal: Principal, clauses: dict[str, list[Any]], sort: list[Any] | tuple[()] = ()) -> None:
    """403 for a search that matches or sorts on a hidden element (its parameter's
    expression, or _content/_text over it), through chains and _has too: its hits or their
    order would reveal the value."""
    if principal.policy is None:
        return
    for rtype, found in clauses.items():
        for clause in found:
            _guard_clause(principal, rtype, clause)
        for key in sort:
            param = search_params(rtype).get(key.code)
            _guard(principal, rtype, f"_sort={key.code}", param.expression if param is not None else None)


def _guard_clause(principal: Principal, rtype: str, clause: Any) -> None:
    if clause.has is not None:  # _has: clause.param is the referring type's reference
        _guard_clause(principal, clause.has_type, replace(clause, has=None, has_type=None))
        _guard_clause(principal, clause.has_type, clause.has)
        return
    _guard(principal, rtype, clause.name, clause.param.expression if clause.param is not None else None)
    for target, inner in (clause.chain or {}).items():
        _guard_clause(principal, target, inner)


def _guard(principal: Principal, rtype: str, name: str, expression: str | None) -> None:
    touched = [
        e
        for e in hidden_elements(principal, rtype)
        if (name == "_content" or (name == "_text" and e == "text"))
        or (
            expression and re.search(rf"\b(?:{rtype}|Resource|DomainResource)\.(?:{e}|{_choice_base(e)})\b", expression)
        )
    ]
    if touched:
        raise FhirError.of(403, "forbidden", f"the access policy hides {rtype}.{touched[0]}: {name} cannot search it")


def _choice_base(element: str) -> str:
    """valueQuantity -> value: a choice element's name in expressions (`Observation.value as
    Quantity`); a plain camelCase name (bodySite) matches no other element at a word boundary."""
    return re.sub(r"[A-Z][A-Za-z0-9]*$", "", element) or element


def guard_change(principal: Principal, resource_type: str, current: Any, new: dict[str, Any]) -> dict[str, Any]:
    """The new version of a resource a principal changes (update, patch): 403 when it changes
    a readonly or hidden element; hidden elements it left out are kept from the current
    version (the caller never saw them: leaving them out is no deletion)."""
    readonly = readonly_elements(principal, resource_type)
    hidden = hidden_elements(principal, resource_type)
    if current is None or not (readonly or hidden):
        return new
    before = fhir_json.loads(current, check_duplicates=False) if isinstance(current, str | bytes) else current
    for element in hidden:
        if element not in new and element in before:
            new = {**new, element: before[element]}
    for element in (*readonly, *hidden):
        if new.get(element) != before.get(element):
            raise FhirError.of(403, "forbidden", f"the access policy does not allow changing {resource_type}.{element}")
    return new
