"""The R4 JSON and StructureDefinition rules the validator enforces, one rule per test."""

from __future__ import annotations

import copy
import json
import time
from functools import cached_property
from types import SimpleNamespace
from typing import Any

import pytest

from headless_ehr.fhir.definitions import Definitions, definitions
from headless_ehr.fhir.json import loads
from headless_ehr.fhir.outcome import Issue
from headless_ehr.fhir.validation import Validator, validator
from headless_ehr.fhir.validation.valuesets import ValueSetResolver

OBS_CODE = {"text": "heart rate"}


def check(resource: Any, **kwargs: Any) -> list[Issue]:
    """Validate what a client would send: the resource serialised and parsed as FHIR JSON."""
    return validator().validate(loads(json.dumps(resource)), **kwargs)


def check_text(text: str) -> list[Issue]:
    return validator().validate(loads(text))


def found(issues: list[Issue]) -> set[tuple[str, str | None]]:
    return {(i.code, i.expression) for i in issues}


def expressions(issues: list[Issue]) -> set[str | None]:
    return {i.expression for i in issues}


def observation(**elements: Any) -> dict[str, Any]:
    return {"resourceType": "Observation", "status": "final", "code": OBS_CODE, **elements}


def with_extension(extension: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Patient", "extension": [extension]}


# the resource itself


def test_minimal_valid_resource_has_no_issues() -> None:
    assert check({"resourceType": "Patient", "id": "p1", "active": True}) == []


def test_resource_must_be_a_json_object() -> None:
    assert found(check([{"resourceType": "Patient"}])) == {("structure", None)}


def test_resource_type_is_required() -> None:
    assert found(check({"id": "p1"})) == {("required", None)}


def test_unknown_resource_type_is_rejected() -> None:
    assert found(check({"resourceType": "Patientt"})) == {("structure", "resourceType")}


def test_abstract_resource_type_is_rejected() -> None:
    assert found(check({"resourceType": "DomainResource"})) == {("structure", "resourceType")}


def test_path_argument_prefixes_every_expression() -> None:
    issues = check({"resourceType": "Patient", "gender": "x"}, path="Bundle.entry[0].resource")
    assert expressions(issues) == {"Bundle.entry[0].resource.gender"}


def test_every_problem_is_reported_not_only_the_first() -> None:
    issues = check({"resourceType": "Patient", "gender": "x", "active": "yes", "foo": 1})
    assert expressions(issues) == {"Patient.gender", "Patient.active", "Patient.foo"}


def test_issues_are_errors() -> None:
    assert {i.severity for i in check({"resourceType": "Patient", "foo": 1})} == {"error"}


# unknown elements


def test_unknown_element_is_rejected() -> None:
    assert found(check({"resourceType": "Patient", "colour": "red"})) == {("structure", "Patient.colour")}


def test_misspelt_element_is_rejected() -> None:
    assert found(check({"resourceType": "Patient", "birthdate": "2000-01-01"})) == {("structure", "Patient.birthdate")}


def test_choice_element_with_a_type_it_does_not_allow_is_rejected() -> None:
    issues = check({"resourceType": "Patient", "deceasedString": "yes"})
    assert found(issues) == {("structure", "Patient.deceasedString")}
    assert "boolean, dateTime" in issues[0].diagnostics


def test_choice_element_without_type_suffix_is_rejected() -> None:
    assert found(check({"resourceType": "Patient", "deceased": True})) == {("structure", "Patient.deceased")}


def test_unknown_element_inside_a_data_type_is_rejected() -> None:
    issues = check(observation(valueQuantity={"value": 1, "units": "kg"}))
    assert found(issues) == {("structure", "Observation.value.ofType(Quantity).units")}


def test_unknown_element_inside_a_backbone_element_is_rejected() -> None:
    issues = check({"resourceType": "Patient", "contact": [{"nickname": "Bo"}]})
    assert found(issues) == {("structure", "Patient.contact[0].nickname")}


def test_resource_type_is_unknown_inside_a_data_type() -> None:
    issues = check({"resourceType": "Patient", "name": [{"resourceType": "HumanName"}]})
    assert ("structure", "Patient.name[0].resourceType") in found(issues)


def test_fhir_comments_are_not_r4_json() -> None:
    assert found(check({"resourceType": "Patient", "fhir_comments": ["x"]})) == {("structure", "Patient.fhir_comments")}


# JSON kinds


def test_repeating_element_must_be_an_array() -> None:
    assert found(check({"resourceType": "Patient", "name": {"family": "Chalmers"}})) == {("structure", "Patient.name")}


def test_single_element_must_not_be_an_array() -> None:
    assert found(check({"resourceType": "Patient", "gender": ["male"]})) == {("structure", "Patient.gender")}


def test_repeating_primitive_inside_a_data_type_must_be_an_array() -> None:
    assert found(check({"resourceType": "Patient", "name": [{"given": "Peter"}]})) == {
        ("structure", "Patient.name[0].given")
    }


def test_string_element_rejects_a_number() -> None:
    assert found(check({"resourceType": "Patient", "name": [{"family": 42}]})) == {
        ("structure", "Patient.name[0].family")
    }


def test_boolean_element_rejects_a_string() -> None:
    assert found(check({"resourceType": "Patient", "active": "true"})) == {("structure", "Patient.active")}


def test_integer_element_rejects_a_number_with_a_fraction() -> None:
    issues = check_text('{"resourceType": "Patient", "multipleBirthInteger": 2.0}')
    assert found(issues) == {("value", "Patient.multipleBirth.ofType(integer)")}


def test_decimal_element_rejects_a_string() -> None:
    assert found(check(observation(valueQuantity={"value": "1.5"}))) == {
        ("structure", "Observation.value.ofType(Quantity).value")
    }


def test_decimal_element_accepts_integers_and_decimals() -> None:
    text = '{"resourceType": "Observation", "status": "final", "code": {"text": "x"},'
    assert check_text(text + '"valueQuantity": {"value": 1.50}}') == []
    assert check_text(text + '"valueQuantity": {"value": 2}}') == []


def test_complex_element_must_be_an_object() -> None:
    assert found(check({"resourceType": "Observation", "status": "final", "code": "x"})) == {
        ("structure", "Observation.code")
    }


def test_empty_object_is_rejected() -> None:
    assert found(check({"resourceType": "Patient", "maritalStatus": {}})) == {("structure", "Patient.maritalStatus")}


def test_empty_array_is_rejected() -> None:
    assert found(check({"resourceType": "Patient", "name": []})) == {("structure", "Patient.name")}


def test_empty_string_is_rejected() -> None:
    assert found(check({"resourceType": "Patient", "name": [{"family": ""}]})) == {("value", "Patient.name[0].family")}


def test_null_is_rejected_for_a_single_element() -> None:
    assert found(check({"resourceType": "Patient", "birthDate": None})) == {("structure", "Patient.birthDate")}


def test_null_is_rejected_for_a_complex_element() -> None:
    assert found(check({"resourceType": "Patient", "meta": None})) == {("structure", "Patient.meta")}


# primitive types (each checked through an extension value of that type)

VALID_PRIMITIVES = [
    ("boolean", False),
    ("integer", -2147483648),
    ("integer", 2147483647),
    ("positiveInt", 1),
    ("unsignedInt", 0),
    ("decimal", 0),
    ("string", " padded but not blank "),
    ("markdown", "# heading\n\n*text*"),
    ("code", "a code with spaces"),
    ("id", "a-Z.0"),
    ("id", "a" * 64),
    ("uri", "urn:x:y"),
    ("url", "https://example.org/x?y=1"),
    ("canonical", "http://hl7.org/fhir/ValueSet/x|4.0.1"),
    ("oid", "urn:oid:1.2.840.10008"),
    ("uuid", "urn:uuid:c757873d-ec9a-4326-a141-556f43239520"),
    ("base64Binary", "SGVsbG8gd29ybGQ="),
    ("base64Binary", "SGVs\r\nbG8g"),
    ("date", "2024"),
    ("date", "2024-02"),
    ("date", "2024-02-29"),
    ("dateTime", "2024-02-29T23:59:60.123+14:00"),
    ("dateTime", "1905-08-23"),
    ("instant", "2015-02-07T13:28:17.239+02:00"),
    ("time", "23:59:59.5"),
]

INVALID_PRIMITIVES = [
    ("boolean", "true"),
    ("integer", 2147483648),
    ("integer", -2147483649),
    ("positiveInt", 0),
    ("unsignedInt", -1),
    ("decimal", True),
    ("string", "   "),
    ("string", "form\ffeed"),
    ("markdown", "\n\t"),
    ("code", " leading"),
    ("code", "two  spaces"),
    ("id", "has_underscore"),
    ("id", "a" * 65),
    ("uri", "has space"),
    ("oid", "1.2.3"),
    ("uuid", "urn:uuid:C757873D-EC9A-4326-A141-556F43239520"),
    ("base64Binary", "%%%2@()()"),
    ("base64Binary", "abc"),
    ("date", "2023-02-29"),
    ("date", "2024-13"),
    ("date", "24-01-01"),
    ("date", "2024-01-01T10:00:00Z"),
    ("dateTime", "2024-01-01T10:00:00"),
    ("dateTime", "2024-01-01T10:00Z"),
    ("dateTime", "2024-04-31T10:00:00Z"),
    ("instant", "2015-02-07"),
    ("time", "24:00:00"),
    ("time", "10:00"),
]


def _suffix(type_name: str) -> str:
    return type_name[0].upper() + type_name[1:]


@pytest.mark.parametrize(("type_name", "value"), VALID_PRIMITIVES)
def test_primitive_accepts_its_lexical_forms(type_name: str, value: Any) -> None:
    ext = {"url": "http://example.org/x", f"value{_suffix(type_name)}": value}
    assert check(with_extension(ext)) == []


@pytest.mark.parametrize(("type_name", "value"), INVALID_PRIMITIVES)
def test_primitive_rejects_values_outside_its_rules(type_name: str, value: Any) -> None:
    ext = {"url": "http://example.org/x", f"value{_suffix(type_name)}": value}
    assert expressions(check(with_extension(ext))) == {f"Patient.extension[0].value.ofType({type_name})"}


def test_wrong_lexical_form_is_a_value_issue() -> None:
    assert found(check({"resourceType": "Patient", "birthDate": "1 May 1970"})) == {("value", "Patient.birthDate")}


def test_resource_id_follows_the_id_type() -> None:
    assert found(check({"resourceType": "Patient", "id": "bad_id"})) == {("value", "Patient.id")}


def test_element_id_is_a_string_not_an_id() -> None:
    assert check({"resourceType": "Patient", "name": [{"id": "any string_ok", "text": "x"}]}) == []


def test_string_over_one_megabyte_is_rejected() -> None:
    resource = {"resourceType": "Patient", "name": [{"text": "x" * (1024 * 1024 + 1)}]}
    assert expressions(check(resource)) == {"Patient.name[0].text"}


def test_narrative_div_must_be_xhtml() -> None:
    resource = {"resourceType": "Patient", "text": {"status": "generated", "div": "plain text"}}
    assert found(check(resource)) == {("value", "Patient.text.div")}


def test_base64_check_stays_linear_on_long_invalid_input() -> None:
    data = "QUJD\r\n" * 20000 + "QUJ"
    resource = {"resourceType": "Binary", "contentType": "text/plain", "data": data}
    started = time.perf_counter()
    issues = check(resource)
    assert expressions(issues) == {"Binary.data"}
    assert time.perf_counter() - started < 1.0


def test_narrative_div_has_no_extension_form() -> None:
    div = '<div xmlns="http://www.w3.org/1999/xhtml">x</div>'
    text = {"status": "generated", "div": div, "_div": {"id": "d"}}
    assert found(check({"resourceType": "Patient", "text": text})) == {("structure", "Patient.text._div")}


# primitive extensions: the _element form


def test_primitive_extension_form_is_accepted() -> None:
    resource = {
        "resourceType": "Patient",
        "birthDate": "1970-03-30",
        "_birthDate": {
            "id": "bd",
            "extension": [{"url": "http://example.org/time", "valueTime": "14:35:45"}],
        },
    }
    assert check(resource) == []


def test_primitive_extension_content_is_validated() -> None:
    resource = {"resourceType": "Patient", "_birthDate": {"extension": [{"valueTime": "14:35"}]}}
    assert found(check(resource)) == {
        ("required", "Patient.birthDate.extension[0].url"),
        ("value", "Patient.birthDate.extension[0].value.ofType(time)"),
    }


def test_primitive_extension_has_no_value_property() -> None:
    issues = check(
        {
            "resourceType": "Observation",
            "status": "final",
            "code": OBS_CODE,
            "_valueInteger": {"value": 0},
        }
    )
    assert found(issues) == {("structure", "Observation.value.ofType(integer).value")}


def test_required_primitive_may_be_present_as_extension_only() -> None:
    ext = {
        "url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason",
        "valueCode": "unknown",
    }
    resource = {"resourceType": "Observation", "_status": {"extension": [ext]}, "code": OBS_CODE}
    assert check(resource) == []


def test_primitive_arrays_align_with_nulls() -> None:
    ext = {"url": "http://example.org/x", "valueString": "y"}
    name = {"given": ["Peter", None, "James"], "_given": [None, {"extension": [ext]}, None]}
    assert check({"resourceType": "Patient", "name": [name]}) == []


def test_null_in_primitive_array_needs_an_extension_at_the_same_index() -> None:
    name = {"given": ["Peter", None]}
    assert found(check({"resourceType": "Patient", "name": [name]})) == {("structure", "Patient.name[0].given[1]")}


def test_primitive_extension_array_must_match_the_value_array_length() -> None:
    ext = {"url": "http://example.org/x", "valueString": "y"}
    name = {"given": ["Peter", "James"], "_given": [{"extension": [ext]}]}
    assert found(check({"resourceType": "Patient", "name": [name]})) == {("structure", "Patient.name[0].given")}


def test_complex_element_has_no_underscore_form() -> None:
    resource = {"resourceType": "Patient", "_name": [{"extension": []}]}
    assert found(check(resource)) == {("structure", "Patient._name")}


# cardinality


def test_missing_required_element_is_reported_at_its_path() -> None:
    assert found(check({"resourceType": "Observation", "code": OBS_CODE})) == {("required", "Observation.status")}


def test_missing_required_element_inside_a_backbone_element() -> None:
    resource = {"resourceType": "Patient", "communication": [{"preferred": True}]}
    assert found(check(resource)) == {("required", "Patient.communication[0].language")}


def test_missing_required_element_inside_a_data_type() -> None:
    assert found(check(with_extension({"valueString": "x"}))) == {("required", "Patient.extension[0].url")}


def test_missing_required_choice_element() -> None:
    resource = {
        "resourceType": "Questionnaire",
        "status": "draft",
        "item": [
            {
                "linkId": "2",
                "type": "string",
                "enableWhen": [{"question": "1", "operator": "exists"}],
            }
        ],
    }
    assert found(check(resource)) == {("required", "Questionnaire.item[0].enableWhen[0].answer")}


def test_data_type_element_rules_apply_in_every_data_type() -> None:
    resource = {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:x", "value": "1", "period": {"start": "soon"}}],
        "managingOrganization": {"reference": "Organization/1", "display": 7},
        "name": [{"use": "alias", "family": ["Chalmers"]}],
    }
    assert expressions(check(resource)) == {
        "Patient.identifier[0].period.start",
        "Patient.managingOrganization.display",
        "Patient.name[0].use",
        "Patient.name[0].family",
    }


# choice types


def test_only_one_type_of_a_choice_element_may_be_present() -> None:
    resource = {"resourceType": "Patient", "deceasedBoolean": True, "deceasedDateTime": "2020"}
    assert found(check(resource)) == {("structure", "Patient.deceased")}


def test_choice_value_is_validated_as_the_type_its_suffix_names() -> None:
    assert found(check(observation(valuePeriod={"start": "2020-01-01", "end": "tomorrow"}))) == {
        ("value", "Observation.value.ofType(Period).end")
    }


def test_choice_value_and_its_extension_form_may_coexist() -> None:
    ext = {"url": "http://example.org/x", "valueString": "y"}
    assert check(observation(valueString="7", _valueString={"extension": [ext]})) == []


# contentReference


def test_content_reference_element_is_validated_like_its_target() -> None:
    resource = {
        "resourceType": "Questionnaire",
        "status": "draft",
        "item": [{"linkId": "1", "type": "group", "item": [{"type": "bogus", "text": "x"}]}],
    }
    assert found(check(resource)) == {
        ("required", "Questionnaire.item[0].item[0].linkId"),
        ("code-invalid", "Questionnaire.item[0].item[0].type"),
    }


def test_value_set_exclude_is_validated_like_include() -> None:
    resource = {
        "resourceType": "ValueSet",
        "status": "draft",
        "compose": {
            "include": [{"system": "http://loinc.org"}],
            "exclude": [{"system": "http://loinc.org", "concept": [{"display": "no code"}]}],
        },
    }
    assert found(check(resource)) == {("required", "ValueSet.compose.exclude[0].concept[0].code")}


# extensions


def test_extension_needs_a_value_or_nested_extensions() -> None:
    assert found(check(with_extension({"url": "http://example.org/x"}))) == {("invariant", "Patient.extension[0]")}


def test_extension_cannot_have_both_a_value_and_nested_extensions() -> None:
    ext = {
        "url": "http://example.org/x",
        "valueString": "y",
        "extension": [{"url": "z", "valueCode": "a"}],
    }
    assert found(check(with_extension(ext))) == {("invariant", "Patient.extension[0]")}


def test_nested_extensions_are_validated() -> None:
    ext = {"url": "http://example.org/x", "extension": [{"url": "part", "valueInteger": "1"}]}
    assert found(check(with_extension(ext))) == {
        ("structure", "Patient.extension[0].extension[0].value.ofType(integer)")
    }


def test_core_extension_value_must_have_the_type_its_definition_names() -> None:
    ext = {
        "url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime",
        "valueString": "14:35",
    }
    assert found(check(with_extension(ext))) == {("structure", "Patient.extension[0].value.ofType(string)")}


def test_core_extension_with_the_right_value_type_is_accepted() -> None:
    ext = {
        "url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime",
        "valueDateTime": "1970-03-30T14:35:00Z",
    }
    assert check(with_extension(ext)) == []


def test_unknown_extension_urls_are_accepted() -> None:
    assert check(with_extension({"url": "http://example.org/anything", "valueAge": {"value": 3}})) == []


def test_modifier_extensions_follow_the_extension_rules() -> None:
    resource = {"resourceType": "Patient", "modifierExtension": [{"valueBoolean": True}]}
    assert found(check(resource)) == {("required", "Patient.modifierExtension[0].url")}


def test_element_with_only_an_id_has_no_value_or_children() -> None:
    assert found(check({"resourceType": "Patient", "maritalStatus": {"id": "m"}})) == {
        ("invariant", "Patient.maritalStatus")
    }


# required bindings


def test_code_outside_a_required_value_set_is_rejected() -> None:
    assert found(check(observation(status="bogus"))) == {("code-invalid", "Observation.status")}


def test_code_inside_a_required_value_set_is_accepted() -> None:
    assert check(observation(status="amended")) == []


def test_repeating_code_is_checked_per_value() -> None:
    resource = {
        "resourceType": "Questionnaire",
        "status": "draft",
        "subjectType": ["Patient", "Patientt"],
    }
    assert found(check(resource)) == {("code-invalid", "Questionnaire.subjectType[1]")}


def test_required_binding_inside_a_data_type_is_enforced() -> None:
    assert found(check({"resourceType": "Patient", "telecom": [{"system": "pager2"}]})) == {
        ("code-invalid", "Patient.telecom[0].system")
    }


CLINICAL = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical"


def allergy(clinical_status: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "AllergyIntolerance",
        "patient": {"reference": "Patient/1"},
        "clinicalStatus": clinical_status,
    }


def test_codeable_concept_needs_a_coding_from_the_required_value_set() -> None:
    issues = check(allergy({"coding": [{"system": CLINICAL, "code": "gone"}]}))
    assert found(issues) == {("code-invalid", "AllergyIntolerance.clinicalStatus.coding")}


def test_codeable_concept_with_one_coding_in_the_value_set_is_accepted() -> None:
    codings = [
        {"system": "http://example.org/local", "code": "x"},
        {"system": CLINICAL, "code": "active"},
    ]
    assert check(allergy({"coding": codings})) == []


def test_codeable_concept_with_text_only_is_not_checked() -> None:
    assert check(allergy({"text": "active"})) == []


def test_coding_system_matters_not_only_the_code() -> None:
    issues = check(allergy({"coding": [{"system": "http://example.org/other", "code": "active"}]}))
    assert found(issues) == {("code-invalid", "AllergyIntolerance.clinicalStatus.coding")}


def test_extensible_binding_is_not_enforced() -> None:
    status = {"coding": [{"system": "http://example.org/local", "code": "x"}]}
    assert check({"resourceType": "Patient", "maritalStatus": status}) == []


def test_binding_to_a_value_set_of_an_external_system_is_not_enforced() -> None:
    resource = {"resourceType": "Binary", "contentType": "application/x-made-up"}
    assert check(resource) == []


class _TagsBoundToGender(Definitions):
    """The R4 definitions with Meta.tag bound (required) to administrative-gender."""

    @cached_property
    def structure_definitions(self) -> dict[str, Any]:
        out = dict(definitions().structure_definitions)
        meta = copy.deepcopy(out["Meta"])
        for element in meta["snapshot"]["element"]:
            if element["path"] == "Meta.tag":
                element["binding"] = {
                    "strength": "required",
                    "valueSet": "http://hl7.org/fhir/ValueSet/administrative-gender",
                }
        out["Meta"] = meta
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(definitions(), name)


def test_coding_with_a_required_binding_is_checked_by_system_and_code() -> None:
    checker = Validator(_TagsBoundToGender())
    system = "http://hl7.org/fhir/administrative-gender"

    def tag(code: str) -> list[Issue]:
        return checker.validate({"resourceType": "Patient", "meta": {"tag": [{"system": system, "code": code}]}})

    assert tag("female") == []
    assert found(tag("bogus")) == {("code-invalid", "Patient.meta.tag[0]")}


# value set resolution


def _terminology(**parts: Any) -> Any:
    return SimpleNamespace(value_sets={}, code_systems={}, expansions={}, **parts)


def _code_system(url: str, concepts: list[Any], content: str = "complete") -> dict[str, Any]:
    return {"resourceType": "CodeSystem", "url": url, "content": content, "concept": concepts}


def test_value_set_from_concept_list_resolves_to_those_codes() -> None:
    defs = _terminology()
    defs.value_sets["urn:vs"] = {
        "url": "urn:vs",
        "compose": {"include": [{"system": "http://unitsofmeasure.org", "concept": [{"code": "s"}, {"code": "min"}]}]},
    }
    code_set = ValueSetResolver(defs).resolve("urn:vs|1.0")
    assert code_set is not None
    assert code_set.codes == {"s", "min"}


def test_value_set_including_a_whole_shipped_code_system_has_all_its_codes() -> None:
    defs = _terminology()
    defs.code_systems["urn:cs"] = _code_system("urn:cs", [{"code": "a", "concept": [{"code": "b"}]}])
    defs.value_sets["urn:vs"] = {"url": "urn:vs", "compose": {"include": [{"system": "urn:cs"}]}}
    code_set = ValueSetResolver(defs).resolve("urn:vs")
    assert code_set is not None
    assert code_set.pairs == {("urn:cs", "a"), ("urn:cs", "b")}


def test_value_set_hierarchy_filter_and_exclude_are_evaluated() -> None:
    defs = _terminology()
    defs.code_systems["urn:cs"] = _code_system(
        "urn:cs",
        [{"code": "root", "concept": [{"code": "x", "concept": [{"code": "y"}]}, {"code": "z"}]}],
    )
    defs.value_sets["urn:vs"] = {
        "url": "urn:vs",
        "compose": {
            "include": [
                {
                    "system": "urn:cs",
                    "filter": [{"property": "concept", "op": "descendent-of", "value": "root"}],
                }
            ],
            "exclude": [{"system": "urn:cs", "concept": [{"code": "z"}]}],
        },
    }
    code_set = ValueSetResolver(defs).resolve("urn:vs")
    assert code_set is not None
    assert code_set.codes == {"x", "y"}


def test_value_set_over_an_external_code_system_is_not_resolved() -> None:
    defs = _terminology()
    defs.value_sets["urn:vs"] = {
        "url": "urn:vs",
        "compose": {"include": [{"system": "http://snomed.info/sct"}]},
    }
    assert ValueSetResolver(defs).resolve("urn:vs") is None


def test_value_set_with_a_filter_we_cannot_evaluate_is_not_resolved() -> None:
    defs = _terminology()
    defs.code_systems["urn:cs"] = _code_system("urn:cs", [{"code": "a"}])
    defs.value_sets["urn:vs"] = {
        "url": "urn:vs",
        "compose": {"include": [{"system": "urn:cs", "filter": [{"property": "status", "op": "=", "value": "x"}]}]},
    }
    assert ValueSetResolver(defs).resolve("urn:vs") is None


def test_incomplete_expansion_is_not_trusted() -> None:
    defs = _terminology()
    defs.code_systems["urn:cs"] = _code_system("urn:cs", [{"code": "a"}, {"code": "b"}])
    defs.value_sets["urn:vs"] = {"url": "urn:vs", "compose": {"include": [{"system": "urn:cs"}]}}
    defs.expansions["urn:vs"] = {
        "url": "urn:vs",
        "expansion": {"total": 2, "contains": [{"system": "urn:cs", "code": "a"}]},
    }
    code_set = ValueSetResolver(defs).resolve("urn:vs")
    assert code_set is not None
    assert code_set.codes == {"a", "b"}


# references


@pytest.mark.parametrize(
    "reference",
    [
        "Patient/123",
        "Patient/123/_history/2",
        "http://example.org/fhir/Patient/123",
        "https://example.org/fhir/Group/9/_history/1",
        "urn:uuid:c757873d-ec9a-4326-a141-556f43239520",
        "urn:oid:1.2.3.4",
    ],
)
def test_well_formed_reference_is_accepted(reference: str) -> None:
    assert check(observation(subject={"reference": reference})) == []


@pytest.mark.parametrize(
    "reference",
    [
        "Patient",
        "Patient/",
        "Patient/has space",
        "patient/1",
        "Patient/1/_history/",
        "urn:uuid:not-a-uuid",
        "urn:oid:1.2.x",
        "123",
        "Patient/a_b",
    ],
)
def test_malformed_reference_is_rejected(reference: str) -> None:
    assert found(check(observation(subject={"reference": reference}))) == {("invalid", "Observation.subject.reference")}


def test_reference_to_a_type_the_element_does_not_allow_is_rejected() -> None:
    assert found(check(observation(subject={"reference": "Medication/1"}))) == {
        ("structure", "Observation.subject.reference")
    }


def test_reference_to_an_unknown_resource_type_is_rejected() -> None:
    assert found(check(observation(subject={"reference": "Patientt/1"}))) == {
        ("invalid", "Observation.subject.reference")
    }


def test_reference_in_a_choice_element_checks_targets() -> None:
    resource = {
        "resourceType": "Condition",
        "subject": {"reference": "Patient/1"},
        "abatementString": "x",
        "onsetAge": {"value": 3},
        "evidence": [{"detail": [{"reference": "Anything/1"}]}],
    }
    assert found(check(resource)) == {("invalid", "Condition.evidence[0].detail[0].reference")}


def test_reference_allowing_any_resource_accepts_every_known_type() -> None:
    resource = {
        "resourceType": "Condition",
        "subject": {"reference": "Patient/1"},
        "evidence": [{"detail": [{"reference": "Medication/1"}]}],
    }
    assert check(resource) == []


def test_local_reference_must_name_a_contained_resource() -> None:
    assert found(check(observation(subject={"reference": "#p1"}))) == {("not-found", "Observation.subject.reference")}


def test_local_reference_to_a_contained_resource_is_accepted() -> None:
    contained = [{"resourceType": "Patient", "id": "p1"}]
    assert check(observation(contained=contained, subject={"reference": "#p1"})) == []


def test_contained_resource_may_refer_to_its_container() -> None:
    contained = [
        {
            "resourceType": "Provenance",
            "id": "prov",
            "recorded": "2020-01-01T00:00:00Z",
            "agent": [{"who": {"display": "x"}}],
            "target": [{"reference": "#"}],
        }
    ]
    assert check(observation(contained=contained)) == []


def test_conditional_reference_is_accepted_only_in_transactions() -> None:
    obs = observation(subject={"reference": "Patient?identifier=urn:x|1"})
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"resource": obs, "request": {"method": "POST", "url": "Observation"}}],
    }
    assert check(bundle) == []
    assert found(check(obs)) == {("invalid", "Observation.subject.reference")}


# contained and nested resources


def test_contained_resource_is_validated_as_its_own_type() -> None:
    resource = {
        "resourceType": "Patient",
        "contained": [{"resourceType": "Organization", "id": "o1", "name": ["Acme"]}],
    }
    assert found(check(resource)) == {("structure", "Patient.contained[0].name")}


def test_contained_resource_needs_an_id() -> None:
    resource = {
        "resourceType": "Patient",
        "contained": [{"resourceType": "Organization", "name": "Acme"}],
    }
    assert found(check(resource)) == {("required", "Patient.contained[0].id")}


def test_contained_resource_cannot_contain_resources() -> None:
    inner = {"resourceType": "Organization", "id": "o2", "name": "Inner"}
    resource = {
        "resourceType": "Patient",
        "contained": [{"resourceType": "Organization", "id": "o1", "contained": [inner]}],
    }
    assert ("invariant", "Patient.contained[0].contained") in found(check(resource))


def test_contained_resource_has_no_version_metadata() -> None:
    meta = {"versionId": "1", "lastUpdated": "2020-01-01T00:00:00Z"}
    resource = {
        "resourceType": "Patient",
        "contained": [{"resourceType": "Organization", "id": "o1", "name": "Acme", "meta": meta}],
    }
    assert found(check(resource)) == {
        ("invariant", "Patient.contained[0].meta.versionId"),
        ("invariant", "Patient.contained[0].meta.lastUpdated"),
    }


def test_contained_entry_must_be_a_known_resource() -> None:
    resource = {"resourceType": "Patient", "contained": [{"resourceType": "Nothing", "id": "x"}]}
    assert found(check(resource)) == {("structure", "Patient.contained[0].resourceType")}


def test_bundle_entry_resource_is_validated_as_the_resource_it_is() -> None:
    entries = [
        {
            "fullUrl": "urn:uuid:c757873d-ec9a-4326-a141-556f43239520",
            "resource": {"resourceType": "Patient", "id": "p"},
        },
        {"resource": {"resourceType": "Organization", "name": "Acme"}},
        {"resource": observation(subject={"reference": "Medication/1"})},
    ]
    issues = check({"resourceType": "Bundle", "type": "collection", "entry": entries})
    assert found(issues) == {("structure", "Bundle.entry[2].resource.subject.reference")}


def test_local_references_resolve_within_their_own_entry() -> None:
    entries = [
        {
            "resource": {
                "resourceType": "Patient",
                "id": "p",
                "contained": [{"resourceType": "Organization", "id": "o", "name": "x"}],
                "managingOrganization": {"reference": "#o"},
            }
        },
        {"resource": {"resourceType": "Patient", "managingOrganization": {"reference": "#o"}}},
    ]
    issues = check({"resourceType": "Bundle", "type": "collection", "entry": entries})
    assert found(issues) == {("not-found", "Bundle.entry[1].resource.managingOrganization.reference")}


def test_parameters_resource_is_validated_as_the_resource_it_is() -> None:
    resource = {
        "resourceType": "Parameters",
        "parameter": [{"name": "p", "resource": {"resourceType": "Patient", "gender": "unknownish"}}],
    }
    assert found(check(resource)) == {("code-invalid", "Parameters.parameter[0].resource.gender")}


def test_parameters_parts_are_validated_like_parameters() -> None:
    resource = {
        "resourceType": "Parameters",
        "parameter": [{"name": "outer", "part": [{"valueString": "no name"}]}],
    }
    assert found(check(resource)) == {("required", "Parameters.parameter[0].part[0].name")}


# the validator object


def test_too_deeply_nested_input_is_an_issue_not_a_crash() -> None:
    extension: dict[str, Any] = {"url": "x", "valueString": "leaf"}
    for _ in range(2000):
        extension = {"url": "x", "extension": [extension]}
    issues = validator().validate({"resourceType": "Patient", "extension": [extension]})
    assert [i.code for i in issues] == ["too-costly"]


def test_validator_is_one_cached_instance() -> None:
    assert validator() is validator()


def test_rules_of_a_type_are_compiled_once() -> None:
    compiler = validator().compiler
    assert compiler.type_model("Patient") is compiler.type_model("Patient")
    assert compiler.resource_model("NoSuchType") is None


def test_a_value_is_checked_for_each_type_however_often_it_was_seen_before():
    # Valid strings are remembered per primitive type; that must not let a value
    # that is valid as a string pass as a code, nor an invalid value pass the second time.
    v = validator()
    for _ in range(3):
        assert not v.validate({"resourceType": "Patient", "name": [{"text": "two  words"}]})
        issues = v.validate({"resourceType": "Patient", "gender": "two  words"})
        assert any(i.expression == "Patient.gender" for i in issues)
        issues = v.validate({"resourceType": "Patient", "birthDate": "2023-02-31"})
        assert any("calendar" in i.diagnostics for i in issues)
