"""The validator against large public sets: the R4 examples and the official validator tests.

Both sets live in ../shared/fhir (see its README); the tests skip when it is absent.

- Every R4 example, US Core example and Synthea Bundle must validate, except the
  official examples in KNOWN_INVALID_EXAMPLES, each rejected for its stated reason.
- For the in-scope cases of the Java reference validator's R4 test suite, we must say
  "invalid" exactly when the Java validator reports an error of a kind we check.
"""

from __future__ import annotations

import gzip
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from headless_ehr.fhir.definitions import definitions
from headless_ehr.fhir.json import JsonError, loads
from headless_ehr.fhir.outcome import Issue
from headless_ehr.fhir.validation import validator

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "fhir"
EXAMPLES = SHARED / "examples-r4"
US_CORE = SHARED / "us-core"
SYNTHEA = SHARED / "synthea"
CASES = SHARED / "validator-cases"

# file -> (an expression that must be reported, why the official example is invalid)
KNOWN_INVALID_EXAMPLES: dict[str, tuple[str, str]] = {
    "Questionnaire-qs1.json": (
        "Questionnaire.item[0].item[0].linkId",
        "nested items lack the required linkId",
    ),
    **{
        f"SearchParameter-{name}.json": ("SearchParameter.base", "lacks the required base")
        for name in (
            "codesystem-extensions-CodeSystem-effective",
            "codesystem-extensions-CodeSystem-end",
            "codesystem-extensions-CodeSystem-keyword",
            "codesystem-extensions-CodeSystem-workflow",
            "valueset-extensions-ValueSet-author",
            "valueset-extensions-ValueSet-end",
            "valueset-extensions-ValueSet-keyword",
            "valueset-extensions-ValueSet-workflow",
        )
    },
    "SearchParameter-questionnaireresponse-extensions-QuestionnaireResponse-item-subject.json": (
        "SearchParameter.id",
        "its id has 67 characters; the id type allows at most 64",
    ),
    "ActivityDefinition-blood-tubes-supply.json": (
        "ActivityDefinition.text.div",
        "its narrative is an empty div; txt-2 requires some non-whitespace content",
    ),
    "DeviceMetric-example.json": (
        "DeviceMetric.parent.reference",
        "parent refers to a DeviceDefinition; R4 DeviceMetric.parent allows only Device",
    ),
    "DeviceUseStatement-example.json": (
        "DeviceUseStatement.reasonReference[0].reference",
        "reasonReference refers to a Procedure, which R4 does not allow there",
    ),
    "us-core/3.1.1/DiagnosticReport-cardiology-report.json": (
        "DiagnosticReport.presentedForm[0].hash",
        "presentedForm.hash 'EQH/..AgME' is not base64",
    ),
}


def _skip_param(reason: str) -> Any:
    return pytest.param(None, marks=pytest.mark.skip(reason=reason), id="absent")


def _example_files() -> list[Any]:
    if not EXAMPLES.is_dir():
        return [_skip_param(f"{EXAMPLES} is absent")]
    paths = [
        *sorted(EXAMPLES.glob("*.json")),
        *sorted(US_CORE.glob("*/package/example/*.json")),
        *sorted(SYNTHEA.glob("*.json")),
    ]
    return [pytest.param(p, id=_key(p)) for p in paths if not p.name.startswith(".")]


def _key(path: Path) -> str:
    if US_CORE in path.parents:
        return f"us-core/{path.parts[-4]}/{path.name}"
    if SYNTHEA in path.parents:
        return f"synthea/{path.name}"
    return path.name


def _read(path: Path) -> Any:
    data = path.read_bytes()
    return loads(gzip.decompress(data) if path.suffix == ".gz" else data)


def _describe(issues: list[Issue]) -> list[str]:
    return [f"{i.code} {i.expression}: {i.diagnostics}" for i in issues[:10]]


@pytest.mark.parametrize("path", _example_files())
def test_public_example_validates_or_is_known_invalid(path: Path) -> None:
    issues = validator().validate(_read(path))
    known = KNOWN_INVALID_EXAMPLES.get(_key(path))
    if known is None:
        assert issues == [], _describe(issues)
    else:
        expression, reason = known
        assert expression in {i.expression for i in issues}, f"expected: {reason}"


def test_known_invalid_examples_all_exist() -> None:
    if not EXAMPLES.is_dir():
        pytest.skip(f"{EXAMPLES} is absent")
    present = {_key(p) for p in EXAMPLES.glob("*.json")}
    present |= {_key(p) for p in US_CORE.glob("*/package/example/*.json")}
    assert set(KNOWN_INVALID_EXAMPLES) <= present


def test_validating_the_example_corpus_is_fast() -> None:
    """Targets: Patient-example well under 100 µs; a generous bound here, to catch regressions."""
    patient = EXAMPLES / "Patient-example.json"
    if not patient.exists():
        pytest.skip(f"{patient} is absent")
    resource = _read(patient)
    check = validator()
    check.validate(resource)
    runs = 500
    started = time.perf_counter()
    for _ in range(runs):
        check.validate(resource)
    per_resource = (time.perf_counter() - started) / runs
    assert per_resource < 0.001, f"{per_resource * 1e6:.0f} µs per Patient-example"


# the Java validator's test cases

OUT_OF_SCOPE_MODULES = frozenset({"tx", "tx-advanced", "cda", "cdshooks", "shc"})
NEEDS_SETUP = ("packages", "supporting", "profiles", "profile", "logical")

# Java error messages of the kinds we check: JSON syntax and shape, unknown elements,
# cardinality, primitive lexical rules, required bindings, reference form and target.
CHECKED_KINDS = re.compile(
    "|".join(
        [
            r"Error parsing JSON",
            r"Comments are not allowed",
            r"Comma is missing",
            r"extra comma",
            r"has no quotes",
            r"Unrecognized property",
            r"The property '?\w+'? is invalid",
            r"must be a JSON Array",
            r"must be an (Object|Array)",
            r"Array cannot be empty",
            r"minimum required = ",
            r"maximum allowed = ",
            r"Extension\.url is required",
            r"Not a valid date",
            r"must have a timezone",
            r"is not a valid Base64 value",
            r"not valid base64",
            r"Invalid Resource id",
            r"longer than permitted maximum length",
            r"definition allows for the types",
            r"was not found in the value set",
            r"System URI could not be determined",
            r"Relative URLs must be of the format",
            r"Unable to resolve resource with reference '#",
            r"is not a valid Target",
            r"Constraint failed: txt-",
            r"(in|on) the XHTML",
        ]
    )
)
# "(from <profile>)" in a cardinality message: only the base definitions are ours.
FROM_PROFILE = re.compile(r"\(from http://hl7\.org/fhir/StructureDefinition/(\w+)\|4\.0\.1\)")

# case name -> why our answer differs from Java's
SKIPPED_CASES: dict[str, str] = {
    "contained-resource-bad-id-ignore": "validateContains=IGNORE turns off Java's checks of "
    "contained resources; we always check them (the CHECK_VALID twin of this case agrees)",
    "json-comments-1-yes": "allow-comments makes Java accept JSON with comments; we parse strict JSON only",
    "json-comments-2-yes": "allow-comments makes Java accept JSON with comments; we parse strict JSON only",
    "ref-policy-default-r4": "Java only warns that 'urn:uuid:…-X' is unresolved; R4 requires "
    "a UUID after urn:uuid:, so we reject the malformed reference",
    "ref-policy-default-apply-r5": "Java only warns that 'urn:uuid:…-X' is unresolved; R4 "
    "requires a UUID after urn:uuid:, so we reject the malformed reference",
}


@dataclass(frozen=True)
class Case:
    name: str
    file: Path
    outcome: Path


def _in_scope(case: dict[str, Any]) -> bool:
    return (
        case["file"].endswith(".json")
        and not any(case.get(key) for key in NEEDS_SETUP)
        and case.get("module") not in OUT_OF_SCOPE_MODULES
        and case.get("use-test", True) is not False
        and isinstance(case.get("java"), str)
        and (CASES / "outcomes" / case["java"]).is_file()
    )


def _cases() -> list[Case]:
    manifest = json.loads((CASES / "manifest-r4.json").read_bytes())
    return [
        Case(c["name"], CASES / c["file"], CASES / "outcomes" / c["java"])
        for c in manifest["test-cases"]
        if _in_scope(c)
    ]


def _case_params() -> list[Any]:
    if not (CASES / "manifest-r4.json").is_file():
        return [_skip_param(f"{CASES} is absent")]
    return [pytest.param(case, id=case.name) for case in _cases()]


def _is_checked_kind(issue: dict[str, Any]) -> bool:
    text = issue.get("details", {}).get("text", "")
    if not CHECKED_KINDS.search(text):
        return False
    profile = FROM_PROFILE.search(text)
    return profile is None or profile.group(1) in definitions().structure_definitions


def _java_expression(expression: str) -> str:
    """Java annotates nested resources: `entry[0].resource/*Patient/1*/.name`."""
    return re.sub(r"/\*.*?\*/", "", expression)


def _within(ours: str | None, java: str) -> bool:
    """Java reports some issues at the parent (missing or unknown child); we at the child."""
    return ours is not None and (ours == java or ours.startswith((java + ".", java + "[")))


def _disagreement(case: Case) -> str | None:
    """Why our verdict differs from Java's on the checked kinds, or None if it agrees."""
    outcome = json.loads(case.outcome.read_bytes())
    expected = [
        issue
        for issue in outcome.get("issue", [])
        if issue["severity"] in ("error", "fatal") and _is_checked_kind(issue)
    ]
    try:
        issues = validator().validate(loads(case.file.read_bytes()))
    except JsonError as exc:
        return None if expected else f"we fail to parse it ({exc}); Java found no checked error"
    if not expected:
        return f"Java found no checked error; we report {_describe(issues)}" if issues else None
    if not issues:
        return f"Java reports {[i['details']['text'] for i in expected]}; we found nothing"
    missed = [
        java
        for issue in expected
        for java in map(_java_expression, issue.get("expression", []))
        if not any(_within(i.expression, java) for i in issues)
    ]
    return f"we report nothing at {missed}: {_describe(issues)}" if missed else None


@pytest.mark.parametrize("case", _case_params())
def test_validator_case_agrees_with_java(case: Case) -> None:
    problem = _disagreement(case)
    if case.name in SKIPPED_CASES:
        assert problem is not None, f"{case.name} now agrees with Java: drop it from SKIPPED_CASES"
        pytest.skip(SKIPPED_CASES[case.name])
    assert problem is None, problem


def test_validator_case_selection_covers_valid_and_invalid_cases() -> None:
    if not (CASES / "manifest-r4.json").is_file():
        pytest.skip(f"{CASES} is absent")
    cases = _cases()
    names = {case.name for case in cases}
    assert set(SKIPPED_CASES) <= names
    outcomes = [json.loads(case.outcome.read_bytes()) for case in cases]
    invalid = [
        o
        for o in outcomes
        if any(i["severity"] in ("error", "fatal") and _is_checked_kind(i) for i in o.get("issue", []))
    ]
    assert 0 < len(invalid) < len(cases)
