"""Finding the references inside a resource."""

from headless_ehr.fhir.references import iter_references, local_path


def test_references_are_found_in_document_order_in_extensions_and_contained_resources():
    resource = {
        "resourceType": "Observation",
        "subject": {"reference": "urn:uuid:1"},
        "extension": [{"url": "http://x", "valueReference": {"reference": "urn:uuid:2"}}],
        "contained": [{"resourceType": "Provenance", "target": [{"reference": "urn:uuid:3"}]}],
        "note": [{"text": "reference"}],
    }
    assert [r["reference"] for r in iter_references(resource)] == ["urn:uuid:1", "urn:uuid:2", "urn:uuid:3"]


def test_objects_whose_reference_is_not_a_string_are_not_references():
    assert iter_references({"a": {"reference": 3}, "b": {"reference": None}}) == []


def test_nesting_deeper_than_the_recursion_limit_is_walked_without_recursion():
    node: dict = {"reference": "Patient/0"}
    for i in range(1, 5000):
        node = {"item": [node], "reference": f"Patient/{i}"}
    found = iter_references(node)
    assert len(found) == 5000
    assert found[0]["reference"] == "Patient/4999"


def test_a_url_under_our_base_is_its_relative_form():
    assert local_path("https://ehr.example/fhir/Patient/1", "https://ehr.example/fhir") == "Patient/1"
    assert local_path("https://ehr.example/fhir/Patient/1", "https://ehr.example/fhir/") == "Patient/1"


def test_a_url_on_another_server_or_path_is_not_local():
    assert local_path("http://other.example.org/fhir/Patient/1", "https://ehr.example/fhir") is None
    assert local_path("https://ehr.example/fhir2/Patient/1", "https://ehr.example/fhir") is None
    assert local_path("https://ehr.example.evil/fhir/Patient/1", "https://ehr.example") is None


def test_no_url_is_local_when_no_base_is_known():
    assert local_path("https://ehr.example/fhir/Patient/1", None) is None
