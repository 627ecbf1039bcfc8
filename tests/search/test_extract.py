"""Index extraction: which values each SearchParameter selects and the rows they become."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from headless_ehr.fhir.definitions import definitions
from headless_ehr.fhir.json import loads
from headless_ehr.search.extract import extract
from headless_ehr.search.extract.compile import compile_param, component_types
from headless_ehr.search.extract.text import CONTENT_LIMIT
from headless_ehr.search.extract.ucum import canonical
from headless_ehr.search.extract.values import STRING_LIMIT, normalized
from headless_ehr.search.normalize import MAX_INSTANT, MIN_INSTANT, normalize_string
from headless_ehr.search.registry import COLUMN_PARAMS, SearchParam, make_param, search_params

TABLES = ("token", "string", "reference", "date", "number", "quantity", "uri", "composite")


def fhir(value: dict[str, Any] | str) -> dict[str, Any]:
    """The resource as the server sees it: parsed by fhir.json (JSON text keeps the
    precision of decimals such as 0.020)."""
    return loads(value if isinstance(value, str) else json.dumps(value))


def rows(resource: dict[str, Any] | str, code: str, local_base: str | None = None) -> list[tuple]:
    """The rows of one parameter (without the parameter code), from every table."""
    parsed = fhir(resource)
    param = search_params(parsed["resourceType"])[code]
    found = extract(parsed, [param], local_base=local_base)
    return [row[1:] for table in TABLES for row in getattr(found, table)]


def components(resource: dict[str, Any], code: str) -> list[list[dict]]:
    return [json.loads(text) for (text,) in rows(resource, code)]


def day(text: str) -> tuple[datetime, datetime]:
    low = datetime.fromisoformat(text).replace(tzinfo=UTC)
    return low, low.replace(hour=23, minute=59, second=59, microsecond=999999)


OBSERVATION = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}

# -- choice elements, as/ofType, where() ------------------------------------------------


def test_choice_element_finds_its_datetime_variant():
    obs = {**OBSERVATION, "effectiveDateTime": "2024-03-05"}
    assert rows(obs, "date") == [day("2024-03-05")]


def test_choice_element_finds_its_period_variant():
    obs = {**OBSERVATION, "effectivePeriod": {"start": "2024-03-05", "end": "2024-03-06"}}
    assert rows(obs, "date") == [(day("2024-03-05")[0], day("2024-03-06")[1])]


def test_choice_variant_key_needs_a_type_name_suffix():
    obs = {**OBSERVATION, "effectiveSoon": "2024-03-05"}
    assert rows(obs, "date") == []


def test_as_type_keeps_only_that_variant():
    concept = {**OBSERVATION, "valueCodeableConcept": {"text": "positive"}}
    quantity = {**OBSERVATION, "valueQuantity": {"value": 5, "unit": "mg"}}
    assert rows(concept, "value-quantity") == []
    assert [r[0] for r in rows(quantity, "value-quantity")] == [Decimal(5)]


def test_as_function_selects_the_period_variant():
    condition = {
        "resourceType": "Condition",
        "subject": {"reference": "Patient/1"},
        "onsetPeriod": {"start": "2020-01-01"},
    }
    assert rows(condition, "onset-date") == [(day("2020-01-01")[0], MAX_INSTANT)]


def test_as_system_datetime_means_fhir_datetime():
    obs = {**OBSERVATION, "code": {"coding": [{"code": "c"}]}, "valueDateTime": "2021-02-03"}
    ((code, when),) = components(obs, "code-value-date")
    assert code == {"system": None, "code": "c"}
    assert when["low"] == "2021-02-03T00:00:00+00:00"


def test_where_resolve_is_patient_keeps_patient_references():
    to_patient = {**OBSERVATION, "subject": {"reference": "Patient/p1"}}
    to_group = {**OBSERVATION, "subject": {"reference": "Group/g1"}}
    assert rows(to_patient, "patient") == [("Patient", "p1", None, None)]
    assert rows(to_group, "patient") == []
    assert rows(to_group, "subject") == [("Group", "g1", None, None)]


def test_resolve_reads_the_type_of_an_absolute_reference():
    obs = {**OBSERVATION, "subject": {"reference": "https://ehr.example/fhir/Patient/p1"}}
    local = rows(obs, "patient", local_base="https://ehr.example/fhir")
    assert local == [("Patient", "p1", None, "https://ehr.example/fhir/Patient/p1")]


def test_resolve_reads_the_type_element_when_the_reference_has_none():
    obs = {**OBSERVATION, "subject": {"reference": "urn:uuid:1234", "type": "Patient"}}
    assert rows(obs, "patient") == [("Patient", None, None, "urn:uuid:1234")]


def test_resolve_finds_the_type_of_a_contained_resource():
    obs = {
        **OBSERVATION,
        "contained": [{"resourceType": "Patient", "id": "p"}],
        "subject": {"reference": "#p"},
    }
    assert rows(obs, "patient") == [(None, None, None, "#p")]


def test_where_equality_filters_on_a_child_value():
    patient = {
        "resourceType": "Patient",
        "telecom": [{"system": "email", "value": "a@b.org"}, {"system": "phone", "value": "555"}],
    }
    assert rows(patient, "phone") == [(None, "555", None)]
    assert rows(patient, "email") == [(None, "a@b.org", None)]


def test_where_type_selects_related_artifacts_of_that_type():
    library = {
        "resourceType": "Library",
        "status": "draft",
        "type": {"text": "x"},
        "relatedArtifact": [
            {"type": "composed-of", "resource": "http://ex.org/Library/a"},
            {"type": "depends-on", "resource": "http://ex.org/Library/b"},
        ],
    }
    assert rows(library, "composed-of") == [(None, None, None, "http://ex.org/Library/a")]


def test_index_selects_the_first_bundle_entry():
    bundle = {
        "resourceType": "Bundle",
        "type": "document",
        "entry": [
            {"resource": {"resourceType": "Composition", "id": "c1"}},
            {"resource": {"resourceType": "Composition", "id": "c2"}},
        ],
    }
    assert rows(bundle, "composition") == [("Composition", "c1", None, None)]


def test_exists_and_not_false_gives_one_boolean():
    assert rows({"resourceType": "Patient"}, "deceased") == [(None, "false", None)]
    dead = {"resourceType": "Patient", "deceasedDateTime": "2020-01-01"}
    assert rows(dead, "deceased") == [(None, "true", None)]
    alive = {"resourceType": "Patient", "deceasedBoolean": False}
    assert rows(alive, "deceased") == [(None, "false", None)]


# -- token ------------------------------------------------------------------------------


def test_coding_token_has_system_code_and_normalised_display():
    obs = {**OBSERVATION, "category": [{"coding": [{"system": "s", "code": "c", "display": "Vital  Signs"}]}]}
    assert rows(obs, "category") == [("s", "c", "vital signs")]


def test_concept_text_goes_into_each_coding_row():
    obs = {
        **OBSERVATION,
        "code": {"coding": [{"system": "a", "code": "1"}, {"system": "b", "code": "2"}], "text": "Weight"},
    }
    assert rows(obs, "code") == [("a", "1", "weight"), ("b", "2", "weight")]


def test_coding_display_other_than_concept_text_gets_a_text_row():
    obs = {**OBSERVATION, "code": {"coding": [{"code": "1", "display": "Body weight"}], "text": "Weight"}}
    assert rows(obs, "code") == [(None, "1", "weight"), (None, None, "body weight")]


def test_concept_without_coding_gives_a_text_only_row():
    assert rows({**OBSERVATION, "code": {"text": "Weight"}}, "code") == [(None, None, "weight")]


def test_identifier_token_has_system_value_and_type_text():
    patient = {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:mrn", "value": "42", "type": {"text": "MRN"}}],
    }
    assert rows(patient, "identifier") == [("urn:mrn", "42", "mrn")]


def test_contact_point_token_is_its_value_without_system():
    patient = {"resourceType": "Patient", "telecom": [{"system": "phone", "value": "555"}]}
    assert rows(patient, "telecom") == [(None, "555", None)]


def test_boolean_token_is_true_or_false():
    assert rows({"resourceType": "Patient", "active": True}, "active") == [(None, "true", None)]
    assert rows({"resourceType": "Patient", "active": False}, "active") == [(None, "false", None)]


def test_bound_code_gets_the_code_system_of_its_required_binding():
    patient = {"resourceType": "Patient", "gender": "female"}
    assert rows(patient, "gender") == [("http://hl7.org/fhir/administrative-gender", "female", None)]


def test_unbound_code_has_no_system():
    value_set = {
        "resourceType": "ValueSet",
        "status": "draft",
        "expansion": {"timestamp": "2020-01-01", "contains": [{"system": "s", "code": "c"}]},
    }
    assert rows(value_set, "code") == [(None, "c", None)]


def test_tag_and_security_are_tokens_from_meta():
    patient = {
        "resourceType": "Patient",
        "meta": {
            "tag": [{"system": "urn:t", "code": "vip"}],
            "security": [{"system": "urn:s", "code": "R"}],
        },
    }
    assert rows(patient, "_tag") == [("urn:t", "vip", None)]
    assert rows(patient, "_security") == [("urn:s", "R", None)]


# -- string -----------------------------------------------------------------------------


def test_human_name_gives_a_row_per_part():
    patient = {
        "resourceType": "Patient",
        "name": [
            {
                "family": "Chalmers",
                "given": ["Peter", "James"],
                "prefix": ["Mr"],
                "suffix": ["Jr"],
                "text": "Jim",
            }
        ],
    }
    parts = sorted(r[1] for r in rows(patient, "name"))
    assert parts == ["Chalmers", "James", "Jim", "Jr", "Mr", "Peter"]


def test_address_gives_a_row_per_part():
    patient = {
        "resourceType": "Patient",
        "address": [{"line": ["1 Main St", "Flat 2"], "city": "Springfield", "postalCode": "12345"}],
    }
    assert sorted(r[1] for r in rows(patient, "address")) == [
        "1 Main St",
        "12345",
        "Flat 2",
        "Springfield",
    ]


def test_string_row_is_normalised_value_and_exact_value():
    patient = {"resourceType": "Patient", "name": [{"family": "Müller-Lüdenscheidt"}]}
    assert rows(patient, "family") == [("muller-ludenscheidt", "Müller-Lüdenscheidt")]


def test_long_string_value_is_cut_but_exact_is_kept():
    text = "a" * (STRING_LIMIT + 10)
    patient = {"resourceType": "Patient", "name": [{"family": text}]}
    assert rows(patient, "family") == [("a" * STRING_LIMIT, text)]


@pytest.mark.parametrize("text", ["Plain ASCII  Text\t", "ÉCOLE Straße", "ﬁ ligature", " x\u00a0y "])
def test_fast_normalisation_agrees_with_normalize_string(text):
    assert normalized(text) == normalize_string(text)


# -- reference --------------------------------------------------------------------------


def test_relative_reference_gives_type_and_id():
    patient = {"resourceType": "Patient", "generalPractitioner": [{"reference": "Practitioner/d1"}]}
    assert rows(patient, "general-practitioner") == [("Practitioner", "d1", None, None)]


def test_versioned_reference_gives_the_version():
    patient = {
        "resourceType": "Patient",
        "link": [{"other": {"reference": "Patient/p2/_history/3"}, "type": "seealso"}],
    }
    assert rows(patient, "link") == [("Patient", "p2", "3", None)]


def test_absolute_reference_on_our_base_keeps_the_url_and_its_type_and_id():
    obs = {**OBSERVATION, "performer": [{"reference": "http://ehr.org/fhir/Practitioner/9"}]}
    found = rows(obs, "performer", local_base="http://ehr.org/fhir")
    assert found == [("Practitioner", "9", None, "http://ehr.org/fhir/Practitioner/9")]


def test_absolute_reference_to_another_server_keeps_only_the_url():
    obs = {**OBSERVATION, "performer": [{"reference": "http://other.org/fhir/Practitioner/9"}]}
    found = rows(obs, "performer", local_base="http://ehr.org/fhir")
    assert found == [(None, None, None, "http://other.org/fhir/Practitioner/9")]


def test_absolute_reference_is_foreign_when_no_base_is_known():
    obs = {**OBSERVATION, "performer": [{"reference": "http://ehr.org/fhir/Practitioner/9"}]}
    assert rows(obs, "performer") == [(None, None, None, "http://ehr.org/fhir/Practitioner/9")]


def test_canonical_ending_in_type_and_id_is_not_a_local_reference():
    response = {
        "resourceType": "QuestionnaireResponse",
        "status": "completed",
        "questionnaire": "http://ehr.org/fhir/Questionnaire/q1",
    }
    found = rows(response, "questionnaire", local_base="http://ehr.org/fhir")
    assert found == [(None, None, None, "http://ehr.org/fhir/Questionnaire/q1")]


def test_absolute_reference_without_type_and_id_keeps_only_the_url():
    obs = {**OBSERVATION, "performer": [{"reference": "http://other.org/people/9"}]}
    assert rows(obs, "performer") == [(None, None, None, "http://other.org/people/9")]


def test_contained_reference_is_kept_as_its_fragment():
    obs = {**OBSERVATION, "performer": [{"reference": "#pr"}]}
    assert rows(obs, "performer") == [(None, None, None, "#pr")]


def test_urn_uuid_reference_is_kept_as_url():
    obs = {**OBSERVATION, "performer": [{"reference": "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a"}]}
    assert rows(obs, "performer") == [(None, None, None, "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a")]


def test_logical_reference_gives_only_an_identifier_token_row():
    obs = {**OBSERVATION, "performer": [{"identifier": {"system": "urn:npi", "value": "1"}}]}
    found = extract(fhir(obs), [search_params("Observation")["performer"]])
    assert found.reference == []
    assert found.token == [("performer:identifier", "urn:npi", "1", None)]


def test_identifier_type_codings_give_of_type_rows():
    patient = {
        "resourceType": "Patient",
        "identifier": [
            {
                "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
                "system": "urn:mrn",
                "value": "123",
            }
        ],
    }
    found = extract(fhir(patient), [search_params("Patient")["identifier"]])
    assert ("identifier:of-type", "http://terminology.hl7.org/CodeSystem/v2-0203", "MR|123", None) in found.token


def test_canonical_reference_splits_off_the_version():
    response = {
        "resourceType": "QuestionnaireResponse",
        "status": "completed",
        "questionnaire": "http://ex.org/Questionnaire/q1|2.0",
    }
    assert rows(response, "questionnaire") == [(None, None, "2.0", "http://ex.org/Questionnaire/q1")]


def test_as_reference_keeps_only_the_reference_variant():
    by_reference = {
        "resourceType": "MedicationRequest",
        "status": "active",
        "intent": "order",
        "subject": {"reference": "Patient/1"},
        "medicationReference": {"reference": "Medication/m1"},
    }
    by_concept = {**by_reference, "medicationCodeableConcept": {"text": "aspirin"}}
    del by_concept["medicationReference"]
    assert rows(by_reference, "medication") == [("Medication", "m1", None, None)]
    assert rows(by_concept, "medication") == []
    assert rows(by_concept, "code") == [(None, None, "aspirin")]


# -- date -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "low", "high"),
    [
        ("2024", "2024-01-01T00:00:00", "2024-12-31T23:59:59.999999"),
        ("2024-02", "2024-02-01T00:00:00", "2024-02-29T23:59:59.999999"),
        ("2024-02-10T10:30:00+02:00", "2024-02-10T08:30:00", "2024-02-10T08:30:00.999999"),
    ],
)
def test_date_covers_the_range_of_its_precision(value, low, high):
    obs = {**OBSERVATION, "effectiveDateTime": value}
    as_utc = lambda text: datetime.fromisoformat(text).replace(tzinfo=UTC)  # noqa: E731
    assert rows(obs, "date") == [(as_utc(low), as_utc(high))]


def test_period_without_end_is_open_to_the_end_of_time():
    encounter = {
        "resourceType": "Encounter",
        "status": "in-progress",
        "class": {"code": "AMB"},
        "period": {"start": "2024-01-01"},
    }
    assert rows(encounter, "date") == [(day("2024-01-01")[0], MAX_INSTANT)]


def test_period_without_start_is_open_to_the_beginning_of_time():
    encounter = {
        "resourceType": "Encounter",
        "status": "finished",
        "class": {"code": "AMB"},
        "period": {"end": "2024-01-01"},
    }
    assert rows(encounter, "date") == [(MIN_INSTANT, day("2024-01-01")[1])]


def test_timing_gives_its_events_and_bounds_period():
    obs = {
        **OBSERVATION,
        "effectiveTiming": {
            "event": ["2024-01-01"],
            "repeat": {"boundsPeriod": {"start": "2024-02-01", "end": "2024-02-02"}},
        },
    }
    assert rows(obs, "date") == [day("2024-01-01"), (day("2024-02-01")[0], day("2024-02-02")[1])]


def test_age_and_range_onsets_are_not_dates():
    condition = {"resourceType": "Condition", "subject": {"reference": "Patient/1"}, "onsetAge": {"value": 40}}
    assert rows(condition, "onset-date") == []


def test_string_choice_is_not_a_date():
    plan = {
        "resourceType": "CarePlan",
        "status": "active",
        "intent": "plan",
        "subject": {"reference": "Patient/1"},
        "activity": [{"detail": {"status": "scheduled", "scheduledString": "2024-01-01"}}],
    }
    assert rows(plan, "activity-date") == []


# -- number -----------------------------------------------------------------------------


def test_decimal_number_range_follows_its_precision():
    assessment = """{"resourceType": "RiskAssessment", "status": "final",
        "subject": {"reference": "Patient/1"}, "prediction": [{"probabilityDecimal": 0.020}]}"""
    assert rows(assessment, "probability") == [(Decimal("0.020"), Decimal("0.0195"), Decimal("0.0205"))]


def test_integer_number_range_is_half_a_unit_either_side():
    sequence = {"resourceType": "MolecularSequence", "coordinateSystem": 0, "variant": [{"start": 100}]}
    assert rows(sequence, "variant-start") == [(100, Decimal("99.5"), Decimal("100.5"))]


# -- quantity ---------------------------------------------------------------------------


def test_ucum_quantity_gets_a_canonical_value_and_code():
    obs = {
        **OBSERVATION,
        "valueQuantity": {"value": 100, "unit": "mg/dL", "system": "http://unitsofmeasure.org", "code": "mg/dL"},
    }
    ((value, low, high, system, code, unit, canon_value, canon_code),) = rows(obs, "value-quantity")
    assert (value, low, high) == (100, Decimal("99.5"), Decimal("100.5"))
    assert (system, code, unit) == ("http://unitsofmeasure.org", "mg/dL", "mg/dL")
    assert (canon_value, canon_code) == (Decimal(1), "g/L")


def test_unknown_ucum_unit_keeps_no_canonical_form():
    obs = {**OBSERVATION, "valueQuantity": {"value": 1, "system": "http://unitsofmeasure.org", "code": "[arb'U]"}}
    assert rows(obs, "value-quantity")[0][-2:] == (None, None)


def test_non_ucum_quantity_has_no_canonical_form():
    obs = {**OBSERVATION, "valueQuantity": {"value": 1, "system": "http://snomed.info/sct", "code": "258684004"}}
    assert rows(obs, "value-quantity")[0][-2:] == (None, None)


def test_money_is_value_with_currency_code():
    item = """{"resourceType": "ChargeItem", "status": "billed", "code": {"text": "x"},
        "subject": {"reference": "Patient/1"}, "priceOverride": {"value": 12.50, "currency": "EUR"}}"""
    ((value, low, high, system, code, unit, canon_value, canon_code),) = rows(item, "price-override")
    assert (value, low, high) == (Decimal("12.50"), Decimal("12.495"), Decimal("12.505"))
    assert (system, code, unit, canon_value, canon_code) == (
        "urn:iso:std:iso:4217",
        "EUR",
        "EUR",
        None,
        None,
    )


def test_range_is_one_row_spanning_low_to_high():
    plan = {
        "resourceType": "PlanDefinition",
        "status": "draft",
        "useContext": [
            {
                "code": {"code": "age"},
                "valueRange": {"low": {"value": 18, "unit": "a"}, "high": {"value": 65, "unit": "a"}},
            }
        ],
    }
    ((value, low, high, *_rest),) = rows(plan, "context-quantity")
    assert (value, low, high) == (18, Decimal("17.5"), Decimal("65.5"))


def test_range_without_high_is_open_above():
    plan = {
        "resourceType": "PlanDefinition",
        "status": "draft",
        "useContext": [{"code": {"code": "age"}, "valueRange": {"low": {"value": 18}}}],
    }
    assert rows(plan, "context-quantity")[0][2] == Decimal("Infinity")


def test_age_onset_is_a_quantity():
    condition = {
        "resourceType": "Condition",
        "subject": {"reference": "Patient/1"},
        "onsetAge": {"value": 40, "system": "http://unitsofmeasure.org", "code": "a"},
    }
    assert rows(condition, "onset-age")[0][-2:] == (Decimal(40 * 31557600), "s")


@pytest.mark.parametrize(
    ("value", "code", "expected"),
    [
        ("1", "kg", ("1000", "g")),
        ("185", "[lb_av]", ("83914.58845", "g")),
        ("250", "mL", ("0.25", "L")),
        ("2", "h", ("7200", "s")),
        ("72", "/min", ("1.2", "/s")),
        ("5", "mmol/L", ("0.005", "mol/L")),
        ("4.5", "10*9/L", ("4500000000", "/L")),
        ("37", "Cel", ("310.15", "K")),
        ("98.6", "[degF]", ("310.15", "K")),
        ("50", "%", ("0.5", "1")),
        ("60", "mL/min/{1.73_m2}", ("0.001", "L/s")),
        ("22", "kg/m2", ("22000", "g/m2")),
    ],
)
def test_ucum_units_convert_to_base_units(value, code, expected):
    found = canonical(Decimal(value), code)
    assert found is not None
    assert (format(found[0], "f"), found[1]) == expected


@pytest.mark.parametrize("code", ["mcg", "ml/hr", "TAB", "Cel/h", "mg/", "kg..m", "[pH]"])
def test_units_outside_the_table_have_no_canonical_form(code):
    assert canonical(Decimal(1), code) is None


# -- uri --------------------------------------------------------------------------------


def test_profile_and_source_are_uri_rows():
    patient = {
        "resourceType": "Patient",
        "meta": {"profile": ["http://ex.org/StructureDefinition/p"], "source": "http://src.org#a"},
    }
    assert rows(patient, "_profile") == [("http://ex.org/StructureDefinition/p",)]
    assert rows(patient, "_source") == [("http://src.org#a",)]


def test_url_of_a_definition_is_a_uri_row():
    value_set = {"resourceType": "ValueSet", "status": "draft", "url": "http://ex.org/ValueSet/v"}
    assert rows(value_set, "url") == [("http://ex.org/ValueSet/v",)]


# -- composite --------------------------------------------------------------------------

LOINC_WEIGHT = {"system": "http://loinc.org", "code": "29463-7"}


def test_code_value_quantity_pairs_each_code_with_the_value():
    obs = {
        **OBSERVATION,
        "code": {"coding": [LOINC_WEIGHT, {"system": "urn:x", "code": "w"}]},
        "valueQuantity": {"value": 185, "system": "http://unitsofmeasure.org", "code": "[lb_av]"},
    }
    found = components(obs, "code-value-quantity")
    quantity = {
        "value": "185",
        "low": "184.5",
        "high": "185.5",
        "system": "http://unitsofmeasure.org",
        "code": "[lb_av]",
        "canon_value": "83914.58845",
        "canon_code": "g",
    }
    assert found == [[LOINC_WEIGHT, quantity], [{"system": "urn:x", "code": "w"}, quantity]]


def test_component_composite_pairs_values_within_the_same_component():
    obs = {
        **OBSERVATION,
        "component": [
            {"code": {"coding": [{"code": "systolic"}]}, "valueQuantity": {"value": 120}},
            {"code": {"coding": [{"code": "diastolic"}]}, "valueQuantity": {"value": 80}},
        ],
    }
    pairs = {(c[0]["code"], c[1]["value"]) for c in components(obs, "component-code-value-quantity")}
    assert pairs == {("systolic", "120"), ("diastolic", "80")}


def test_combo_composite_covers_the_observation_and_its_components():
    obs = {
        **OBSERVATION,
        "code": {"coding": [{"code": "panel"}]},
        "valueQuantity": {"value": 1},
        "component": [{"code": {"coding": [{"code": "part"}]}, "valueQuantity": {"value": 2}}],
    }
    pairs = {(c[0]["code"], c[1]["value"]) for c in components(obs, "combo-code-value-quantity")}
    assert pairs == {("panel", "1"), ("part", "2")}


def test_composite_needs_every_component():
    obs = {**OBSERVATION, "code": {"coding": [LOINC_WEIGHT]}}
    assert rows(obs, "code-value-quantity") == []


def test_composite_reference_component_is_type_and_id():
    document = {
        "resourceType": "DocumentReference",
        "status": "current",
        "content": [{"attachment": {"url": "http://x"}}],
        "relatesTo": [{"code": "replaces", "target": {"reference": "DocumentReference/d0"}}],
    }
    assert components(document, "relationship") == [
        [
            {"system": "http://hl7.org/fhir/document-relationship-type", "code": "replaces"},
            {"type": "DocumentReference", "id": "d0"},
        ]
    ]


def test_swapped_r4_component_definitions_are_typed_by_their_expression():
    param = search_params("DocumentReference")["relationship"]
    assert component_types(param) == ["token", "reference"]


# -- narrative and content --------------------------------------------------------------

NARRATIVE = {
    "status": "generated",
    "div": '<div xmlns="http://www.w3.org/1999/xhtml"><p>Peter &amp; <b>Jim</b>&#160;Chalmers</p></div>',
}


def test_narrative_is_the_div_text_without_markup():
    found = extract(fhir({"resourceType": "Patient", "text": NARRATIVE}))
    assert found.narrative == "Peter & Jim Chalmers"


def test_content_has_the_string_values_but_not_ids_meta_or_uris():
    patient = {
        "resourceType": "Patient",
        "id": "secret-id",
        "meta": {"versionId": "7"},
        "identifier": [{"system": "http://hospital.org/mrn", "value": "MRN-1"}],
        "name": [{"family": "Chalmers"}],
    }
    content = extract(fhir(patient)).content
    assert content is not None
    assert "Chalmers" in content and "MRN-1" in content
    assert "secret-id" not in content and "http://hospital.org" not in content and "7" not in content


def test_content_includes_the_narrative_text_once_without_markup():
    content = extract(fhir({"resourceType": "Patient", "text": NARRATIVE})).content
    assert content == "Peter & Jim Chalmers"


def test_content_skips_base64_data():
    data = "QUJD" * 200
    media = {"resourceType": "Binary", "contentType": "text/plain", "data": data}
    assert extract(fhir(media)).content == "text/plain"


def test_content_is_capped():
    patient = {"resourceType": "Patient", "name": [{"given": [f"name{i} " * 50 for i in range(400)]}]}
    content = extract(fhir(patient)).content
    assert content is not None and len(content) == CONTENT_LIMIT


# -- extraction as a whole --------------------------------------------------------------


def test_column_parameters_give_no_rows():
    params = [search_params("Patient")[code] for code in COLUMN_PARAMS]
    found = extract(
        fhir({"resourceType": "Patient", "id": "p", "meta": {"lastUpdated": "2024-01-01T00:00:00Z"}}), params
    )
    assert all(getattr(found, table) == [] for table in TABLES)


def test_identical_rows_are_written_once():
    patient = {"resourceType": "Patient", "name": [{"given": ["Ann"]}, {"given": ["Ann"]}]}
    assert rows(patient, "given") == [("ann", "Ann")]


def test_default_parameters_are_every_parameter_of_the_type():
    patient = fhir({"resourceType": "Patient", "gender": "male", "birthDate": "2000", "text": NARRATIVE})
    found = extract(patient)
    assert ("gender", "http://hl7.org/fhir/administrative-gender", "male", None) in found.token
    assert [r[0] for r in found.date] == ["birthdate"]
    assert found.narrative and found.content


def test_expressions_are_compiled_once_per_parameter():
    param = search_params("Observation")["code"]
    assert compile_param(param) is compile_param(param)


def test_every_r4_parameter_compiles_to_the_fast_path():
    slow = [
        (name, code)
        for name in sorted(definitions().resource_types)
        for code, param in search_params(name).items()
        if compile_param(param)[1]
    ]
    assert slow == []


def custom(resource_type: str, code: str, kind: str, expression: str) -> SearchParam:
    resource = {
        "resourceType": "SearchParameter",
        "url": f"http://ex.org/SearchParameter/{code}",
        "code": code,
        "base": [resource_type],
        "type": kind,
        "expression": expression,
    }
    return make_param(resource, resource_type)


def test_unsupported_expression_goes_through_the_fhirpath_engine():
    param = custom("Patient", "named-family", "string", "Patient.name.where(given.exists()).family")
    assert compile_param(param)[1] is True
    patient = fhir({"resourceType": "Patient", "name": [{"family": "A", "given": ["x"]}, {"family": "B"}]})
    assert extract(patient, [param]).string == [("named-family", "a", "A")]


def test_engine_resolve_gives_the_referenced_type():
    param = custom(
        "Observation",
        "patient-ref",
        "reference",
        "Observation.subject.where(resolve() is Patient and reference.exists())",
    )
    assert compile_param(param)[1] is True
    to_patient = fhir({**OBSERVATION, "subject": {"reference": "Patient/p1"}})
    to_group = fhir({**OBSERVATION, "subject": {"reference": "Group/g1"}})
    assert extract(to_patient, [param]).reference == [("patient-ref", "Patient", "p1", None, None)]
    assert extract(to_group, [param]).reference == []


def test_custom_extension_parameter_compiles_to_the_fast_path():
    url = "http://ex.org/StructureDefinition/eye-colour"
    param = custom("Patient", "eye-colour", "token", f"Patient.extension('{url}').value")
    assert compile_param(param)[1] is False
    patient = fhir(
        {
            "resourceType": "Patient",
            "extension": [{"url": url, "valueCode": "blue"}, {"url": "other", "valueCode": "x"}],
        }
    )
    assert extract(patient, [param]).token == [("eye-colour", None, "blue", None)]
