"""Search parameter types, as http://hl7.org/fhir/R4/search.html specifies them.

One behaviour per test, each on its own uuid-named data; where R4 leaves room, HAPI
FHIR's behaviour is the reference.
"""

from __future__ import annotations

import pytest

from .searching import create, ids_of, unique

UCUM = "http://unitsofmeasure.org"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"


def dated(value: str, matches: bool):
    """A (value, matches) case of a date search."""
    return pytest.param(value, matches, id=f"{value}-{matches}")


def patient(**fields: object) -> dict:
    return {"resourceType": "Patient", **fields}


def observation(code: dict | str, **fields: object) -> dict:
    concept = {"coding": [{"system": "http://example.org/codes", "code": code}]} if isinstance(code, str) else code
    return {"resourceType": "Observation", "status": "final", "code": concept, **fields}


def encounter(ident: str, **fields: object) -> dict:
    return {
        "resourceType": "Encounter",
        "status": "finished",
        "class": {"system": ACT_CODE, "code": "AMB"},
        "identifier": [{"system": "http://example.org/encounters", "value": ident}],
        **fields,
    }


# -- string --------------------------------------------------------------------------


async def test_string_matches_values_that_start_with_the_search_value(client):
    u = unique()
    zoey = await create(client, patient(name=[{"family": f"{u}Zoey"}]))
    await create(client, patient(name=[{"family": f"{u}Zach"}]))
    await create(client, patient(name=[{"family": f"x{u}Zoey"}]))
    assert await ids_of(client, "/Patient", [("family", f"{u}Zo")]) == {zoey["id"]}


async def test_string_search_ignores_case(client):
    u = unique()
    zoey = await create(client, patient(name=[{"family": f"{u}Zoey"}]))
    assert await ids_of(client, "/Patient", [("name", f"{u.upper()}ZO")]) == {zoey["id"]}


async def test_string_search_ignores_accents_in_the_search_value(client):
    u = unique()
    zoe = await create(client, patient(name=[{"given": [f"{u}Zoe"]}]))
    assert await ids_of(client, "/Patient", [("name", f"{u}zoë")]) == {zoe["id"]}


async def test_string_search_ignores_accents_in_the_stored_value(client):
    u = unique()
    zoe = await create(client, patient(name=[{"given": [f"{u}Zoë"]}]))
    assert await ids_of(client, "/Patient", [("name", f"{u}ZOE")]) == {zoe["id"]}


async def test_string_exact_matches_the_whole_value_case_and_accent_sensitively(client):
    u = unique()
    exact = await create(client, patient(name=[{"family": f"{u}Zoe"}]))
    await create(client, patient(name=[{"family": f"{u}Zoey"}]))
    await create(client, patient(name=[{"family": f"{u}ZOE"}]))
    await create(client, patient(name=[{"family": f"{u}Zoë"}]))
    assert await ids_of(client, "/Patient", [("family:exact", f"{u}Zoe")]) == {exact["id"]}


async def test_string_contains_matches_anywhere_in_the_value(client):
    u = unique()
    inside = await create(client, patient(name=[{"family": f"Ma{u}rianne"}]))
    start = await create(client, patient(name=[{"family": f"{u}Rian"}]))
    await create(client, patient(name=[{"family": f"{u}Ria"}]))
    found = await ids_of(client, "/Patient", [("family:contains", f"{u.upper()}RIAN")])
    assert found == {inside["id"], start["id"]}


async def test_string_family_and_given_match_only_their_part_of_a_human_name(client):
    u = unique()
    family = await create(client, patient(name=[{"family": f"{u}John", "given": ["Anne"]}]))
    given = await create(client, patient(name=[{"family": "Smith", "given": ["Ray", f"{u}John"]}]))
    assert await ids_of(client, "/Patient", [("family", f"{u}john")]) == {family["id"]}
    assert await ids_of(client, "/Patient", [("given", f"{u}john")]) == {given["id"]}


async def test_string_name_matches_any_part_of_a_human_name(client):
    u = unique()
    family = await create(client, patient(name=[{"family": f"{u}Lee"}]))
    given = await create(client, patient(name=[{"given": [f"{u}Lee"]}]))
    text = await create(client, patient(name=[{"text": f"{u}Lee Smith"}]))
    prefix = await create(client, patient(name=[{"family": "Kim", "prefix": [f"{u}Lee"]}]))
    found = await ids_of(client, "/Patient", [("name", f"{u}lee")])
    assert found == {family["id"], given["id"], text["id"], prefix["id"]}


async def test_string_address_city_matches_only_the_city(client):
    u = unique()
    city = await create(client, patient(address=[{"city": f"{u}Springfield"}]))
    await create(client, patient(address=[{"line": [f"{u}Springfield Road 1"], "city": "Shelbyville"}]))
    assert await ids_of(client, "/Patient", [("address-city", f"{u}spring")]) == {city["id"]}


async def test_string_address_matches_any_part_of_an_address(client):
    u = unique()
    city = await create(client, patient(address=[{"city": f"{u}Springfield"}]))
    line = await create(client, patient(address=[{"line": [f"{u}Springfield Road 1"], "city": "Shelbyville"}]))
    state = await create(client, patient(address=[{"state": f"{u}Springs"}]))
    await create(client, patient(address=[{"city": f"{u}Shelbyville"}]))
    found = await ids_of(client, "/Patient", [("address", f"{u}spring")])
    assert found == {city["id"], line["id"], state["id"]}


# -- token ---------------------------------------------------------------------------


async def test_token_code_alone_matches_the_code_in_any_system(client):
    code = unique()
    loinc = await create(client, observation({"coding": [{"system": "http://loinc.org", "code": code}]}))
    snomed = await create(client, observation({"coding": [{"system": "http://snomed.info/sct", "code": code}]}))
    bare = await create(client, observation({"coding": [{"code": code}]}))
    assert await ids_of(client, "/Observation", [("code", code)]) == {loinc["id"], snomed["id"], bare["id"]}


async def test_token_system_and_code_match_only_that_system(client):
    code = unique()
    loinc = await create(client, observation({"coding": [{"system": "http://loinc.org", "code": code}]}))
    await create(client, observation({"coding": [{"system": "http://snomed.info/sct", "code": code}]}))
    await create(client, observation({"coding": [{"code": code}]}))
    assert await ids_of(client, "/Observation", [("code", f"http://loinc.org|{code}")]) == {loinc["id"]}


async def test_token_empty_system_matches_only_codes_without_a_system(client):
    code = unique()
    await create(client, observation({"coding": [{"system": "http://loinc.org", "code": code}]}))
    bare = await create(client, observation({"coding": [{"code": code}]}))
    assert await ids_of(client, "/Observation", [("code", f"|{code}")]) == {bare["id"]}


async def test_token_system_with_empty_code_matches_any_code_in_that_system(client):
    system = f"http://example.org/{unique()}"
    a = await create(client, observation({"coding": [{"system": system, "code": "a"}]}))
    b = await create(client, observation({"coding": [{"system": system, "code": "b"}]}))
    await create(client, observation({"coding": [{"system": system + "x", "code": "a"}]}))
    assert await ids_of(client, "/Observation", [("code", f"{system}|")]) == {a["id"], b["id"]}


async def test_token_not_excludes_matches_and_includes_resources_without_a_value(client):
    u = unique()
    await create(client, patient(name=[{"family": u}], gender="male"))
    female = await create(client, patient(name=[{"family": u}], gender="female"))
    unknown = await create(client, patient(name=[{"family": u}]))
    found = await ids_of(client, "/Patient", [("family", u), ("gender:not", "male")])
    assert found == {female["id"], unknown["id"]}


async def test_token_text_matches_the_start_of_the_codeable_concept_text(client):
    u = unique()
    concept = {"coding": [{"system": "http://loinc.org", "code": "2339-0"}], "text": f"{u} Blood Glucose"}
    glucose = await create(client, observation(concept))
    await create(client, observation({"coding": [{"system": "http://loinc.org", "code": "2339-0"}], "text": "Other"}))
    assert await ids_of(client, "/Observation", [("code:text", f"{u} BLOOD")]) == {glucose["id"]}


async def test_token_text_matches_the_start_of_a_coding_display(client):
    u = unique()
    concept = {"coding": [{"system": "http://loinc.org", "code": "718-7", "display": f"{u}Hemoglobin"}]}
    hemoglobin = await create(client, observation(concept))
    assert await ids_of(client, "/Observation", [("code:text", f"{u}hemo")]) == {hemoglobin["id"]}


async def test_token_of_type_matches_identifier_type_and_value(client):
    u = unique()
    mr = {"coding": [{"system": V2_0203, "code": "MR"}]}
    record = await create(client, patient(identifier=[{"type": mr, "system": "http://example.org/mrn", "value": u}]))
    ss = {"coding": [{"system": V2_0203, "code": "SS"}]}
    await create(client, patient(identifier=[{"type": ss, "system": "http://example.org/ssn", "value": u}]))
    found = await ids_of(client, "/Patient", [("identifier:of-type", f"{V2_0203}|MR|{u}")])
    assert found == {record["id"]}


async def test_token_identifier_matches_system_and_value(client):
    u = unique()
    mrn = await create(client, patient(identifier=[{"system": "http://example.org/mrn", "value": u}]))
    ssn = await create(client, patient(identifier=[{"system": "http://example.org/ssn", "value": u}]))
    assert await ids_of(client, "/Patient", [("identifier", f"http://example.org/mrn|{u}")]) == {mrn["id"]}
    assert await ids_of(client, "/Patient", [("identifier", u)]) == {mrn["id"], ssn["id"]}


async def test_token_boolean_matches_true_and_false(client):
    u = unique()
    active = await create(client, patient(name=[{"family": u}], active=True))
    inactive = await create(client, patient(name=[{"family": u}], active=False))
    await create(client, patient(name=[{"family": u}]))
    assert await ids_of(client, "/Patient", [("family", u), ("active", "true")]) == {active["id"]}
    assert await ids_of(client, "/Patient", [("family", u), ("active", "false")]) == {inactive["id"]}


@pytest.mark.parametrize(
    "value,matches",
    [
        ("male", True),
        ("http://hl7.org/fhir/administrative-gender|male", True),
        ("http://hl7.org/fhir/administrative-gender|", True),
        ("http://example.org/other-genders|male", False),
        ("|male", False),
        ("female", False),
    ],
)
async def test_token_bound_code_carries_the_system_of_its_required_binding(client, value, matches):
    u = unique()
    male = await create(client, patient(name=[{"family": u}], gender="male"))
    found = await ids_of(client, "/Patient", [("family", u), ("gender", value)])
    assert found == ({male["id"]} if matches else set())


# -- date ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value,matches",
    [
        dated("1974", True),
        dated("1974-12", True),
        dated("1974-12-25", True),
        dated("1975", False),
        dated("1974-11", False),
        dated("1974-12-24", False),
        dated("1974-12-26", False),
    ],
)
async def test_date_search_value_covers_the_range_its_precision_implies(client, value, matches):
    u = unique()
    born = await create(client, patient(name=[{"family": u}], birthDate="1974-12-25"))
    found = await ids_of(client, "/Patient", [("family", u), ("birthdate", value)])
    assert found == ({born["id"]} if matches else set())


@pytest.mark.parametrize(
    "value,matches",
    [
        dated("eq1974-12-25", True),
        dated("eq1974-12", True),
        dated("eq1974-12-25T12:00:00Z", False),
        dated("ne1974-12-25", False),
        dated("ne1974-12-24", True),
        dated("gt1974-12-24", True),
        dated("gt1974-12-25", False),
        dated("gt1974-12-25T12:00:00Z", True),
        dated("lt1974-12-26", True),
        dated("lt1974-12-25", False),
        dated("ge1974-12-25", True),
        dated("ge1974-12-26", False),
        dated("le1974-12-25", True),
        dated("le1974-12-24", False),
        dated("sa1974-12-24", True),
        dated("sa1974-12-25", False),
        dated("sa1974-12-25T12:00:00Z", False),
        dated("eb1974-12-26", True),
        dated("eb1974-12-25", False),
        dated("ap1974-12-25", True),
        dated("ap1974-12-20", True),
        dated("ap2015", False),
    ],
)
async def test_date_prefix_on_a_date(client, value, matches):
    u = unique()
    born = await create(client, patient(name=[{"family": u}], birthDate="1974-12-25"))
    found = await ids_of(client, "/Patient", [("family", u), ("birthdate", value)])
    assert found == ({born["id"]} if matches else set())


@pytest.mark.parametrize(
    "value,matches",
    [
        dated("2020", True),
        dated("2020-01", True),
        dated("2020-01-15", False),  # eq: the search range must contain the whole period
        dated("ne2020-01-15", True),
        dated("ne2020-01", False),
        dated("gt2020-01-15", True),
        dated("gt2020-01-31", False),
        dated("lt2020-01-15", True),
        dated("lt2020-01-01", False),
        dated("ge2020-01-15", True),
        dated("ge2020-02-01", False),
        dated("le2020-01-15", True),
        dated("le2019-12-31", False),
        dated("sa2019-12-31", True),
        dated("sa2020-01-15", False),
        dated("eb2020-02-01", True),
        dated("eb2020-01-15", False),
        dated("ap2020-01-15", True),
    ],
)
async def test_date_prefix_on_a_period(client, value, matches):
    u = unique()
    visit = await create(client, encounter(u, period={"start": "2020-01-01", "end": "2020-01-31"}))
    found = await ids_of(client, "/Encounter", [("identifier", u), ("date", value)])
    assert found == ({visit["id"]} if matches else set())


@pytest.mark.parametrize(
    "value,matches",
    [
        dated("gt2030", True),
        dated("ge2030-06-01", True),
        dated("sa2019", True),
        dated("lt2019", False),
        dated("eb2030", False),
        dated("2020", False),  # an open end is not contained in any search range
        dated("ne2020", True),
    ],
)
async def test_date_period_without_end_is_open_towards_the_future(client, value, matches):
    u = unique()
    visit = await create(client, encounter(u, status="in-progress", period={"start": "2020-01-01"}))
    found = await ids_of(client, "/Encounter", [("identifier", u), ("date", value)])
    assert found == ({visit["id"]} if matches else set())


@pytest.mark.parametrize(
    "value,matches",
    [
        dated("lt1900", True),
        dated("eb2021", True),
        dated("gt2021", False),
        dated("sa1900", False),
    ],
)
async def test_date_period_without_start_is_open_towards_the_past(client, value, matches):
    u = unique()
    visit = await create(client, encounter(u, period={"end": "2020-01-31"}))
    found = await ids_of(client, "/Encounter", [("identifier", u), ("date", value)])
    assert found == ({visit["id"]} if matches else set())


@pytest.mark.parametrize(
    "value,matches",
    [
        dated("2020-01-01T10:00:00+02:00", True),
        dated("2020-01-01T08:00:00Z", True),
        dated("2020-01-01T03:00:00-05:00", True),
        dated("2020-01-01T10:00:00Z", False),
        dated("gt2020-01-01T09:00:00Z", False),
        dated("lt2020-01-01T09:00:00Z", True),
        dated("ge2020-01-01T08:00:00+00:00", True),
        dated("eb2020-01-01T09:30:00+01:00", True),
        dated("sa2020-01-01T08:30:00+01:00", True),
    ],
)
async def test_date_time_with_zone_compares_as_the_same_instant(client, value, matches):
    code = unique()
    seen = await create(client, observation(code, effectiveDateTime="2020-01-01T10:00:00+02:00"))
    found = await ids_of(client, "/Observation", [("code", code), ("date", value)])
    assert found == ({seen["id"]} if matches else set())


async def test_last_updated_with_ge_and_le(client):
    u = unique()
    first = await create(client, patient(name=[{"family": u}]))
    second = await create(client, patient(name=[{"family": u}]))
    first_at, second_at = first["meta"]["lastUpdated"], second["meta"]["lastUpdated"]
    assert first_at < second_at
    assert await ids_of(client, "/Patient", [("family", u), ("_lastUpdated", f"ge{second_at}")]) == {second["id"]}
    assert await ids_of(client, "/Patient", [("family", u), ("_lastUpdated", f"le{first_at}")]) == {first["id"]}
    both = await ids_of(client, "/Patient", [("family", u), ("_lastUpdated", f"ge{first_at}")])
    assert both == {first["id"], second["id"]}


async def test_last_updated_with_gt_and_lt(client):
    u = unique()
    first = await create(client, patient(name=[{"family": u}]))
    second = await create(client, patient(name=[{"family": u}]))
    first_at, second_at = first["meta"]["lastUpdated"], second["meta"]["lastUpdated"]
    assert await ids_of(client, "/Patient", [("family", u), ("_lastUpdated", f"gt{first_at}")]) == {second["id"]}
    assert await ids_of(client, "/Patient", [("family", u), ("_lastUpdated", f"lt{second_at}")]) == {first["id"]}
    assert await ids_of(client, "/Patient", [("family", u), ("_lastUpdated", f"gt{second_at}")]) == set()


async def test_last_updated_at_day_precision_covers_the_whole_day(client):
    u = unique()
    made = await create(client, patient(name=[{"family": u}]))
    day = made["meta"]["lastUpdated"][:10]
    assert await ids_of(client, "/Patient", [("family", u), ("_lastUpdated", day)]) == {made["id"]}
    assert await ids_of(client, "/Patient", [("family", u), ("_lastUpdated", "le2000-01-01")]) == set()


async def test_date_on_the_last_day_of_the_calendar_is_indexed_and_searchable(client):
    u = unique()
    res = await client.post(
        "/Patient",
        json={"resourceType": "Patient", "name": [{"family": u}], "birthDate": "9999-12-31"},
        headers={"Content-Type": "application/fhir+json"},
    )
    assert res.status_code == 201, res.text
    assert await ids_of(client, "/Patient", [("family", u), ("birthdate", "9999-12-31")]) == {res.json()["id"]}


async def test_date_search_value_on_the_last_day_of_the_calendar(client):
    u = unique()
    made = await create(client, patient(name=[{"family": u}]))
    found = await ids_of(client, "/Patient", [("family", u), ("_lastUpdated", "le9999-12-31T23:59:59Z")])
    assert found == {made["id"]}


# -- number --------------------------------------------------------------------------


async def _risks(client, values: list[str]) -> tuple[str, dict[str, str]]:
    """A fresh Patient and one RiskAssessment per probability; returns (patient id, value -> id)."""
    subject = await create(client, patient(name=[{"family": unique()}]))
    made = {}
    for value in values:
        body = (
            '{"resourceType": "RiskAssessment", "status": "final",'
            f' "subject": {{"reference": "Patient/{subject["id"]}"}},'
            f' "prediction": [{{"probabilityDecimal": {value}}}]}}'
        )
        res = await client.post(
            "/RiskAssessment", content=body.encode(), headers={"Content-Type": "application/fhir+json"}
        )
        assert res.status_code == 201, res.text
        made[value] = res.json()["id"]
    return subject["id"], made


_PROBABILITIES = ["80", "99.4", "99.5", "99.96", "100"]


@pytest.mark.parametrize(
    "value,expected",
    [
        ("100", {"99.5", "99.96", "100"}),  # 3 significant figures: [99.5, 100.5)
        ("100.0", {"99.96", "100"}),  # [99.95, 100.05)
        ("100.00", {"100"}),  # [99.995, 100.005)
        ("99.5", {"99.5"}),
        ("gt99.5", {"99.96", "100"}),
        ("ge99.5", {"99.5", "99.96", "100"}),
        ("lt99.5", {"80", "99.4"}),
        ("le99.5", {"80", "99.4", "99.5"}),
        ("ne100", {"80", "99.4"}),
        ("ap100", {"99.4", "99.5", "99.96", "100"}),  # within 10%
    ],
)
async def test_number_prefixes_and_implicit_precision(client, value, expected):
    subject, made = await _risks(client, _PROBABILITIES)
    found = await ids_of(client, "/RiskAssessment", [("subject", f"Patient/{subject}"), ("probability", value)])
    assert found == {made[v] for v in expected}


# -- quantity ------------------------------------------------------------------------


def _quantity(code: str, value: float, unit: str, system: str | None = UCUM, ucum: str | None = None) -> dict:
    quantity: dict = {"value": value, "unit": unit}
    if system is not None:
        quantity["system"] = system
        quantity["code"] = ucum or unit
    return observation(code, valueQuantity=quantity)


@pytest.mark.parametrize(
    "value,matches",
    [
        (f"5.4|{UCUM}|mg", True),
        ("5.4||mg", True),
        ("5.4", True),
        ("ge5.4||mg", True),
        ("gt5.4||mg", False),
        ("lt6||mg", True),
        ("le5||mg", False),
        (f"5.4|{UCUM}|g", False),
        ("5.4||kg", False),
        ("5.4|http://example.org/other-units|mg", False),
        ("5.5||mg", False),
        ("ne5.4||mg", False),
        ("ne5.0||mg", True),
        ("ap5||mg", True),
        ("ap4||mg", False),
    ],
)
async def test_quantity_value_system_and_code(client, value, matches):
    code = unique()
    made = await create(client, _quantity(code, 5.4, "mg"))
    found = await ids_of(client, "/Observation", [("code", code), ("value-quantity", value)])
    assert found == ({made["id"]} if matches else set())


async def test_quantity_unit_without_code_matches_the_unit_text(client):
    code = unique()
    made = await create(client, _quantity(code, 5.4, "mg", system=None))
    assert await ids_of(client, "/Observation", [("code", code), ("value-quantity", "5.4||mg")]) == {made["id"]}


@pytest.mark.parametrize(
    "value,matches",
    [
        (f"5.4|{UCUM}|mg", True),
        (f"gt5|{UCUM}|mg", True),
        (f"lt5|{UCUM}|mg", False),
        (f"5400|{UCUM}|ug", True),
        (f"0.0054|{UCUM}|g", True),
        (f"5.4|{UCUM}|mL", False),  # another dimension
    ],
)
async def test_quantity_ucum_units_compare_in_canonical_form(client, value, matches):
    code = unique()
    made = await create(client, _quantity(code, 0.0054, "g"))
    found = await ids_of(client, "/Observation", [("code", code), ("value-quantity", value)])
    assert found == ({made["id"]} if matches else set())


# -- reference -----------------------------------------------------------------------


async def test_reference_forms_type_id_id_typed_and_absolute(client):
    code = unique()
    target = await create(client, patient(name=[{"family": code}]))
    pid = target["id"]
    to_patient = await create(client, observation(code, subject={"reference": f"Patient/{pid}"}))
    to_group = await create(client, observation(code, subject={"reference": f"Group/{pid}"}))
    await create(client, observation(code, subject={"reference": f"Patient/{unique()}"}))
    scope = [("code", code)]
    assert await ids_of(client, "/Observation", [*scope, ("subject", f"Patient/{pid}")]) == {to_patient["id"]}
    assert await ids_of(client, "/Observation", [*scope, ("subject:Patient", pid)]) == {to_patient["id"]}
    assert await ids_of(client, "/Observation", [*scope, ("subject", pid)]) == {to_patient["id"], to_group["id"]}
    absolute = f"http://testserver/fhir/Patient/{pid}"
    assert await ids_of(client, "/Observation", [*scope, ("subject", absolute)]) == {to_patient["id"]}


async def test_reference_stored_as_absolute_url_of_this_server_matches_a_relative_search(client):
    code = unique()
    pid = (await create(client, patient(name=[{"family": code}])))["id"]
    made = await create(client, observation(code, subject={"reference": f"http://testserver/fhir/Patient/{pid}"}))
    assert await ids_of(client, "/Observation", [("code", code), ("subject", f"Patient/{pid}")]) == {made["id"]}


async def test_reference_identifier_matches_logical_references(client):
    code = unique()
    logical = {"identifier": {"system": "http://example.org/mrn", "value": code}}
    made = await create(client, observation(code, subject=logical))
    other = {"identifier": {"system": "http://example.org/other", "value": code}}
    await create(client, observation(code, subject=other))
    found = await ids_of(client, "/Observation", [("subject:identifier", f"http://example.org/mrn|{code}")])
    assert found == {made["id"]}


async def test_reference_missing(client):
    code = unique()
    pid = (await create(client, patient(name=[{"family": code}])))["id"]
    with_subject = await create(client, observation(code, subject={"reference": f"Patient/{pid}"}))
    without = await create(client, observation(code))
    assert await ids_of(client, "/Observation", [("code", code), ("subject:missing", "true")]) == {without["id"]}
    assert await ids_of(client, "/Observation", [("code", code), ("subject:missing", "false")]) == {with_subject["id"]}


# -- uri -----------------------------------------------------------------------------


async def _value_sets(client, base: str, paths: list[str]) -> dict[str, str]:
    made = {}
    for path in paths:
        vs = await create(client, {"resourceType": "ValueSet", "status": "active", "url": base + path})
        made[path] = vs["id"]
    return made


async def test_uri_matches_exactly(client):
    base = f"http://example.org/{unique()}"
    made = await _value_sets(client, base, ["/ValueSet/abc", "/ValueSet/abcd", "/ValueSet/abc/x"])
    assert await ids_of(client, "/ValueSet", [("url", base + "/ValueSet/abc")]) == {made["/ValueSet/abc"]}


async def test_uri_is_case_sensitive(client):
    base = f"http://example.org/{unique()}"
    await _value_sets(client, base, ["/ValueSet/abc"])
    assert await ids_of(client, "/ValueSet", [("url", base + "/VALUESET/ABC")]) == set()


async def test_uri_below_matches_uris_that_start_with_the_value(client):
    base = f"http://example.org/{unique()}"
    made = await _value_sets(client, base, ["/fhir/ValueSet/a", "/fhir/ValueSet/b", "/other/ValueSet/c"])
    found = await ids_of(client, "/ValueSet", [("url:below", base + "/fhir/")])
    assert found == {made["/fhir/ValueSet/a"], made["/fhir/ValueSet/b"]}


async def test_uri_above_matches_uris_the_value_starts_with(client):
    base = f"http://example.org/{unique()}"
    made = await _value_sets(client, base, ["/fhir/ValueSet/a", "/fhir/ValueSet/ab", "/fhir/ValueSet/b"])
    found = await ids_of(client, "/ValueSet", [("url:above", base + "/fhir/ValueSet/a/_history/5")])
    assert found == {made["/fhir/ValueSet/a"]}


async def test_uri_on_code_system_url(client):
    url = f"http://example.org/{unique()}/CodeSystem/x"
    made = await create(
        client, {"resourceType": "CodeSystem", "status": "active", "content": "not-present", "url": url}
    )
    assert await ids_of(client, "/CodeSystem", [("url", url)]) == {made["id"]}


# -- composite -----------------------------------------------------------------------


def _blood_pressure(system: str) -> dict:
    return observation(
        {"coding": [{"system": system, "code": "panel"}]},
        component=[
            {
                "code": {"coding": [{"system": system, "code": "systolic"}]},
                "valueQuantity": {"value": 120, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"},
            },
            {
                "code": {"coding": [{"system": system, "code": "diastolic"}]},
                "valueQuantity": {"value": 80, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"},
            },
        ],
    )


async def _composite_data(client) -> tuple[str, dict[str, str]]:
    system = f"http://example.org/{unique()}"

    def coded(code: str, value: int) -> dict:
        quantity = {"value": value, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"}
        return observation({"coding": [{"system": system, "code": code}]}, valueQuantity=quantity)

    made = {
        "bp120": (await create(client, coded("bp", 120)))["id"],
        "bp90": (await create(client, coded("bp", 90)))["id"],
        "other150": (await create(client, coded("other", 150)))["id"],
        "panel": (await create(client, _blood_pressure(system)))["id"],
    }
    return system, made


async def test_composite_code_value_quantity_pairs_code_and_value(client):
    system, made = await _composite_data(client)
    assert await ids_of(client, "/Observation", [("code-value-quantity", f"{system}|bp$gt100")]) == {made["bp120"]}
    full = f"{system}|bp$120|{UCUM}|mm[Hg]"
    assert await ids_of(client, "/Observation", [("code-value-quantity", full)]) == {made["bp120"]}


async def test_composite_component_code_value_quantity_matches_within_one_component(client):
    system, made = await _composite_data(client)
    param = "component-code-value-quantity"
    assert await ids_of(client, "/Observation", [(param, f"{system}|systolic$gt100")]) == {made["panel"]}
    assert await ids_of(client, "/Observation", [(param, f"{system}|diastolic$lt100")]) == {made["panel"]}
    # 80 < 100 belongs to the diastolic component, not to the systolic one
    assert await ids_of(client, "/Observation", [(param, f"{system}|systolic$lt100")]) == set()


async def test_composite_combo_code_value_quantity_matches_observation_or_component(client):
    system, made = await _composite_data(client)
    param = "combo-code-value-quantity"
    assert await ids_of(client, "/Observation", [(param, f"{system}|bp$gt100")]) == {made["bp120"]}
    assert await ids_of(client, "/Observation", [(param, f"{system}|systolic$gt100")]) == {made["panel"]}
    assert await ids_of(client, "/Observation", [(param, f"{system}|other$gt100")]) == {made["other150"]}


async def test_composite_or_values_are_alternatives(client):
    system, made = await _composite_data(client)
    value = f"{system}|bp$lt100,{system}|other$gt100"
    assert await ids_of(client, "/Observation", [("code-value-quantity", value)]) == {made["bp90"], made["other150"]}


async def test_composite_code_value_concept_pairs_two_tokens(client):
    system = f"http://example.org/{unique()}"

    def coded(code: str, answer: str) -> dict:
        value = {"coding": [{"system": system, "code": answer}]}
        return observation({"coding": [{"system": system, "code": code}]}, valueCodeableConcept=value)

    positive = await create(client, coded("test", "positive"))
    await create(client, coded("test", "negative"))
    await create(client, coded("other", "positive"))
    value = f"{system}|test${system}|positive"
    assert await ids_of(client, "/Observation", [("code-value-concept", value)]) == {positive["id"]}


# -- :missing ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "param",
    ["given", "gender", "birthdate", "general-practitioner", "identifier", "address-city", "telecom"],
)
async def test_missing_true_and_false_on_patient_parameters(client, param):
    u = unique()
    full = await create(
        client,
        patient(
            name=[{"family": u, "given": ["Ann"]}],
            gender="female",
            birthDate="1980-05-01",
            generalPractitioner=[{"reference": f"Practitioner/{unique()}"}],
            identifier=[{"system": "http://example.org/mrn", "value": u}],
            address=[{"city": "Leeds"}],
            telecom=[{"system": "phone", "value": "555"}],
        ),
    )
    bare = await create(client, patient(name=[{"family": u}]))
    assert await ids_of(client, "/Patient", [("family", u), (f"{param}:missing", "true")]) == {bare["id"]}
    assert await ids_of(client, "/Patient", [("family", u), (f"{param}:missing", "false")]) == {full["id"]}


@pytest.mark.parametrize("param", ["value-quantity", "date", "performer", "value-concept"])
async def test_missing_true_and_false_on_observation_parameters(client, param):
    code = unique()
    full = await create(
        client,
        observation(
            code,
            effectiveDateTime="2021-02-03",
            performer=[{"reference": f"Practitioner/{unique()}"}],
            valueQuantity={"value": 1, "unit": "mg", "system": UCUM, "code": "mg"},
        ),
    )
    concept = await create(client, observation(code, valueCodeableConcept={"text": "positive"}))
    bare = await create(client, observation(code))
    missing = await ids_of(client, "/Observation", [("code", code), (f"{param}:missing", "true")])
    present = await ids_of(client, "/Observation", [("code", code), (f"{param}:missing", "false")])
    expected_present = {concept["id"]} if param == "value-concept" else {full["id"]}
    assert present == expected_present
    assert missing == {full["id"], concept["id"], bare["id"]} - expected_present
