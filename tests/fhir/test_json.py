"""FHIR JSON parsing keeps decimal text; bad JSON is rejected with a message."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from headless_ehr.fhir import json as fhir_json


def test_decimals_keep_their_exact_text():
    text = b'{"a":1.50,"b":[0.010,1e3,-2.0E-2],"c":3}'
    assert fhir_json.dumps(fhir_json.loads(text)) == text


def test_duplicate_keys_are_rejected():
    with pytest.raises(fhir_json.JsonError, match="duplicate"):
        fhir_json.loads(b'{"a":1,"a":2}')


@pytest.mark.parametrize("text", [b"NaN", b'{"a":Infinity}', b'{"a":-Infinity}'])
def test_non_finite_numbers_are_rejected(text):
    with pytest.raises(fhir_json.JsonError):
        fhir_json.loads(text)


def test_invalid_utf8_is_rejected():
    with pytest.raises(fhir_json.JsonError):
        fhir_json.loads(b'{"a":"\xff"}')


@given(st.decimals(allow_nan=False, allow_infinity=False, places=4))
def test_any_decimal_round_trips_verbatim(value):
    text = f'{{"v":{value:f}}}'.encode()
    assert fhir_json.dumps(fhir_json.loads(text)) == text
