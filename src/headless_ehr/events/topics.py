"""Backport SubscriptionTopics: R5 SubscriptionTopic carried by an R4 Basic resource
(Subscriptions Backport IG 1.1) with the R5 cross-version extensions.

Supported: `url`, and `resourceTrigger` with `resource`, `supportedInteraction`
(create | update | delete) and `queryCriteria.current` (a search, matched like R4
criteria); `canFilterBy` with `resource`, `filterParameter` (a search parameter of that
resource) and `modifier`. Refused with 422 rather than ignored: `fhirPathCriteria`,
`queryCriteria.previous` and `requireBoth` (they need the resource's previous state),
`eventTrigger`, a `filterDefinition` that is not a search parameter. `notificationShape`
is accepted and not applied (a notification carries its focus only).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from ..fhir.definitions import definitions
from ..fhir.outcome import FhirError
from ..search.registry import search_params
from .subscription import Trigger, search_criteria

_PREFIXES = (
    "http://hl7.org/fhir/5.0/StructureDefinition/extension-SubscriptionTopic.",
    "http://hl7.org/fhir/4.3/StructureDefinition/extension-SubscriptionTopic.",
)
_DEFINITION = "http://hl7.org/fhir/StructureDefinition/"
_GENERAL = frozenset({"_id", "_lastUpdated", "_tag", "_profile", "_security", "_source", "_text", "_content"})
MAX_TRIGGERS = 20
MAX_FILTER_BY = 50


@dataclass(frozen=True, slots=True)
class FilterBy:
    resource_type: str | None  # None: any of the topic's resources
    param: str
    modifiers: tuple[str, ...]

    def json(self) -> dict[str, Any]:
        return {"type": self.resource_type, "param": self.param, "modifiers": list(self.modifiers)}

    @classmethod
    def of(cls, data: dict[str, Any]) -> FilterBy:
        return cls(data.get("type"), data["param"], tuple(data.get("modifiers") or ()))


@dataclass(frozen=True, slots=True)
class Topic:
    url: str
    triggers: tuple[Trigger, ...]
    can_filter_by: tuple[FilterBy, ...]


def _invalid(message: str) -> FhirError:
    return FhirError.of(422, "not-supported", message, "Basic.extension")


def is_topic(resource: dict[str, Any]) -> bool:
    """A Basic whose code says SubscriptionTopic."""
    code = resource.get("code")
    codings = code.get("coding") if isinstance(code, dict) else None
    return any(isinstance(c, dict) and c.get("code") == "SubscriptionTopic" for c in codings or ())


def _name(ext: dict[str, Any]) -> str | None:
    url = ext.get("url")
    for prefix in _PREFIXES:
        if isinstance(url, str) and url.startswith(prefix):
            return url.removeprefix(prefix)
    return None


def _parts(ext: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The sub-extensions of a complex extension, by their (relative) url."""
    return [(e.get("url"), e) for e in ext.get("extension") or () if isinstance(e, dict)]


def _resource_type(value: Any) -> str:
    name = value.removeprefix(_DEFINITION) if isinstance(value, str) else None
    if name not in definitions().resource_types:
        raise _invalid(f"topic resource '{str(value)[:100]}' is not a resource type")
    return name


def read_topic(resource: dict[str, Any]) -> Topic:
    """The topic a SubscriptionTopic Basic defines; 422 for what is not supported."""
    url = None
    triggers: list[Trigger] = []
    filter_by: list[FilterBy] = []
    for ext in resource.get("extension") or ():
        if not isinstance(ext, dict):
            continue
        name = _name(ext)
        if name == "url":
            url = ext.get("valueUri") or ext.get("valueUrl")
        elif name == "resourceTrigger":
            triggers.append(_trigger(ext))
        elif name == "canFilterBy":
            filter_by.append(_filter_by(ext))
        elif name == "eventTrigger":
            raise _invalid("SubscriptionTopic.eventTrigger is not supported: use resourceTrigger")
    if not isinstance(url, str) or not url:
        raise _invalid("a SubscriptionTopic needs its url (extension-SubscriptionTopic.url)")
    if not triggers:
        raise _invalid("a SubscriptionTopic needs at least one resourceTrigger")
    if len(triggers) > MAX_TRIGGERS or len(filter_by) > MAX_FILTER_BY:
        raise _invalid(f"at most {MAX_TRIGGERS} resourceTriggers and {MAX_FILTER_BY} canFilterBy")
    return Topic(url, tuple(triggers), tuple(filter_by))


def _trigger(ext: dict[str, Any]) -> Trigger:
    rtype = None
    interactions: list[str] = []
    params: list[tuple[str, str]] = []
    for part, sub in _parts(ext):
        if part == "resource":
            rtype = _resource_type(sub.get("valueUri") or sub.get("valueUrl"))
        elif part == "supportedInteraction":
            code = sub.get("valueCode")
            if code not in ("create", "update", "delete"):
                raise _invalid("supportedInteraction must be create, update or delete")
            interactions.append(code)
        elif part == "queryCriteria":
            params = _query_criteria(sub)
        elif part == "fhirPathCriteria":
            raise _invalid("resourceTrigger.fhirPathCriteria is not supported: use queryCriteria.current")
    if rtype is None:
        raise _invalid("a resourceTrigger needs its resource")
    return Trigger(rtype, tuple(sorted(set(interactions))) or None, search_criteria(rtype, params, "Basic.extension"))


def _query_criteria(ext: dict[str, Any]) -> list[tuple[str, str]]:
    params: list[tuple[str, str]] = []
    for part, sub in _parts(ext):
        if part == "current":
            value = sub.get("valueString")
            if not isinstance(value, str):
                raise _invalid("queryCriteria.current needs a valueString")
            params = parse_qsl(value.partition("?")[2] if "?" in value else value, keep_blank_values=True)
        elif part in ("previous", "requireBoth"):
            if part == "requireBoth" and sub.get("valueBoolean") is False:
                continue
            raise _invalid(f"queryCriteria.{part} is not supported (only current)")
    return params


def _filter_by(ext: dict[str, Any]) -> FilterBy:
    rtype = None
    param = None
    modifiers: list[str] = []
    definition = None
    for part, sub in _parts(ext):
        if part == "resource":
            rtype = _resource_type(sub.get("valueUri") or sub.get("valueUrl"))
        elif part == "filterParameter":
            param = sub.get("valueString")
        elif part == "modifier":
            code = sub.get("valueCode")
            if isinstance(code, str):
                modifiers.append(code)
        elif part == "filterDefinition":
            definition = sub.get("valueUri") or sub.get("valueUrl")
    if not isinstance(param, str) or not param:
        raise _invalid("a canFilterBy needs its filterParameter")
    if rtype is not None and param not in _GENERAL and param not in search_params(rtype):
        detail = f" (filterDefinition {definition[:100]} is not supported)" if isinstance(definition, str) else ""
        raise _invalid(f"canFilterBy '{param}' is not a search parameter of {rtype}{detail}")
    return FilterBy(rtype, param, tuple(modifiers))


def topic_triggers(topic: Topic, filters: tuple[tuple[str, tuple[tuple[str, str], ...]], ...]) -> list[Trigger]:
    """A subscription's triggers: the topic's, each narrowed by the filters on its
    resource type; 422 for a filter the topic's canFilterBy does not allow."""
    types = {t.resource_type for t in topic.triggers}
    extra: dict[str, list[tuple[str, str]]] = {}
    for rtype, params in filters:
        if rtype not in types:
            raise FhirError.of(
                422, "processing", f"the topic {topic.url} has no trigger on {rtype}", "Subscription.criteria"
            )
        for name, value in params:
            _allowed(topic, rtype, name)
            extra.setdefault(rtype, []).append((name, value))
    return [
        Trigger(t.resource_type, t.interactions, tuple(sorted({*t.params, *extra.get(t.resource_type, ())})))
        for t in topic.triggers
    ]


def _allowed(topic: Topic, rtype: str, name: str) -> None:
    base, _, modifier = name.partition(":")
    for entry in topic.can_filter_by:
        if entry.param == base and entry.resource_type in (None, rtype):
            if modifier and modifier not in entry.modifiers:
                raise FhirError.of(
                    422,
                    "processing",
                    f"the topic {topic.url} does not allow the modifier :{modifier} on {base}",
                    "Subscription.criteria",
                )
            return
    raise FhirError.of(
        422, "processing", f"the topic {topic.url} cannot be filtered by {rtype}.{base}", "Subscription.criteria"
    )
