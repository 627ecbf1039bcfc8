"""What a Subscription asks for, read and checked when it is written (docs/events.md).

R4 Subscriptions (http://hl7.org/fhir/R4/subscription.html): `criteria` is a search
(`Type?params`) parsed by the search parser, strictly, so a subscription can only ask
what a search can. Topic-based ones (Subscriptions Backport IG 1.1): `criteria` is a
SubscriptionTopic's canonical URL (events/topics.py), narrowed by the
`backport-filter-criteria` extensions on it. Everything here is pure (no database):
the topic is resolved by the write hook (events/lifecycle.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

from ..auth.principal import Principal, patient_reference_params
from ..fhir.definitions import definitions
from ..fhir.outcome import FhirError, Issue
from ..search.criteria import conditional_criteria
from ..search.query import parse_request
from .webhook import HeaderError, check_endpoint, check_secret, parse_header

BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
BACKPORT_PROFILE = BACKPORT + "backport-subscription"
FILTER_CRITERIA = BACKPORT + "backport-filter-criteria"
PAYLOAD_CONTENT = BACKPORT + "backport-payload-content"
HEARTBEAT_PERIOD = BACKPORT + "backport-heartbeat-period"
SECRET = "https://headless-ehr.dev/fhir/StructureDefinition/subscription-secret"

CHANNELS = ("rest-hook", "websocket")
PAYLOADS = ("empty", "id-only", "full-resource")
FULL_RESOURCE_TYPES = ("application/fhir+json", "application/json")  # R4 channel.payload we can send
MAX_HEADERS = 10  # channel.header entries
MAX_HEADER_BYTES = 1024  # each
MAX_FILTERS = 20  # backport filter criteria per subscription
MAX_HEARTBEAT = 24 * 3600
_INTERACTIONS = ("create", "update", "delete")


@dataclass(frozen=True, slots=True)
class Trigger:
    """Events of resource_type with one of interactions (None: any) whose resource the
    search `params` finds (none: every resource of the type)."""

    resource_type: str
    interactions: tuple[str, ...] | None
    params: tuple[tuple[str, str], ...]

    def json(self) -> dict[str, Any]:
        return {
            "type": self.resource_type,
            "interactions": None if self.interactions is None else list(self.interactions),
            "params": [list(p) for p in self.params],
        }

    @classmethod
    def of(cls, data: dict[str, Any]) -> Trigger:
        interactions = data.get("interactions")
        return cls(
            data["type"],
            None if interactions is None else tuple(interactions),
            tuple((str(n), str(v)) for n, v in data.get("params") or ()),
        )


@dataclass(frozen=True, slots=True)
class SubscriptionRequest:
    """What one Subscription resource asks for."""

    status: str  # as written: requested | active | error | off
    trigger: Trigger | None  # R4 criteria; None for a topic-based subscription
    topic: str | None  # backport: the SubscriptionTopic's canonical URL
    filters: tuple[tuple[str, tuple[tuple[str, str], ...]], ...]  # backport: (type, params) per filter
    channel: str  # rest-hook | websocket
    endpoint: str | None
    payload: str  # empty | id-only | full-resource
    headers: tuple[str, ...]
    secret: str | None
    heartbeat_seconds: int | None
    end: datetime | None
    error: str | None

    @property
    def r4_style(self) -> bool:
        return self.topic is None

    @property
    def needs_handshake(self) -> bool:
        """Backport rest-hooks are activated by a handshake (the delivery's); the others at once."""
        return not self.r4_style and self.channel == "rest-hook"


def _invalid(message: str, where: str, status: int = 422) -> FhirError:
    return FhirError.of(status, "invalid" if status == 400 else "processing", message, where)


def _extensions(element: Any, url: str) -> list[dict[str, Any]]:
    if not isinstance(element, dict):
        return []
    return [e for e in element.get("extension") or () if isinstance(e, dict) and e.get("url") == url]


def _one_extension(element: Any, url: str, where: str) -> dict[str, Any] | None:
    found = _extensions(element, url)
    if len(found) > 1:
        raise _invalid(f"extension {url} may appear once", where)
    return found[0] if found else None


def read_subscription(resource: dict[str, Any]) -> SubscriptionRequest:
    """What the Subscription asks for; 400/422 for what this server cannot do."""
    status = resource.get("status")
    if status not in ("requested", "active", "error", "off"):
        raise _invalid("Subscription.status must be requested, active, error or off", "Subscription.status")
    criteria = resource.get("criteria")
    if not isinstance(criteria, str) or not criteria.strip():
        raise _invalid("Subscription.criteria is required", "Subscription.criteria")
    profiles = (resource.get("meta") or {}).get("profile") or ()
    topic_based = BACKPORT_PROFILE in profiles or _is_canonical(criteria)
    trigger, topic, filters = None, None, ()
    if topic_based:
        topic = criteria.split("|", 1)[0]  # url|version: one version per URL is kept
        filters = _filters(resource.get("_criteria"))
    else:
        if _extensions(resource.get("_criteria"), FILTER_CRITERIA):
            raise _invalid("filter criteria need a topic-based (backport) Subscription", "Subscription.criteria")
        trigger = r4_trigger(criteria)
    channel = resource.get("channel")
    if not isinstance(channel, dict):
        raise _invalid("Subscription.channel is required", "Subscription.channel")
    kind = channel.get("type")
    if kind not in CHANNELS:
        raise _invalid(
            f"channel type '{str(kind)[:40]}' is not supported: rest-hook or websocket", "Subscription.channel.type"
        )
    endpoint = channel.get("endpoint")
    if kind == "rest-hook":
        endpoint = _http_endpoint(endpoint)
    elif endpoint is not None and not isinstance(endpoint, str):
        raise _invalid("channel.endpoint must be a URL", "Subscription.channel.endpoint")
    end = _end(resource.get("end"))
    error = resource.get("error")
    return SubscriptionRequest(
        status=status,
        trigger=trigger,
        topic=topic,
        filters=filters,
        channel=kind,
        endpoint=endpoint,
        payload=_payload(channel),
        headers=_headers(channel.get("header")),
        secret=_secret(resource, channel),
        heartbeat_seconds=_heartbeat(channel),
        end=end,
        error=error if isinstance(error, str) else None,
    )


def _is_canonical(criteria: str) -> bool:
    return criteria.startswith(("http://", "https://", "urn:"))


def r4_trigger(criteria: str) -> Trigger:
    """An R4 `Type?params` criteria as a trigger on every interaction, its parameters
    checked by the strict search parser (unknown parameter or bad value: 400)."""
    rtype, mark, query = criteria.strip().partition("?")
    if rtype not in definitions().resource_types:
        raise _invalid(f"criteria '{criteria[:100]}' do not start with a resource type", "Subscription.criteria", 400)
    pairs = parse_qsl(query, keep_blank_values=True) if mark else []
    return Trigger(rtype, None, search_criteria(rtype, pairs, "Subscription.criteria"))


def search_criteria(rtype: str, pairs: list[tuple[str, str]], where: str) -> tuple[tuple[str, str], ...]:
    """A search's parameters, as conditional criteria are (no result parameters), checked
    by the strict search parser; () for none."""
    if not pairs:
        return ()
    try:
        params = conditional_criteria(rtype, pairs, "subscription").params
        parse_request([rtype], list(params), strict=True)
    except FhirError as error:
        text = "&".join(f"{n}={v}" for n, v in pairs)[:200]
        context = Issue("error", "invalid", f"{where}: the criteria '{text}' are not a valid search", where)
        raise FhirError(error.status, [context, *error.issues]) from None
    return params


def _filters(element: Any) -> tuple[tuple[str, tuple[tuple[str, str], ...]], ...]:
    """The backport filter criteria (`Type?params`, or bare params when the topic has one type)."""
    found = _extensions(element, FILTER_CRITERIA)
    if len(found) > MAX_FILTERS:
        raise _invalid(f"at most {MAX_FILTERS} filter criteria", "Subscription.criteria")
    out = []
    for ext in found:
        value = ext.get("valueString")
        if not isinstance(value, str) or not value.strip():
            raise _invalid("backport-filter-criteria needs a valueString", "Subscription.criteria")
        rtype, mark, query = value.strip().partition("?")
        if not mark:
            raise _invalid(f"filter criteria '{value[:100]}' must be Type?params", "Subscription.criteria")
        if rtype not in definitions().resource_types:
            raise _invalid(f"filter criteria '{value[:100]}' do not name a resource type", "Subscription.criteria")
        pairs = parse_qsl(query, keep_blank_values=True)
        out.append((rtype, search_criteria(rtype, pairs, "Subscription.criteria")))
    return tuple(out)


def _http_endpoint(endpoint: Any) -> str:
    where = "Subscription.channel.endpoint"
    if not isinstance(endpoint, str) or not endpoint:
        raise _invalid("a rest-hook needs channel.endpoint", where)
    try:
        check_endpoint(endpoint)
    except ValueError as error:
        raise _invalid(str(error), where) from None
    return endpoint


def _payload(channel: dict[str, Any]) -> str:
    """empty, id-only or full-resource: the backport payload-content extension on
    channel.payload decides; else R4: no payload mime type is empty, a JSON one full."""
    where = "Subscription.channel.payload"
    content = _one_extension(channel.get("_payload"), PAYLOAD_CONTENT, where)
    mime = channel.get("payload")
    if mime is not None and (not isinstance(mime, str) or mime.split(";", 1)[0].strip() not in FULL_RESOURCE_TYPES):
        raise _invalid("channel.payload must be application/fhir+json (or absent)", where)
    if content is not None:
        code = content.get("valueCode")
        if code not in PAYLOADS:
            raise _invalid("backport-payload-content must be empty, id-only or full-resource", where)
        if code != "empty" and mime is None:
            raise _invalid("an id-only or full-resource payload needs channel.payload", where)
        return code
    return "empty" if mime is None else "full-resource"


def _headers(headers: Any) -> tuple[str, ...]:
    """channel.header, bounded here, each line checked by the rule the delivery sends by (events/webhook.py)."""
    where = "Subscription.channel.header"
    if headers is None:
        return ()
    if not isinstance(headers, list) or len(headers) > MAX_HEADERS:
        raise _invalid(f"channel.header: at most {MAX_HEADERS} headers", where)
    out = []
    for header in headers:
        if not isinstance(header, str) or len(header.encode()) > MAX_HEADER_BYTES:
            raise _invalid(f"each channel.header is a string of at most {MAX_HEADER_BYTES} bytes", where)
        try:
            name, value = parse_header(header)
        except HeaderError as error:
            raise _invalid(str(error), where) from None
        out.append(f"{name}: {value}")
    return tuple(out)


def _secret(resource: dict[str, Any], channel: dict[str, Any]) -> str | None:
    """The Standard Webhooks signing secret, checked by the rule the delivery signs by (events/webhook.py)."""
    where = "Subscription.extension"
    found = _extensions(resource, SECRET) + _extensions(channel, SECRET)
    if not found:
        return None
    if len(found) > 1:
        raise _invalid("the subscription-secret extension may appear once", where)
    value = found[0].get("valueString")
    if not isinstance(value, str):
        raise _invalid("subscription-secret must be a valueString 'whsec_' + base64", where)
    try:
        check_secret(value)
    except ValueError as error:
        raise _invalid(f"subscription-secret: {error}", where) from None
    return value


def _heartbeat(channel: dict[str, Any]) -> int | None:
    where = "Subscription.channel.extension"
    ext = _one_extension(channel, HEARTBEAT_PERIOD, where)
    if ext is None:
        return None
    value = ext.get("valueUnsignedInt")
    if type(value) is not int or not 1 <= value <= MAX_HEARTBEAT:
        raise _invalid(f"backport-heartbeat-period must be 1 to {MAX_HEARTBEAT} seconds", where)
    return value


def _end(value: Any) -> datetime | None:
    if value is None:
        return None
    try:
        end = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise _invalid("Subscription.end must be an instant", "Subscription.end") from None
    if end.tzinfo is None:
        raise _invalid("Subscription.end must carry a time zone", "Subscription.end")
    try:
        return end.astimezone(UTC)  # an offset can push it past year 1 or 9999, where PostgreSQL cannot store it
    except OverflowError:
        raise _invalid("Subscription.end is out of range", "Subscription.end") from None


# -- the subscriber's rights --------------------------------------------------------------


def check_rights(principal: Principal, triggers: list[Trigger]) -> None:
    """403 unless the principal may search every trigger's type and, when its search of
    the type is held to patients' records (a patient's app or user), its criteria name
    no other patient. Matching runs as the owner anyway, so what it may not read never
    reaches it; this refuses such a request up front rather than never notifying it."""
    for trigger in triggers:
        scopes = principal.access("search", trigger.resource_type)  # 403 when it may not search the type
        if scopes is None or not all(s.patient for s in scopes):
            continue
        own = {s.patient for s in scopes if s.patient}
        for name, value in trigger.params:
            other = _other_patient(trigger.resource_type, name, value, own)
            if other is not None:
                mine = ", ".join(f"Patient/{p}" for p in sorted(own))
                raise FhirError.of(
                    403,
                    "forbidden",
                    f"this token may only subscribe within {mine}'s record, not Patient/{other[:64]}",
                    "Subscription.criteria",
                )


def _other_patient(rtype: str, name: str, value: str, own: set[str]) -> str | None:
    """A patient id other than own that a criterion names, if any."""
    base, _, modifier = name.partition(":")
    if "." in base:
        return None  # a chain: the compartment restriction of the match holds it
    names_patient = base in patient_reference_params(rtype) or (rtype == "Patient" and base == "_id")
    if not names_patient:
        return None
    if modifier and modifier != "Patient" and modifier[:1].isupper():
        return None  # subject:Group=…: names no patient
    for part in value.split(","):
        part = part.strip()
        if "/" in part:
            kind, _, rid = part.rstrip("/").rpartition("/")
            if kind.rsplit("/", 1)[-1] == "Patient" and rid not in own:
                return rid
        elif part and part not in own:  # a bare id may be a Patient's: refused unless our own
            return part
    return None
