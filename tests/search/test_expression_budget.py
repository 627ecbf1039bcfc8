"""A custom SearchParameter's expression runs with a time budget during extraction:
a pathological one is skipped (with a warning) instead of hanging a write or $reindex."""

from __future__ import annotations

import logging
import time

import pytest

from headless_ehr.search.extract import compile as compiled
from headless_ehr.search.extract import extract
from headless_ehr.search.registry import make_param

EXPLOSIVE = "Patient.descendants().select(%resource.descendants()).select(%resource.descendants()).count()"


def _param(code: str, expression: str, kind: str = "number") -> object:
    resource = {
        "resourceType": "SearchParameter",
        "url": f"http://example.org/SearchParameter/{code}",
        "code": code,
        "base": ["Patient"],
        "type": kind,
        "expression": expression,
    }
    return make_param(resource, "Patient")


def _patient(names: int) -> dict:
    return {
        "resourceType": "Patient",
        "id": "p1",
        "name": [{"family": f"f{i}", "given": [f"g{i}", f"h{i}"]} for i in range(names)],
    }


@pytest.fixture
def budget():
    before = compiled.EXPRESSION_BUDGET_SECONDS
    compiled.set_expression_budget(0.05)
    yield
    compiled.set_expression_budget(before)


def test_an_expression_past_its_budget_is_skipped_with_a_warning(budget, caplog):
    param = _param("explosive", EXPLOSIVE)
    extract(_patient(0), [param])  # one-time work (the engine's model, the parse) is not evaluation
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger=compiled.log.name):
        rows = extract(_patient(40), [param])
    assert time.monotonic() - started < 1.0  # unbounded it runs far longer
    assert rows.number == []
    assert any("explosive" in r.getMessage() and "ran past" in r.getMessage() for r in caplog.records)


def test_an_expression_within_its_budget_gives_its_rows(budget):
    param = _param("name-count", "Patient.name.count()")
    assert [row[0] for row in extract(_patient(3), [param]).number] == ["name-count"]
