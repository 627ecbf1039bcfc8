"""Search parameter parsing: escaping, modifiers, prefixes, and values kept out of SQL."""

from __future__ import annotations

import pytest

from headless_ehr.fhir.outcome import FhirError
from headless_ehr.search.parse import Parser, split_or, split_prefix
from headless_ehr.search.query import filter_sql, parse_request
from headless_ehr.search.sql import SqlBuilder


def compile_one(rtype: str, params: list[tuple[str, str]], strict: bool = True) -> tuple[str, list]:
    request = parse_request([rtype], params, strict=strict)
    b = SqlBuilder()
    return filter_sql(b, request), b.args


def test_comma_separates_alternatives_unless_escaped():
    assert split_or("a,b") == ["a", "b"]
    assert split_or(r"a\,b,c") == [r"a\,b", "c"]


def test_prefix_is_split_only_when_followed_by_a_value():
    assert split_prefix("ge2020") == ("ge", "2020")
    assert split_prefix("2020") == ("eq", "2020")
    assert split_prefix("ap10") == ("ap", "10")


@pytest.mark.parametrize(
    "name,value",
    [
        ("identifier", "x'); DROP TABLE resource; --"),
        ("name", "Robert'); DELETE FROM resource; --"),
        ("_id", "abc"),
        ("general-practitioner", "Practitioner/1' OR '1'='1"),
    ],
)
def test_values_are_bind_parameters_never_sql_text(name, value):
    sql, _args = compile_one("Patient", [(name, value)])
    assert value not in sql
    assert "'" not in sql.replace("'simple'", "")  # no literal built from input


def test_unknown_parameter_is_reported_in_lenient_mode():
    parser = Parser("Patient", strict=False)
    assert parser.parse([("nonsense", "1")]) == []
    assert parser.issues and "nonsense" in parser.issues[0].diagnostics


def test_unknown_parameter_is_400_in_strict_mode():
    with pytest.raises(FhirError) as err:
        compile_one("Patient", [("nonsense", "1")])
    assert err.value.status == 400


@pytest.mark.parametrize(
    "name,value",
    [
        ("_id", "a b"),
        ("_count", "many"),
        ("birthdate", "yesterday"),
        ("birthdate", "2020-13-01"),
        ("birthdate", "xx2020"),
        ("gender:bogus", "male"),
        ("name:missing", "maybe"),
    ],
)
def test_malformed_values_are_400(name, value):
    with pytest.raises(FhirError) as err:
        compile_one("Patient", [(name, value)])
    assert err.value.status == 400


def test_chain_through_non_reference_is_400():
    with pytest.raises(FhirError):
        compile_one("Patient", [("gender.name", "x")])


def test_chain_depth_is_limited():
    with pytest.raises(FhirError):
        compile_one("Patient", [("link:Patient." * 6 + "name", "x")])


def test_has_needs_type_reference_and_parameter():
    with pytest.raises(FhirError):
        compile_one("Patient", [("_has:Observation:patient", "x")])


def test_composite_needs_all_components():
    with pytest.raises(FhirError):
        compile_one("Observation", [("code-value-quantity", "http://loinc.org|8480-6")])
