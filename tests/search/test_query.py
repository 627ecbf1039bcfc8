"""Search parameter parsing: escaping, token forms, and values kept out of SQL text."""

from __future__ import annotations

import pytest

from headless_ehr.fhir.outcome import FhirError
from headless_ehr.search.extract import token_rows
from headless_ehr.search.query import compile_search, split_or


def test_comma_separates_alternatives_unless_escaped():
    assert split_or("a,b") == ["a", "b"]
    assert split_or(r"a\,b,c") == [r"a\,b", "c"]


def test_values_are_bind_parameters_never_sql_text():
    evil = "x'); DROP TABLE resource; --"
    query = compile_search("Patient", [("identifier", evil)], strict=True)
    assert evil not in " ".join(query.where)
    assert evil in query.args


def test_unknown_parameter_is_reported_in_lenient_mode():
    query = compile_search("Patient", [("nonsense", "1")], strict=False)
    assert query.issues and "nonsense" in query.issues[0].diagnostics


def test_unknown_parameter_is_400_in_strict_mode():
    with pytest.raises(FhirError) as err:
        compile_search("Patient", [("nonsense", "1")], strict=True)
    assert err.value.status == 400


def test_bad_id_is_400():
    with pytest.raises(FhirError):
        compile_search("Patient", [("_id", "a b")], strict=True)


def test_bad_count_is_400():
    with pytest.raises(FhirError):
        compile_search("Patient", [("_count", "many")], strict=True)


def test_identifier_token_rows_carry_system_and_value():
    rows = token_rows(
        {
            "resourceType": "Patient",
            "identifier": [{"system": "urn:s", "value": "1"}, {"value": "2"}],
            "gender": "male",
        }
    )
    assert ("identifier", "urn:s", "1") in rows
    assert ("identifier", None, "2") in rows
    assert ("gender", None, "male") in rows


def test_codeable_concept_token_rows_come_from_each_coding():
    rows = token_rows(
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "1234-5"}, {"code": "x"}]},
        }
    )
    assert ("code", "http://loinc.org", "1234-5") in rows
    assert ("code", None, "x") in rows
    assert ("status", None, "final") in rows
