"""Search features across parameter types, as http://hl7.org/fhir/R4/search.html specifies.

AND/OR and escaping, chains and `_has`, includes, sorting, paging, totals and
summaries, full text, lists and meta parameters, POST search, system and compartment
search, `$everything`, lenient/strict handling and hostile input. One behaviour per
test, each on its own uuid-named data; HAPI FHIR is the reference where R4 leaves room.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from headless_ehr.auth.principal import Principal

from .searching import (
    FHIR_JSON,
    create,
    delete,
    entries,
    ids_of,
    include_keys,
    key,
    link,
    match_ids,
    match_keys,
    search,
    unique,
)

ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"


def patient(family: str, **fields: object) -> dict:
    return {"resourceType": "Patient", "name": [{"family": family}], **fields}


def observation(code: str, **fields: object) -> dict:
    concept = {"coding": [{"system": "http://example.org/codes", "code": code}]}
    return {"resourceType": "Observation", "status": "final", "code": concept, **fields}


def ref(resource: dict) -> dict:
    return {"reference": f"{resource['resourceType']}/{resource['id']}"}


async def get_url(client: httpx.AsyncClient, url: str) -> dict:
    """Follow an absolute link the server handed out."""
    res = await client.get(url)
    assert res.status_code == 200, res.text
    return res.json()


# -- current versions only ----------------------------------------------------------


async def test_search_sees_only_the_current_version(client):
    old, new = unique(), unique()
    made = await create(client, patient(old))
    res = await client.put(
        f"/Patient/{made['id']}", json={**made, "name": [{"family": new}]}, headers={"Content-Type": FHIR_JSON}
    )
    assert res.status_code == 200, res.text
    assert await ids_of(client, "/Patient", [("family", old)]) == set()
    assert await ids_of(client, "/Patient", [("family", new)]) == {made["id"]}


async def test_deleted_resources_are_not_found(client):
    u = unique()
    kept = await create(client, patient(u))
    gone = await create(client, patient(u))
    await delete(client, gone)
    assert await ids_of(client, "/Patient", [("family", u)]) == {kept["id"]}


async def test_deleted_resources_are_not_included_nor_chained_to(client):
    code = unique()
    gone = await create(client, patient(code))
    obs = await create(client, observation(code, subject=ref(gone)))
    await delete(client, gone)
    bundle = await search(client, "/Observation", [("code", code), ("_include", "Observation:subject")])
    assert match_keys(bundle) == {key(obs)} and include_keys(bundle) == set()
    assert await ids_of(client, "/Observation", [("subject:Patient.name", code)]) == set()


async def test_deleted_resources_do_not_satisfy_has(client):
    code = unique()
    pat = await create(client, patient(unique()))
    obs = await create(client, observation(code, subject=ref(pat)))
    await delete(client, obs)
    assert await ids_of(client, "/Patient", [("_has:Observation:patient:code", code)]) == set()


# -- AND, OR and escaping ----------------------------------------------------------


async def test_repeated_parameter_means_and(client):
    u = unique()
    both = await create(client, {"resourceType": "Patient", "name": [{"family": u, "given": ["Ann", "Beth"]}]})
    await create(client, {"resourceType": "Patient", "name": [{"family": u, "given": ["Ann"]}]})
    await create(client, {"resourceType": "Patient", "name": [{"family": u, "given": ["Beth"]}]})
    found = await ids_of(client, "/Patient", [("family", u), ("given", "ann"), ("given", "beth")])
    assert found == {both["id"]}


async def test_comma_separated_values_mean_or(client):
    u = unique()
    ann = await create(client, {"resourceType": "Patient", "name": [{"family": u, "given": ["Ann"]}]})
    beth = await create(client, {"resourceType": "Patient", "name": [{"family": u, "given": ["Beth"]}]})
    await create(client, {"resourceType": "Patient", "name": [{"family": u, "given": ["Carl"]}]})
    found = await ids_of(client, "/Patient", [("family", u), ("given", "ann,beth")])
    assert found == {ann["id"], beth["id"]}


async def test_escaped_comma_is_part_of_the_value(client):
    u = unique()
    comma = await create(client, patient(f"{u}a,b"))
    a = await create(client, patient(f"{u}a"))
    assert await ids_of(client, "/Patient", [("family:exact", f"{u}a\\,b")]) == {comma["id"]}
    assert await ids_of(client, "/Patient", [("family:exact", f"{u}a,{u}a\\,b")]) == {a["id"], comma["id"]}


async def test_escaped_pipe_is_part_of_a_token_value(client):
    u = unique()
    piped = await create(
        client, {"resourceType": "Patient", "identifier": [{"system": "http://example.org/ids", "value": f"{u}|x"}]}
    )
    found = await ids_of(client, "/Patient", [("identifier", f"http://example.org/ids|{u}\\|x")])
    assert found == {piped["id"]}


async def test_escaped_dollar_is_part_of_a_composite_component(client):
    system = f"http://example.org/{unique()}"
    quantity = {"value": 7, "unit": "mg", "system": "http://unitsofmeasure.org", "code": "mg"}
    dollar = await create(
        client,
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": system, "code": "a$b"}]},
            "valueQuantity": quantity,
        },
    )
    found = await ids_of(client, "/Observation", [("code-value-quantity", f"{system}|a\\$b$7")])
    assert found == {dollar["id"]}


# -- chaining ------------------------------------------------------------------------


async def _chain_data(client) -> dict[str, Any]:
    u = unique()
    org = await create(client, {"resourceType": "Organization", "name": f"{u}Clinic"})
    doctor = await create(client, {"resourceType": "Practitioner", "name": [{"family": f"{u}House"}]})
    pat = await create(client, patient(f"{u}Pat", managingOrganization=ref(org), generalPractitioner=[ref(doctor)]))
    other = await create(client, patient(f"{u}Other"))
    code = unique()
    return {
        "u": u,
        "code": code,
        "patient": pat,
        "other": other,
        "obs": await create(client, observation(code, subject=ref(pat))),
        "other_obs": await create(client, observation(code, subject=ref(other))),
    }


async def test_chain_with_explicit_target_type(client):
    d = await _chain_data(client)
    found = await ids_of(client, "/Observation", [("subject:Patient.name", f"{d['u']}pat")])
    assert found == {d["obs"]["id"]}


async def test_chain_without_target_type_searches_every_target_with_that_parameter(client):
    d = await _chain_data(client)
    found = await ids_of(client, "/Observation", [("subject.name", f"{d['u']}pat")])
    assert found == {d["obs"]["id"]}


async def test_chain_of_two_levels_through_general_practitioner(client):
    d = await _chain_data(client)
    name = f"{d['u']}house"
    found = await ids_of(client, "/Observation", [("subject:Patient.general-practitioner:Practitioner.name", name)])
    assert found == {d["obs"]["id"]}


async def test_chain_of_two_levels_through_organization(client):
    d = await _chain_data(client)
    found = await ids_of(client, "/Observation", [("patient.organization.name", f"{d['u']}clinic")])
    assert found == {d["obs"]["id"]}


async def test_chain_to_id(client):
    d = await _chain_data(client)
    found = await ids_of(client, "/Observation", [("subject:Patient._id", d["patient"]["id"])])
    assert found == {d["obs"]["id"]}


# -- reverse chaining ----------------------------------------------------------------


async def test_has_selects_resources_referred_to_by_matching_resources(client):
    code = unique()
    with_obs = await create(client, patient(unique()))
    without = await create(client, patient(unique()))
    await create(client, observation(code, subject=ref(with_obs)))
    await create(client, observation(unique(), subject=ref(without)))
    assert await ids_of(client, "/Patient", [("_has:Observation:patient:code", code)]) == {with_obs["id"]}


async def test_has_can_be_nested(client):
    report_code = unique()
    reported = await create(client, patient(unique()))
    unreported = await create(client, patient(unique()))
    result = await create(client, observation(unique(), subject=ref(reported)))
    await create(client, observation(unique(), subject=ref(unreported)))
    await create(
        client,
        {
            "resourceType": "DiagnosticReport",
            "status": "final",
            "code": {"coding": [{"system": "http://example.org/codes", "code": report_code}]},
            "result": [ref(result)],
        },
    )
    found = await ids_of(
        client, "/Patient", [("_has:Observation:patient:_has:DiagnosticReport:result:code", report_code)]
    )
    assert found == {reported["id"]}


async def test_has_with_or_values(client):
    c1, c2 = unique(), unique()
    first = await create(client, patient(unique()))
    second = await create(client, patient(unique()))
    neither = await create(client, patient(unique()))
    await create(client, observation(c1, subject=ref(first)))
    await create(client, observation(c2, subject=ref(second)))
    await create(client, observation(unique(), subject=ref(neither)))
    found = await ids_of(client, "/Patient", [("_has:Observation:patient:code", f"{c1},{c2}")])
    assert found == {first["id"], second["id"]}


async def test_chain_with_or_values(client):
    d = await _chain_data(client)
    u = d["u"]
    found = await ids_of(client, "/Observation", [("subject:Patient.name", f"{u}pat,{u}other")])
    assert found == {d["obs"]["id"], d["other_obs"]["id"]}


# -- _include and _revinclude --------------------------------------------------------


async def _include_data(client) -> dict[str, Any]:
    code = unique()
    pat = await create(client, patient(unique()))
    group = await create(client, {"resourceType": "Group", "type": "person", "actual": True})
    doctor = await create(client, {"resourceType": "Practitioner", "name": [{"family": unique()}]})
    return {
        "code": code,
        "patient": pat,
        "group": group,
        "doctor": doctor,
        "on_patient": await create(client, observation(code, subject=ref(pat), performer=[ref(doctor)])),
        "on_group": await create(client, observation(code, subject=ref(group))),
    }


async def test_include_adds_referenced_resources_in_include_mode(client):
    d = await _include_data(client)
    bundle = await search(client, "/Observation", [("code", d["code"]), ("_include", "Observation:subject")])
    assert match_keys(bundle) == {key(d["on_patient"]), key(d["on_group"])}
    assert include_keys(bundle) == {key(d["patient"]), key(d["group"])}


async def test_include_with_target_type_adds_only_that_type(client):
    d = await _include_data(client)
    params = [("code", d["code"]), ("_include", "Observation:subject:Patient")]
    bundle = await search(client, "/Observation", params)
    assert include_keys(bundle) == {key(d["patient"])}


@pytest.mark.parametrize("value", ["Observation:*", "*"])
async def test_include_star_follows_every_reference_parameter(client, value):
    d = await _include_data(client)
    bundle = await search(client, "/Observation", [("_id", d["on_patient"]["id"]), ("_include", value)])
    assert include_keys(bundle) == {key(d["patient"]), key(d["doctor"])}


async def test_revinclude_adds_resources_that_refer_to_the_matches(client):
    d = await _include_data(client)
    await create(client, observation(unique(), subject={"reference": f"Patient/{unique()}"}))
    bundle = await search(client, "/Patient", [("_id", d["patient"]["id"]), ("_revinclude", "Observation:subject")])
    assert match_keys(bundle) == {key(d["patient"])}
    assert include_keys(bundle) == {key(d["on_patient"])}


async def _medication_chain(client) -> dict[str, Any]:
    org = await create(client, {"resourceType": "Organization", "name": unique()})
    pat = await create(client, patient(unique(), managingOrganization=ref(org)))
    request = await create(
        client,
        {
            "resourceType": "MedicationRequest",
            "status": "active",
            "intent": "order",
            "medicationCodeableConcept": {"text": "aspirin"},
            "subject": ref(pat),
        },
    )
    return {"org": org, "patient": pat, "request": request}


async def test_include_iterate_follows_references_of_included_resources(client):
    d = await _medication_chain(client)
    params = [
        ("_id", d["request"]["id"]),
        ("_include", "MedicationRequest:subject"),
        ("_include:iterate", "Patient:organization"),
    ]
    bundle = await search(client, "/MedicationRequest", params)
    assert match_keys(bundle) == {key(d["request"])}
    assert include_keys(bundle) == {key(d["patient"]), key(d["org"])}


async def test_include_without_iterate_applies_only_to_the_matches(client):
    d = await _medication_chain(client)
    params = [
        ("_id", d["request"]["id"]),
        ("_include", "MedicationRequest:subject"),
        ("_include", "Patient:organization"),
    ]
    bundle = await search(client, "/MedicationRequest", params)
    assert include_keys(bundle) == {key(d["patient"])}


async def test_include_leaves_out_resources_the_caller_may_not_read(app, client):
    d = await _include_data(client)
    reader = Principal.from_scopes("observations-only", "system/Observation.rs system/*.cud")
    page = await app.state.store.search(
        reader, "Observation", [("_id", d["on_patient"]["id"]), ("_include", "Observation:*")]
    )
    assert [(e.resource_type, e.id) for e in page.entries] == [key(d["on_patient"])]
    assert page.included == []


async def test_revinclude_leaves_out_resources_the_caller_may_not_read(app, client):
    d = await _include_data(client)
    reader = Principal.from_scopes("patients-only", "system/Patient.rs system/*.cud")
    page = await app.state.store.search(
        reader, "Patient", [("_id", d["patient"]["id"]), ("_revinclude", "Observation:subject")]
    )
    assert [(e.resource_type, e.id) for e in page.entries] == [key(d["patient"])]
    assert page.included == []


# -- _sort ---------------------------------------------------------------------------


async def test_sort_on_string_ascending_and_descending(client):
    u = unique()
    b = await create(client, patient(f"{u}b"))
    a = await create(client, patient(f"{u}a"))
    c = await create(client, patient(f"{u}c"))
    up = await search(client, "/Patient", [("family", u), ("_sort", "family")])
    down = await search(client, "/Patient", [("family", u), ("_sort", "-family")])
    assert match_ids(up) == [a["id"], b["id"], c["id"]]
    assert match_ids(down) == [c["id"], b["id"], a["id"]]


async def test_sort_on_date(client):
    u = unique()
    mid = await create(client, patient(u, birthDate="1980-01-01"))
    old = await create(client, patient(u, birthDate="1950-06-01"))
    young = await create(client, patient(u, birthDate="2001-12-31"))
    up = await search(client, "/Patient", [("family", u), ("_sort", "birthdate")])
    down = await search(client, "/Patient", [("family", u), ("_sort", "-birthdate")])
    assert match_ids(up) == [old["id"], mid["id"], young["id"]]
    assert match_ids(down) == [young["id"], mid["id"], old["id"]]


async def test_sort_descending_on_observation_date(client):
    code = unique()
    first = await create(client, observation(code, effectiveDateTime="2020-01-01T08:00:00Z"))
    last = await create(client, observation(code, effectiveDateTime="2022-01-01T08:00:00Z"))
    middle = await create(client, observation(code, effectivePeriod={"start": "2021-01-01", "end": "2021-02-01"}))
    bundle = await search(client, "/Observation", [("code", code), ("_sort", "-date")])
    assert match_ids(bundle) == [last["id"], middle["id"], first["id"]]


async def test_sort_on_token(client):
    u = unique()
    male = await create(client, patient(u, gender="male"))
    other = await create(client, patient(u, gender="other"))
    female = await create(client, patient(u, gender="female"))
    bundle = await search(client, "/Patient", [("family", u), ("_sort", "gender")])
    assert match_ids(bundle) == [female["id"], male["id"], other["id"]]


async def test_sort_on_last_updated(client):
    u = unique()
    made = [await create(client, patient(u)) for _ in range(3)]
    up = await search(client, "/Patient", [("family", u), ("_sort", "_lastUpdated")])
    down = await search(client, "/Patient", [("family", u), ("_sort", "-_lastUpdated")])
    assert match_ids(up) == [m["id"] for m in made]
    assert match_ids(down) == [m["id"] for m in reversed(made)]


async def test_sort_on_id(client):
    u = unique()
    made = [(await create(client, patient(u)))["id"] for _ in range(4)]
    up = await search(client, "/Patient", [("family", u), ("_sort", "_id")])
    down = await search(client, "/Patient", [("family", u), ("_sort", "-_id")])
    assert match_ids(up) == sorted(made)
    assert match_ids(down) == sorted(made, reverse=True)


async def test_sort_on_several_keys(client):
    u = unique()
    a_old = await create(client, patient(f"{u}a", birthDate="1950-01-01"))
    b_any = await create(client, patient(f"{u}b", birthDate="1990-01-01"))
    a_young = await create(client, patient(f"{u}a", birthDate="1990-01-01"))
    bundle = await search(client, "/Patient", [("family", u), ("_sort", "family,-birthdate")])
    assert match_ids(bundle) == [a_young["id"], a_old["id"], b_any["id"]]


@pytest.mark.parametrize("order", ["birthdate", "-birthdate"])
async def test_sort_puts_resources_without_a_value_last(client, order):
    u = unique()
    missing = await create(client, patient(u))
    early = await create(client, patient(u, birthDate="1950-01-01"))
    late = await create(client, patient(u, birthDate="1990-01-01"))
    bundle = await search(client, "/Patient", [("family", u), ("_sort", order)])
    ordered = [early["id"], late["id"]] if order == "birthdate" else [late["id"], early["id"]]
    assert match_ids(bundle) == [*ordered, missing["id"]]


# -- _count and paging ---------------------------------------------------------------


async def _numbered_patients(client, count: int) -> tuple[str, list[str]]:
    """count Patients whose family names sort in creation order; returns (prefix, ids)."""
    u = unique()
    return u, [(await create(client, patient(f"{u}{i:02d}")))["id"] for i in range(count)]


async def _all_pages(client, bundle: dict) -> list[list[str]]:
    pages = [match_ids(bundle)]
    while (url := link(bundle, "next")) is not None:
        bundle = await get_url(client, url)
        pages.append(match_ids(bundle))
        assert len(pages) < 50, "paging does not end"
    return pages


async def test_next_links_visit_every_match_once_in_order(client):
    u, ids = await _numbered_patients(client, 25)
    first = await search(client, "/Patient", [("family", u), ("_sort", "family"), ("_count", "7")])
    pages = await _all_pages(client, first)
    assert [len(p) for p in pages] == [7, 7, 7, 4]
    assert [rid for page in pages for rid in page] == ids


async def test_next_links_visit_every_match_once_in_default_order(client):
    u, ids = await _numbered_patients(client, 25)
    first = await search(client, "/Patient", [("family", u), ("_count", "7")])
    seen = [rid for page in await _all_pages(client, first) for rid in page]
    assert sorted(seen) == sorted(ids) and len(seen) == len(set(seen))


async def test_previous_links_lead_back_to_the_first_page(client):
    u, _ids = await _numbered_patients(client, 25)
    bundle = await search(client, "/Patient", [("family", u), ("_sort", "family"), ("_count", "7")])
    assert link(bundle, "previous") is None
    forward = [match_ids(bundle)]
    while (url := link(bundle, "next")) is not None:
        bundle = await get_url(client, url)
        forward.append(match_ids(bundle))
    backward = [match_ids(bundle)]
    while (url := link(bundle, "previous")) is not None:
        bundle = await get_url(client, url)
        backward.append(match_ids(bundle))
        assert len(backward) < 50
    assert backward == list(reversed(forward))


async def test_page_links_stay_valid_when_resources_change_between_pages(client):
    u, ids = await _numbered_patients(client, 25)
    first = await search(client, "/Patient", [("family", u), ("_sort", "family"), ("_count", "7")])
    assert match_ids(first) == ids[:7]
    await delete(client, {"resourceType": "Patient", "id": ids[3]})  # already seen
    await delete(client, {"resourceType": "Patient", "id": ids[12]})  # not seen yet
    before = await create(client, patient(f"{u}00a"))  # sorts before the cursor
    after = await create(client, patient(f"{u}99"))  # sorts after the cursor
    rest = [rid for page in (await _all_pages(client, first))[1:] for rid in page]
    assert rest[0] == ids[7], "deleting a seen resource must not shift later pages"
    assert len(rest) == len(set(rest)) and not set(rest) & set(ids[:7])
    assert before["id"] not in rest
    expected = [rid for rid in ids[7:] if rid != ids[12]]
    assert [rid for rid in rest if rid != after["id"]] == expected


@pytest.mark.parametrize("order", ["birthdate", "-birthdate"])
async def test_paging_through_a_sort_with_missing_values_keeps_them_last(client, order):
    u = unique()
    dated = [(await create(client, patient(u, birthDate=f"19{50 + i}-01-01")))["id"] for i in range(5)]
    undated = sorted([(await create(client, patient(u)))["id"] for _ in range(4)])
    first = await search(client, "/Patient", [("family", u), ("_sort", order), ("_count", "2")])
    pages = await _all_pages(client, first)
    assert all(len(page) == 2 for page in pages[:-1])
    expected = dated if order == "birthdate" else list(reversed(dated))
    assert [rid for page in pages for rid in page] == expected + undated


async def test_previous_links_through_missing_values_lead_back_to_the_first_page(client):
    u = unique()
    for i in range(3):
        await create(client, patient(u, birthDate=f"19{60 + i}-01-01"))
    for _ in range(4):
        await create(client, patient(u))
    bundle = await search(client, "/Patient", [("family", u), ("_sort", "-birthdate"), ("_count", "2")])
    forward = [match_ids(bundle)]
    while (url := link(bundle, "next")) is not None:
        bundle = await get_url(client, url)
        forward.append(match_ids(bundle))
    backward = [match_ids(bundle)]
    while (url := link(bundle, "previous")) is not None:
        bundle = await get_url(client, url)
        backward.append(match_ids(bundle))
        assert len(backward) < 50
    assert backward == list(reversed(forward))


async def test_system_search_pages_across_types(client):
    u = unique()
    tag = {"system": "http://example.org/tags", "code": u}
    made = set()
    for i in range(4):
        made.add(key(await create(client, patient(unique(), meta={"tag": [tag]}))))
        made.add(key(await create(client, observation(unique(), meta={"tag": [tag]}))))
        if i < 2:
            made.add(
                key(await create(client, {"resourceType": "Basic", "code": {"text": "x"}, "meta": {"tag": [tag]}}))
            )
    first = await search(client, "", [("_type", "Patient,Observation,Basic"), ("_tag", u), ("_count", "3")])
    seen = []
    bundle = first
    while True:
        seen += [key(e["resource"]) for e in entries(bundle, "match")]
        url = link(bundle, "next")
        if url is None:
            break
        bundle = await get_url(client, url)
    assert len(seen) == len(made) and set(seen) == made


async def test_count_zero_returns_the_total_without_entries(client):
    u, _ids = await _numbered_patients(client, 3)
    bundle = await search(client, "/Patient", [("family", u), ("_count", "0")])
    assert bundle.get("total") == 3
    assert match_ids(bundle) == []


@pytest.fixture
async def capped_client(app_with) -> httpx.AsyncClient:
    """A second app on the same database whose largest page is 5."""
    return await app_with(max_page_size=5)


async def test_count_above_the_maximum_is_capped(client, capped_client):
    u, ids = await _numbered_patients(client, 8)
    bundle = await search(capped_client, "/Patient", [("family", u), ("_sort", "family"), ("_count", "500")])
    assert match_ids(bundle) == ids[:5]
    pages = await _all_pages(capped_client, bundle)
    assert [rid for page in pages for rid in page] == ids


# -- _total, _summary, _elements -----------------------------------------------------


async def test_total_accurate_counts_every_match_across_pages(client):
    u, _ids = await _numbered_patients(client, 5)
    bundle = await search(client, "/Patient", [("family", u), ("_count", "2"), ("_total", "accurate")])
    assert bundle["total"] == 5 and len(match_ids(bundle)) == 2


async def test_total_none_leaves_the_total_out(client):
    u, _ids = await _numbered_patients(client, 3)
    bundle = await search(client, "/Patient", [("family", u), ("_total", "none")])
    assert "total" not in bundle and len(match_ids(bundle)) == 3


async def test_total_estimate_gives_a_number(client):
    u, _ids = await _numbered_patients(client, 3)
    bundle = await search(client, "/Patient", [("family", u), ("_count", "1"), ("_total", "estimate")])
    assert isinstance(bundle.get("total"), int) and bundle["total"] >= 0


async def test_summary_count_returns_the_total_and_no_entries(client):
    u, _ids = await _numbered_patients(client, 3)
    bundle = await search(client, "/Patient", [("family", u), ("_summary", "count")])
    assert bundle["total"] == 3
    assert not bundle.get("entry")


def _narrated_patient(u: str) -> dict:
    return {
        "resourceType": "Patient",
        "text": {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">A patient</div>'},
        "name": [{"family": u}],
        "gender": "female",
        "birthDate": "1970-01-01",
        "maritalStatus": {"text": "married"},
    }


def _only_match(bundle: dict) -> dict:
    found = entries(bundle, "match")
    assert len(found) == 1
    return found[0]["resource"]


def _subsetted(resource: dict) -> bool:
    return any(t.get("code") == "SUBSETTED" for t in resource.get("meta", {}).get("tag", []))


async def test_summary_true_returns_only_summary_elements_marked_subsetted(client):
    u = unique()
    await create(client, _narrated_patient(u))
    resource = _only_match(await search(client, "/Patient", [("family", u), ("_summary", "true")]))
    assert {"name", "gender", "birthDate"} <= resource.keys()
    assert "maritalStatus" not in resource and "text" not in resource
    assert _subsetted(resource)


async def test_summary_text_returns_the_narrative_and_mandatory_elements(client):
    u = unique()
    await create(client, _narrated_patient(u))
    resource = _only_match(await search(client, "/Patient", [("family", u), ("_summary", "text")]))
    assert resource["text"]["div"].endswith("A patient</div>")
    assert resource.keys() <= {"resourceType", "id", "meta", "text"}


async def test_summary_data_removes_the_narrative(client):
    u = unique()
    await create(client, _narrated_patient(u))
    resource = _only_match(await search(client, "/Patient", [("family", u), ("_summary", "data")]))
    assert "text" not in resource
    assert {"name", "gender", "birthDate", "maritalStatus"} <= resource.keys()


async def test_elements_returns_only_the_named_elements_marked_subsetted(client):
    u = unique()
    await create(client, _narrated_patient(u))
    resource = _only_match(await search(client, "/Patient", [("family", u), ("_elements", "name,birthDate")]))
    assert resource.keys() == {"resourceType", "id", "meta", "name", "birthDate"}
    assert _subsetted(resource)


# -- _text, _content, _list ----------------------------------------------------------


async def _text_data(client) -> tuple[str, dict, dict]:
    word = unique("w")
    narrated = await create(
        client,
        {
            "resourceType": "Patient",
            "text": {
                "status": "generated",
                "div": f'<div xmlns="http://www.w3.org/1999/xhtml">Allergic to {word}</div>',
            },
        },
    )
    named = await create(client, patient(word))
    return word, narrated, named


async def test_text_searches_the_narrative_only(client):
    word, narrated, _named = await _text_data(client)
    assert await ids_of(client, "/Patient", [("_text", word)]) == {narrated["id"]}


async def test_content_searches_the_whole_resource(client):
    word, narrated, named = await _text_data(client)
    assert await ids_of(client, "/Patient", [("_content", word)]) == {narrated["id"], named["id"]}


async def test_list_selects_the_resources_in_a_list(client):
    a = await create(client, patient(unique()))
    b = await create(client, patient(unique()))
    await create(client, patient(unique()))
    listed = await create(
        client,
        {"resourceType": "List", "status": "current", "mode": "working", "entry": [{"item": ref(a)}, {"item": ref(b)}]},
    )
    assert await ids_of(client, "/Patient", [("_list", listed["id"])]) == {a["id"], b["id"]}


# -- meta parameters -----------------------------------------------------------------


async def test_tag_matches_system_and_code(client):
    code = unique()
    tagged = await create(
        client, patient(unique(), meta={"tag": [{"system": "http://example.org/tags", "code": code}]})
    )
    other = await create(
        client, patient(unique(), meta={"tag": [{"system": "http://example.org/other", "code": code}]})
    )
    assert await ids_of(client, "/Patient", [("_tag", f"http://example.org/tags|{code}")]) == {tagged["id"]}
    assert await ids_of(client, "/Patient", [("_tag", code)]) == {tagged["id"], other["id"]}


async def test_profile_matches_the_declared_profile(client):
    url = f"http://example.org/StructureDefinition/{unique()}"
    profiled = await create(client, patient(unique(), meta={"profile": [url]}))
    await create(client, patient(unique(), meta={"profile": [url + "-other"]}))
    assert await ids_of(client, "/Patient", [("_profile", url)]) == {profiled["id"]}


async def test_security_matches_security_labels(client):
    code = unique()
    label = {"system": "http://example.org/security", "code": code}
    labelled = await create(client, patient(unique(), meta={"security": [label]}))
    assert await ids_of(client, "/Patient", [("_security", f"http://example.org/security|{code}")]) == {labelled["id"]}


async def test_source_matches_meta_source(client):
    source = f"http://example.org/sources/{unique()}"
    sourced = await create(client, patient(unique(), meta={"source": source}))
    await create(client, patient(unique(), meta={"source": source + "x"}))
    assert await ids_of(client, "/Patient", [("_source", source)]) == {sourced["id"]}


# -- POST _search --------------------------------------------------------------------


async def test_post_search_with_a_form_gives_the_same_result_as_get(client):
    u = unique()
    a = await create(client, patient(u, gender="female"))
    await create(client, patient(u, gender="male"))
    got = await search(client, "/Patient", [("family", u), ("gender", "female")])
    res = await client.post("/Patient/_search", data={"family": u, "gender": "female"})
    assert res.status_code == 200, res.text
    assert match_ids(res.json()) == match_ids(got) == [a["id"]]


async def test_post_search_combines_url_and_form_parameters(client):
    u = unique()
    a = await create(client, patient(u, gender="female"))
    await create(client, patient(u, gender="male"))
    res = await client.post("/Patient/_search", params={"family": u}, data={"gender": "female"})
    assert res.status_code == 200, res.text
    assert match_ids(res.json()) == [a["id"]]


async def test_post_search_with_another_content_type_is_415(client):
    res = await client.post("/Patient/_search", json={"family": "x"}, headers={"Content-Type": FHIR_JSON})
    assert res.status_code == 415
    assert res.json()["resourceType"] == "OperationOutcome"


# -- system search -------------------------------------------------------------------


async def test_system_search_by_type_and_last_updated_gt(client):
    marker = await create(client, patient(unique()))
    pat = await create(client, patient(unique()))
    obs = await create(client, observation(unique()))
    await create(client, {"resourceType": "Basic", "code": {"text": "not asked for"}})
    since = marker["meta"]["lastUpdated"]
    bundle = await search(
        client, "", [("_type", "Patient,Observation"), ("_lastUpdated", f"gt{since}"), ("_count", "100")]
    )
    assert match_keys(bundle) == {key(pat), key(obs)}


async def test_system_search_by_type_and_last_updated_ge(client):
    pat = await create(client, patient(unique()))
    obs = await create(client, observation(unique()))
    await create(client, {"resourceType": "Basic", "code": {"text": "not asked for"}})
    since = pat["meta"]["lastUpdated"]
    bundle = await search(
        client, "", [("_type", "Patient,Observation"), ("_lastUpdated", f"ge{since}"), ("_count", "100")]
    )
    assert match_keys(bundle) == {key(pat), key(obs)}


async def test_system_search_by_type_and_id(client):
    pat = await create(client, patient(unique()))
    obs = await create(client, observation(unique()))
    basic = await create(client, {"resourceType": "Basic", "code": {"text": "x"}})
    bundle = await search(
        client, "", [("_type", "Patient,Observation"), ("_id", f"{pat['id']},{obs['id']},{basic['id']}")]
    )
    assert match_keys(bundle) == {key(pat), key(obs)}


async def test_system_search_without_type_and_a_type_specific_parameter_is_400(client):
    res = await client.get("", params={"gender": "male"})
    assert res.status_code == 400
    assert res.json()["resourceType"] == "OperationOutcome"


async def test_system_search_without_type_searches_every_type(client):
    pat = await create(client, patient(unique()))
    obs = await create(client, observation(unique()))
    bundle = await search(client, "", [("_id", f"{pat['id']},{obs['id']}")])
    assert match_keys(bundle) == {key(pat), key(obs)}


# -- compartment search --------------------------------------------------------------


async def _compartment_data(client) -> dict[str, Any]:
    code = unique()
    pat = await create(client, patient(unique()))
    other = await create(client, patient(unique()))
    return {
        "code": code,
        "patient": pat,
        "other": other,
        "subject": await create(client, observation(code, subject=ref(pat))),
        "subject_other_code": await create(client, observation(unique(), subject=ref(pat))),
        "performer": await create(client, observation(code, subject=ref(other), performer=[ref(pat)])),
        "other_obs": await create(client, observation(code, subject=ref(other))),
        "condition": await create(
            client,
            {"resourceType": "Condition", "code": {"text": "flu"}, "subject": ref(pat)},
        ),
        "encounter": await create(
            client,
            {
                "resourceType": "Encounter",
                "status": "finished",
                "class": {"system": ACT_CODE, "code": "AMB"},
                "subject": ref(pat),
            },
        ),
    }


async def test_compartment_search_of_one_type_with_parameters(client):
    d = await _compartment_data(client)
    found = await ids_of(client, f"/Patient/{d['patient']['id']}/Observation", [("code", d["code"])])
    assert found == {d["subject"]["id"], d["performer"]["id"]}


async def test_compartment_search_of_every_type(client):
    d = await _compartment_data(client)
    bundle = await search(client, f"/Patient/{d['patient']['id']}/*", [("_count", "100")])
    members = {"subject", "subject_other_code", "performer", "condition", "encounter"}
    assert match_keys(bundle) - {key(d["patient"])} == {key(d[name]) for name in members}
    assert key(d["other"]) not in match_keys(bundle) and key(d["other_obs"]) not in match_keys(bundle)


# -- $everything ---------------------------------------------------------------------


async def _record(client) -> dict[str, Any]:
    """A patient with a GP, an organization, an encounter and observations; another patient too."""
    org = await create(client, {"resourceType": "Organization", "name": unique()})
    host = await create(client, {"resourceType": "Organization", "name": unique()})
    doctor = await create(client, {"resourceType": "Practitioner", "name": [{"family": unique()}]})
    pat = await create(client, patient(unique(), managingOrganization=ref(org), generalPractitioner=[ref(doctor)]))
    other = await create(client, patient(unique(), generalPractitioner=[ref(doctor)]))
    visit = await create(
        client,
        {
            "resourceType": "Encounter",
            "status": "finished",
            "class": {"system": ACT_CODE, "code": "AMB"},
            "subject": ref(pat),
            "serviceProvider": ref(host),
        },
    )
    return {
        "org": org,
        "host": host,
        "doctor": doctor,
        "patient": pat,
        "other": other,
        "encounter": visit,
        "obs": await create(
            client, observation(unique(), subject=ref(pat), performer=[ref(doctor)], encounter=ref(visit))
        ),
        "loose_obs": await create(client, observation(unique(), subject=ref(pat))),
        "other_obs": await create(client, observation(unique(), subject=ref(other))),
    }


async def _everything(client, path: str, params: list[tuple[str, str]] | None = None) -> list[dict]:
    """Every page of an $everything answer, as a list of Bundles."""
    res = await client.get(path, params=params or [])
    assert res.status_code == 200, res.text
    bundles = [res.json()]
    while (url := link(bundles[-1], "next")) is not None:
        bundles.append(await get_url(client, url))
        assert len(bundles) < 50
    return bundles


async def test_patient_everything_returns_the_compartment_and_referenced_resources(client):
    d = await _record(client)
    (bundle,) = await _everything(client, f"/Patient/{d['patient']['id']}/$everything")
    returned = match_keys(bundle) | include_keys(bundle)
    assert match_keys(bundle) == {key(d[n]) for n in ("patient", "encounter", "obs", "loose_obs")}
    assert {key(d["doctor"]), key(d["org"]), key(d["host"])} <= include_keys(bundle)
    assert key(d["other"]) not in returned and key(d["other_obs"]) not in returned


async def test_patient_everything_never_returns_a_patient_it_links_to(client):
    d = await _record(client)
    pat = d["patient"]
    res = await client.put(
        f"/Patient/{pat['id']}",
        json={**pat, "link": [{"other": ref(d["other"]), "type": "seealso"}]},
        headers={"Content-Type": FHIR_JSON},
    )
    assert res.status_code == 200, res.text
    (bundle,) = await _everything(client, f"/Patient/{pat['id']}/$everything")
    returned = match_keys(bundle) | include_keys(bundle)
    assert key(d["other"]) not in returned and key(d["other_obs"]) not in returned


async def test_patient_everything_type_limits_the_resource_types(client):
    d = await _record(client)
    (bundle,) = await _everything(client, f"/Patient/{d['patient']['id']}/$everything", [("_type", "Observation")])
    assert match_keys(bundle) == {key(d["obs"]), key(d["loose_obs"])}
    assert {k[0] for k in include_keys(bundle)} <= {"Observation"}


async def test_patient_everything_type_selects_the_matches(client):
    d = await _record(client)
    (bundle,) = await _everything(client, f"/Patient/{d['patient']['id']}/$everything", [("_type", "Observation")])
    assert match_keys(bundle) == {key(d["obs"]), key(d["loose_obs"])}


async def test_patient_everything_since_returns_resources_changed_since(client):
    d = await _record(client)
    since = d["other_obs"]["meta"]["lastUpdated"]
    later = await create(client, observation(unique(), subject=ref(d["patient"])))
    (bundle,) = await _everything(client, f"/Patient/{d['patient']['id']}/$everything", [("_since", since)])
    assert match_keys(bundle) == {key(later)}


async def test_patient_everything_pages_with_count(client):
    d = await _record(client)
    extra = [await create(client, observation(unique(), subject=ref(d["patient"]))) for _ in range(3)]
    bundles = await _everything(client, f"/Patient/{d['patient']['id']}/$everything", [("_count", "2")])
    pages = [match_keys(b) for b in bundles]
    assert all(len(p) <= 2 for p in pages)
    seen = [k for b in bundles for k in (key(e["resource"]) for e in entries(b, "match"))]
    expected = {key(d[n]) for n in ("patient", "encounter", "obs", "loose_obs")} | {key(e) for e in extra}
    assert sorted(seen) == sorted(expected)
    returned = {k for b in bundles for k in match_keys(b) | include_keys(b)}
    assert key(d["other"]) not in returned and key(d["other_obs"]) not in returned


async def test_encounter_everything_returns_the_encounter_compartment(client):
    d = await _record(client)
    other_visit = await create(
        client,
        {
            "resourceType": "Encounter",
            "status": "finished",
            "class": {"system": ACT_CODE, "code": "AMB"},
            "subject": ref(d["patient"]),
        },
    )
    await create(client, observation(unique(), subject=ref(d["patient"]), encounter=ref(other_visit)))
    (bundle,) = await _everything(client, f"/Encounter/{d['encounter']['id']}/$everything")
    assert match_keys(bundle) == {key(d["encounter"]), key(d["obs"])}
    assert {key(d["patient"]), key(d["host"])} <= include_keys(bundle)
    returned = match_keys(bundle) | include_keys(bundle)
    assert key(other_visit) not in returned and key(d["other_obs"]) not in returned


# -- lenient and strict handling -----------------------------------------------------


async def test_unknown_parameter_is_ignored_and_reported_in_an_outcome_entry(client):
    u = unique()
    a = await create(client, patient(u))
    bundle = await search(client, "/Patient", [("family", u), ("nonsense", "1")])
    assert match_ids(bundle) == [a["id"]]
    (outcome,) = entries(bundle, "outcome")
    assert outcome["resource"]["resourceType"] == "OperationOutcome"
    assert "nonsense" in outcome["resource"]["issue"][0]["diagnostics"]


async def test_unknown_parameter_is_400_with_strict_handling(client):
    res = await client.get("/Patient", params={"nonsense": "1"}, headers={"Prefer": "handling=strict"})
    assert res.status_code == 400
    assert res.json()["resourceType"] == "OperationOutcome"


async def test_known_parameters_give_no_outcome_entry(client):
    u = unique()
    await create(client, patient(u))
    bundle = await search(client, "/Patient", [("family", u)], headers={"Prefer": "handling=strict"})
    assert entries(bundle, "outcome") == []


@pytest.mark.parametrize(
    "path,name,value",
    [
        ("/Patient", "birthdate", "2020-02-30"),
        ("/Patient", "birthdate", "yesterday"),
        ("/Patient", "birthdate", "xx2020"),
        ("/Patient", "birthdate", "2020-01-01T25:00"),
        ("/RiskAssessment", "probability", "zz5"),
        ("/RiskAssessment", "probability", "five"),
        ("/RiskAssessment", "probability", "1.2.3"),
        ("/Observation", "value-quantity", "ten||mg"),
        ("/Observation", "value-quantity", "1|2|3|4"),
        ("/Patient", "gender:missing", "maybe"),
        ("/Patient", "family:bogus", "x"),
        ("/Patient", "birthdate:contains", "2020"),
        ("/Patient", "_count", "-1"),
        ("/Patient", "_count", "many"),
        ("/Patient", "_sort", "not-a-parameter"),
        ("/Patient", "_summary", "maybe"),
        ("/Patient", "_total", "lots"),
        ("/Patient", "_include", "Nonsense:subject"),
        ("/Patient", "_include", "Observation:code"),
        ("/Patient", "_cursor", "not-a-cursor"),
        ("/Patient", "_id", "a b"),
        ("/Observation", "code-value-quantity", "onlyone"),
        ("/Observation", "subject", "a/b/c"),
        ("/Patient", "_has:Observation", "x"),
        ("/Patient", "_has:Nonsense:patient:code", "x"),
    ],
)
async def test_invalid_values_are_400(client, path, name, value):
    res = await client.get(path, params={name: value})
    assert res.status_code == 400, res.text
    assert res.json()["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize(
    "name,value",
    [
        ("code-value-quantity", "http://example.org|c$notanumber"),
        ("code-value-quantity", "http://example.org|c$"),
        ("component-code-value-quantity", "c$ge"),
        ("code-value-date", "http://example.org|c$notadate"),
    ],
)
async def test_composite_component_of_the_wrong_form_is_400(client, name, value):
    res = await client.get("/Observation", params={name: value})
    assert res.status_code == 400, res.text


@pytest.mark.parametrize("name", ["name", "identifier", "_content"])
async def test_nul_character_in_a_search_value_is_not_a_server_error(client, name):
    res = await client.get("/Patient", params={name: "a\x00b"})
    assert res.status_code in (200, 400), res.text
    if res.status_code == 200:
        assert match_ids(res.json()) == []


async def test_nul_character_in_a_resource_is_refused_or_indexed_not_a_server_error(client):
    res = await client.post(
        "/Patient",
        json={"resourceType": "Patient", "name": [{"family": "a\u0000b"}]},
        headers={"Content-Type": FHIR_JSON},
    )
    assert res.status_code in (201, 400, 422), res.text


INJECTION = "' OR 1=1 --"


@pytest.mark.parametrize(
    "path,name",
    [
        ("/Patient", "name"),
        ("/Patient", "family:exact"),
        ("/Patient", "family:contains"),
        ("/Patient", "identifier"),
        ("/Patient", "gender"),
        ("/Patient", "identifier:of-type"),
        ("/Patient", "birthdate"),
        ("/RiskAssessment", "probability"),
        ("/Observation", "value-quantity"),
        ("/Observation", "code:text"),
        ("/Observation", "subject"),
        ("/Observation", "subject:Patient"),
        pytest.param("/Observation", "subject:identifier"),
        ("/Observation", "subject.name"),
        ("/ValueSet", "url"),
        ("/ValueSet", "url:below"),
        ("/ValueSet", "url:above"),
        ("/Observation", "code-value-quantity"),
        ("/Patient", "_id"),
        ("/Patient", "_lastUpdated"),
        ("/Patient", "_text"),
        ("/Patient", "_content"),
        ("/Patient", "_list"),
        ("/Patient", "_tag"),
        ("/Patient", "_profile"),
        ("/Patient", "_security"),
        ("/Patient", "_source"),
        ("/Patient", "_has:Observation:patient:code"),
    ],
)
async def test_injection_in_a_filter_value_matches_nothing_and_never_fails(client, path, name):
    res = await client.get(path, params={name: INJECTION})
    assert res.status_code in (200, 400), res.text
    if res.status_code == 200:
        assert match_ids(res.json()) == []


@pytest.mark.parametrize(
    "name",
    ["_sort", "_include", "_revinclude", "_count", "_summary", "_elements", "_total", "_cursor", "_type"],
)
async def test_injection_in_a_result_parameter_never_fails(client, name):
    res = await client.get("/Patient", params={"_id": unique(), name: INJECTION})
    assert res.status_code in (200, 400), res.text
    if res.status_code == 200:
        assert match_ids(res.json()) == []


async def test_injection_in_a_parameter_name_is_400_with_strict_handling(client):
    res = await client.get("/Patient", params={f"name{INJECTION}": "x"}, headers={"Prefer": "handling=strict"})
    assert res.status_code == 400, res.text


async def test_database_is_intact_after_injection_attempts(client, db):
    u = unique()
    canary = await create(client, patient(u))
    for name, value in [
        ("name", "x'; DROP TABLE resource; --"),
        ("identifier", "x|y'); DELETE FROM resource; --"),
        ("birthdate", "2020'; TRUNCATE resource; --"),
        ("_content", "x'); DROP TABLE search_string; --"),
        ("_sort", "family; DROP TABLE resource"),
        ("general-practitioner", "Practitioner/1' OR '1'='1"),
    ]:
        res = await client.get("/Patient", params={name: value})
        assert res.status_code in (200, 400), res.text
    for table in ("resource", "search_string", "search_token"):
        assert await db.fetchval("SELECT to_regclass($1)::text", table) == table
    assert (await client.get(f"/Patient/{canary['id']}")).status_code == 200
    assert await ids_of(client, "/Patient", [("family", u)]) == {canary["id"]}
