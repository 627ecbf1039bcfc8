# ruff: noqa: RUF001  (digits of other scripts are the point of this fuzz)
"""Property-based fuzz through the ASGI app: no input makes the server answer 5xx.

Search parameters (names, modifiers, chains, `_has`, prefixes, values in any script,
control characters, huge numbers), precondition and negotiation headers, and resource
bodies (random JSON, near-valid resources with wrong kinds, huge numbers, deep
nesting) are generated; every answer must be below 500, and every 4xx must carry an
OperationOutcome. Bounded so that the whole file runs in well under a minute;
EHR_FUZZ_EXAMPLES=2000 runs a deeper search.
"""

from __future__ import annotations

import json
import os
import uuid
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FHIR_JSON = "application/fhir+json"

FUZZ = settings(
    max_examples=int(os.environ.get("EHR_FUZZ_EXAMPLES", "150")),  # raise it for a deeper run
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)


async def assert_handled(res: httpx.Response, what: object) -> None:
    assert res.status_code < 500, f"{res.status_code} for {what!r}: {res.text[:300]}"
    if 400 <= res.status_code < 500 and res.request.method != "HEAD":
        body = res.json()
        assert body.get("resourceType") == "OperationOutcome", f"{res.status_code} for {what!r}: {res.text[:300]}"


# -- text -----------------------------------------------------------------------------

# Any Unicode, but with the troublemakers over-represented: controls, NUL, separators,
# escapes, digits of other scripts and superscripts.
TRICKY = st.sampled_from(
    ["\x00", "\x01", "\x1f", "\x7f", "\t", "\n", "\r", ",", "|", "$", "\\", ":", ".", "%", "&", "=", "?", "#", "/",
     "²", "١", "٢", "߀", "Ⅻ", "﹣", "−", "é", "\u200b", "\ufeff", "\ud7ff", "𝟘", "🙂", "*", "'", '"', "<", ">"]
)  # fmt: skip
TEXT = st.text(st.one_of(st.characters(exclude_categories=["Cs"]), TRICKY), max_size=30)
NUMBER = st.one_of(
    st.integers(min_value=-(10**40), max_value=10**40).map(str),
    st.sampled_from(
        ["1e999999999", "-1e-999999999", "1e308", "1e309", "0e99999999", "1.", ".5", "-0", "1e-324", "9" * 400,
         "NaN", "Infinity", "1,2", "1|http://unitsofmeasure.org|mg", "5.4|http://unitsofmeasure.org|mmol/L",
         "1$2", "١٢", "²"]
    ),
    st.decimals(allow_nan=False, allow_infinity=False).map(str),
)  # fmt: skip
DATE = st.sampled_from(
    ["2020", "2020-01", "2020-02-30", "2020-01-01T10:00:00Z", "2020-01-01T25:00", "0000", "9999-12-31T23:59:59+14:00",
     "2020-01-01T10:00:00.123456789123-05:00", "٢٠٢٠", "2020-01-01T00:00:00 00:00", "-2020", "20200101"]
)  # fmt: skip
PREFIX = st.sampled_from(["", "eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap", "zz"])
VALUE = st.one_of(
    TEXT,
    st.tuples(PREFIX, NUMBER).map("".join),
    st.tuples(PREFIX, DATE).map("".join),
    st.lists(st.one_of(TEXT, NUMBER), min_size=1, max_size=4).map(",".join),
    st.tuples(TEXT, TEXT).map("|".join),
    st.tuples(TEXT, TEXT).map("$".join),
)

# -- search ---------------------------------------------------------------------------

PARAMETERS = [
    "_id", "_lastUpdated", "_text", "_content", "_list", "_tag", "_profile", "_security", "_source", "_has", "_type",
    "_count", "_sort", "_include", "_revinclude", "_summary", "_elements", "_total", "_contained", "_containedType",
    "_cursor", "_format", "_pretty", "_since",
    "name", "family", "given", "birthdate", "gender", "identifier", "telecom", "address", "organization",
    "general-practitioner", "link", "active", "deceased", "phonetic",
    "code", "value-quantity", "value-concept", "value-date", "value-string", "subject", "patient", "encounter",
    "date", "status", "category", "component-code-value-quantity", "code-value-quantity", "combo-code", "performer",
    "probability", "based-on", "derived-from", "has-member", "focus", "near", "url", "version",
]  # fmt: skip
MODIFIER = st.sampled_from(
    ["", ":exact", ":contains", ":missing", ":not", ":text", ":in", ":below", ":above", ":of-type", ":identifier",
     ":Patient", ":Observation", ":Nope", ":iterate", ":", "::", ":exact:missing"]
)  # fmt: skip
CHAIN = st.sampled_from(
    ["", ".name", ".family", ".identifier", ".subject", ".subject.name", ".patient.organization.name",
     ".derived-from.derived-from.code", ".", "..", ".nope"]
)  # fmt: skip
NAME = st.one_of(
    st.tuples(st.sampled_from(PARAMETERS), MODIFIER, CHAIN).map("".join),
    st.tuples(
        st.just("_has:"),
        st.sampled_from(["Observation", "Encounter", "Nope", "", "Observation:"]),
        st.sampled_from([":patient", ":subject", ":nope", ":", ""]),
        st.sampled_from([":code", ":_id", ":value-quantity", ":_has:Encounter:subject:status", ":", ""]),
    ).map("".join),
    TEXT,
)
RESULT_VALUE = {
    "_include": st.sampled_from(["Observation:subject", "Observation:subject:Patient", "*", "Patient:nope", "x:y:z:w",
                                 "Observation:*", ":", "Observation:subject:Nope"]),
    "_revinclude": st.sampled_from(["Observation:subject", "Provenance:target", "*", "Nope:subject", ""]),
    "_sort": st.sampled_from(["family", "-birthdate", "_id,-_lastUpdated", "value-quantity", "code", "nope", "-",
                              "name,,", "--family", "component-code-value-quantity", "date,probability"]),
    "_summary": st.sampled_from(["true", "false", "count", "text", "data", "nope"]),
    "_total": st.sampled_from(["none", "estimate", "accurate", "nope"]),
    "_type": st.sampled_from(["Patient", "Patient,Observation", "Observation,Nope", ",", "", "Patient,Patient"]),
}  # fmt: skip
PAIR = st.one_of(
    st.tuples(NAME, VALUE),
    st.sampled_from(sorted(RESULT_VALUE)).flatmap(lambda name: st.tuples(st.just(name), RESULT_VALUE[name])),
    st.tuples(st.sampled_from(["_count", "_cursor", "_elements"]), st.one_of(VALUE, NUMBER)),
)
SEARCH_PATH = st.sampled_from(
    ["/Patient", "/Observation", "/RiskAssessment", "/Task", "/", "/Patient/fuzz/*", "/Patient/fuzz/Observation",
     "/Patient/_history", "/_history", "/Patient/fuzz/_history"]
)  # fmt: skip


@FUZZ
@given(path=SEARCH_PATH, params=st.lists(PAIR, max_size=5))
async def test_search_parameters_never_cause_5xx(client, path, params):
    await assert_handled(await client.get(path, params=params), (path, params))


@FUZZ
@given(params=st.lists(PAIR, min_size=1, max_size=4))
async def test_post_search_form_never_causes_5xx(client, params):
    res = await client.post(
        "/Observation/_search", data=dict(params), headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    await assert_handled(res, params)


# -- headers --------------------------------------------------------------------------

# Header values travel as bytes: anything but CR, LF and NUL (which no HTTP parser passes).
HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x2FF, exclude_characters="\x7f"), max_size=40)
ETAGS = st.one_of(
    HEADER_TEXT,
    st.sampled_from(["*", 'W/"1"', '"1"', "1", 'W/"1", W/"2"', 'W/"²"', 'W/"١"', "W/", ",,", 'W/"99999999999999999999"',
                     'W/"1" , *', 'W/""', "W/\"-1\""]),
)  # fmt: skip
HEADERS = {
    "If-Match": ETAGS,
    "If-None-Match": ETAGS,
    "If-None-Exist": st.one_of(
        HEADER_TEXT,
        st.lists(PAIR, max_size=3).map(lambda ps: "&".join(f"{k}={v}" for k, v in ps)),
        st.sampled_from(["identifier=x|1", "_count=1", "?", "Patient?name=a", "name", "=", "&&"]),
    ),
    "Prefer": st.one_of(
        HEADER_TEXT,
        st.sampled_from(["return=minimal", "return=OperationOutcome", "return=representation", "handling=strict",
                         "handling=lenient", "return", "=;=", "respond-async", 'return="minimal"; handling=strict']),
    ),
    "Accept": st.one_of(
        HEADER_TEXT,
        st.sampled_from(["application/fhir+json", "application/fhir+xml", "text/html", "*/*", "application/*",
                         "application/json;q=0", "application/fhir+json; fhirVersion=3.0", ";;", "*/*;q=abc"]),
    ),
    "Content-Type": st.one_of(
        HEADER_TEXT,
        st.sampled_from(["application/fhir+json", "application/json", "application/fhir+json; charset=latin-1",
                         "application/json-patch+json", "text/plain", "application/x-www-form-urlencoded", ";", ""]),
    ),
    "If-Modified-Since": st.one_of(
        HEADER_TEXT, st.sampled_from(["Wed, 21 Oct 2015 07:28:00 GMT", "Wed, 21 Oct 99999 07:28:00 GMT", "0", "-1"])
    ),
}  # fmt: skip
HEADER_SET = st.dictionaries(st.sampled_from(sorted(HEADERS)), st.just(None), max_size=4).flatmap(
    lambda chosen: st.fixed_dictionaries({name: HEADERS[name] for name in chosen})
)
METHOD = st.sampled_from(["GET", "PUT", "POST", "DELETE", "PATCH", "HEAD"])


@FUZZ
@given(method=METHOD, headers=HEADER_SET, with_id=st.booleans())
async def test_headers_never_cause_5xx(client, fuzz_patient, method, headers, with_id):
    url = f"/Patient/{fuzz_patient}" if with_id else "/Patient"
    body = None
    if method in ("PUT", "POST"):
        body = json.dumps({"resourceType": "Patient", **({"id": fuzz_patient} if with_id else {})}).encode()
    elif method == "PATCH":
        body = b'[{"op":"add","path":"/active","value":true}]'
    raw = [(name.lower().encode(), value.encode("utf-8")) for name, value in headers.items()]
    if body is not None and "Content-Type" not in headers:
        raw.append((b"content-type", FHIR_JSON.encode()))
    request = client.build_request(method, url, content=body)
    kept = [(b"host", b"testserver")] + ([(b"content-length", str(len(body)).encode())] if body else [])
    request.headers = httpx.Headers(kept + raw)
    await assert_handled(await client.send(request), (method, url, headers))


# -- bodies ---------------------------------------------------------------------------

RAW_NUMBER = st.one_of(
    st.integers(min_value=-(10**60), max_value=10**60).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.sampled_from(["1e999999999", "-1e-999999999", "1E+400", "0e-99999", "-0", "1.0e308", "4.9e-324", "9" * 4000,
                     "1." + "0" * 2000 + "1", "2147483648", "-2147483649"]),
)  # fmt: skip
JSON_STRING = TEXT.map(json.dumps)
FHIRISH_STRING = st.sampled_from(
    ["2020-02-30", "2020-01-01T10:00:00", "urn:uuid:x", "Patient/", "#", "Patient/a/_history/²", "final", "male",
     "http://loinc.org", "<div>x</div>", "", " ", "\u0000"]
).map(json.dumps)  # fmt: skip
SCALAR = st.one_of(st.sampled_from(["null", "true", "false"]), RAW_NUMBER, JSON_STRING, FHIRISH_STRING)
KEYS = st.one_of(
    st.sampled_from(
        ["resourceType", "id", "meta", "text", "div", "status", "extension", "url", "valueDecimal", "valueQuantity",
         "value", "code", "coding", "system", "reference", "contained", "name", "given", "_given", "birthDate",
         "_birthDate", "subject", "component", "versionId", "lastUpdated", "resource", "entry", "request"]
    ),
    TEXT,
)  # fmt: skip


def _object(items: list[tuple[str, str]]) -> str:
    return "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in items) + "}"


JSON_TEXT = st.recursive(
    SCALAR,
    lambda children: st.one_of(
        st.lists(children, max_size=4).map(lambda xs: "[" + ",".join(xs) + "]"),
        st.lists(st.tuples(KEYS, children), max_size=4).map(_object),
    ),
    max_leaves=12,
)


def _deep(depth: int, kind: str) -> str:
    if kind == "extension":
        inner = '{"url":"http://e.org/x","valueString":"v"}'
        for _ in range(depth):
            inner = f'{{"url":"http://e.org/x","extension":[{inner}]}}'
        return f"[{inner}]"
    if kind == "array":
        return "[" * depth + "]" * depth
    return '{"a":' * depth + "1" + "}" * depth


DEEP = st.tuples(st.integers(min_value=1, max_value=3000), st.sampled_from(["extension", "array", "object"])).map(
    lambda args: _deep(*args)
)

TEMPLATES = {
    "Patient": {
        "resourceType": '"Patient"',
        "active": "true",
        "name": '[{"family":"Fuzz","given":["A"]}]',
        "birthDate": '"2000-01-01"',
        "text": '{"status":"generated","div":"<div xmlns=\\"http://www.w3.org/1999/xhtml\\">x</div>"}',
        "extension": '[{"url":"http://e.org/x","valueDecimal":1.5}]',
    },
    "Observation": {
        "resourceType": '"Observation"',
        "status": '"final"',
        "code": '{"coding":[{"system":"http://loinc.org","code":"8480-6"}]}',
        "subject": '{"reference":"Patient/fuzz"}',
        "valueQuantity": '{"value":1.5,"unit":"mg","system":"http://unitsofmeasure.org","code":"mg"}',
        "component": '[{"code":{"text":"c"},"valueQuantity":{"value":2}}]',
    },
}


@st.composite
def near_valid(draw: st.DrawFn) -> tuple[str, str]:
    rtype = draw(st.sampled_from(sorted(TEMPLATES)))
    fields = dict(TEMPLATES[rtype])
    for key in draw(st.lists(st.one_of(st.sampled_from(sorted(fields)), KEYS), max_size=3)):
        fields[key] = draw(st.one_of(JSON_TEXT, RAW_NUMBER, DEEP))
    return rtype, _object(list(fields.items()))


BODY = st.one_of(near_valid(), st.tuples(st.sampled_from(["Patient", "Observation"]), JSON_TEXT))


@FUZZ
@given(body=BODY, how=st.sampled_from(["POST", "PUT", "$validate", "transaction", "batch"]))
async def test_resource_bodies_never_cause_5xx(client, body, how):
    rtype, text = body
    headers = {"Content-Type": FHIR_JSON}
    if how == "POST":
        res = await client.post(f"/{rtype}", content=text.encode(), headers=headers)
    elif how == "PUT":
        res = await client.put(f"/{rtype}/fuzz-put", content=text.encode(), headers=headers)
    elif how == "$validate":
        res = await client.post(f"/{rtype}/$validate", content=text.encode(), headers=headers)
    else:
        entry = f'{{"resource":{text},"request":{{"method":"POST","url":"{rtype}"}}}}'
        bundle = f'{{"resourceType":"Bundle","type":"{how}","entry":[{entry}]}}'
        res = await client.post("", content=bundle.encode(), headers=headers)
    await assert_handled(res, (how, rtype, text[:300]))


@FUZZ
@given(patch=JSON_TEXT)
async def test_json_patch_documents_never_cause_5xx(client, fuzz_patient, patch):
    headers = {"Content-Type": "application/json-patch+json"}
    res = await client.patch(f"/Patient/{fuzz_patient}", content=patch.encode(), headers=headers)
    await assert_handled(res, patch)


@pytest.fixture
async def fuzz_patient(client: httpx.AsyncClient) -> str:
    """A Patient that the header and patch fuzz may update, patch or delete."""
    rid = f"fuzz-{uuid.uuid4().hex[:12]}"
    body = {"resourceType": "Patient", "id": rid, "name": [{"family": "Fuzz"}]}
    res = await client.put(f"/Patient/{rid}", json=body, headers={"Content-Type": FHIR_JSON})
    assert res.status_code == 201
    return rid


# -- paths, bundle requests, FHIRPath patches -----------------------------------------

SEGMENT = st.one_of(
    TEXT.filter(lambda t: "/" not in t and "?" not in t and "#" not in t and t not in ("", ".", "..")),
    st.sampled_from(["Patient", "Observation", "Nope", "_history", "_search", "$validate", "$everything", "$reindex",
                     "$meta", "metadata", "*", "fuzz", "1", "²", "9" * 30, "a" * 200, "%00", "_", "$"]),
)  # fmt: skip


@FUZZ
@given(segments=st.lists(SEGMENT, min_size=1, max_size=5), method=METHOD)
async def test_paths_never_cause_5xx(client, segments, method):
    body = b'{"resourceType":"Patient"}' if method in ("PUT", "POST", "PATCH") else None
    headers = {"Content-Type": FHIR_JSON} if body else {}
    url = "/" + "/".join(quote(s, safe="$*") for s in segments)
    await assert_handled(await client.request(method, url, content=body, headers=headers), (method, url))


REQUEST_URL = st.one_of(
    st.lists(SEGMENT, min_size=1, max_size=4).map("/".join),
    st.sampled_from(["Patient", "Patient/fuzz", "Patient?name=x", "Patient?_count=²", "Patient/fuzz/_history/1",
                     "Observation?value-quantity=1e999999999", "metadata", "", "/", "http://other.org/Patient/1",
                     "Patient/fuzz/$validate", "Patient/fuzz/extra/segments", "urn:uuid:x", "?", "Patient?"]),
)  # fmt: skip
REQUEST = st.fixed_dictionaries(
    {"method": st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "get", ""]), "url": REQUEST_URL},
    optional={
        "ifMatch": ETAGS,
        "ifNoneExist": st.sampled_from(["identifier=a|b", "_count=1", "", "name=x&name=y", "?", "nope=1"]),
        "ifNoneMatch": ETAGS,
        "ifModifiedSince": st.sampled_from(["2020-01-01T00:00:00Z", "yesterday", ""]),
    },
).map(lambda d: _object([(k, json.dumps(v)) for k, v in d.items()]))
ENTRY = st.fixed_dictionaries(
    {"request": st.one_of(REQUEST, JSON_TEXT)},
    optional={
        "resource": st.one_of(near_valid().map(lambda b: b[1]), JSON_TEXT),
        "fullUrl": st.sampled_from(["urn:uuid:0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0", "urn:uuid:x", "Patient/fuzz",
                                    "http://other.org/fhir/Patient/1", "", "relative"]).map(json.dumps),
    },
).map(lambda d: _object(list(d.items())))  # fmt: skip


@FUZZ
@given(kind=st.sampled_from(["transaction", "batch"]), entries=st.lists(ENTRY, min_size=1, max_size=4))
async def test_bundle_requests_never_cause_5xx(client, kind, entries):
    bundle = f'{{"resourceType":"Bundle","type":"{kind}","entry":[{",".join(entries)}]}}'
    res = await client.post("", content=bundle.encode(), headers={"Content-Type": FHIR_JSON})
    await assert_handled(res, bundle[:500])


FHIRPATH_OPERATION = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["add", "insert", "delete", "replace", "move", "nope", ""]),
        "path": st.sampled_from(["Patient", "Patient.name", "Patient.name[0]", "Patient.name.where(", "Patient.active",
                                 "Patient.birthDate", "Patient.name[99]", "", "%x", "Patient.extension"]),
    },
    optional={
        "name": st.sampled_from(["active", "given", "extension", "nope", ""]),
        "value": st.one_of(JSON_TEXT, RAW_NUMBER),
        "index": st.one_of(st.integers(-5, 5), RAW_NUMBER),
    },
)  # fmt: skip


def _parameters(operations: list[dict[str, str]]) -> str:
    parts = []
    for operation in operations:
        inner = []
        for name, value in operation.items():
            if name == "value":
                inner.append(f'{{"name":"value","valueString":{value}}}')
            elif name == "index":
                inner.append(f'{{"name":"index","valueInteger":{value}}}')
            else:
                inner.append(f'{{"name":"{name}","valueString":{json.dumps(value)}}}')
        parts.append(f'{{"name":"operation","part":[{",".join(inner)}]}}')
    return f'{{"resourceType":"Parameters","parameter":[{",".join(parts)}]}}'


@FUZZ
@given(operations=st.lists(FHIRPATH_OPERATION, min_size=1, max_size=3))
async def test_fhirpath_patches_never_cause_5xx(client, fuzz_patient, operations):
    body = _parameters(operations)
    res = await client.patch(f"/Patient/{fuzz_patient}", content=body.encode(), headers={"Content-Type": FHIR_JSON})
    await assert_handled(res, body[:500])
