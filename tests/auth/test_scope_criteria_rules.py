"""SMART v2 scope criteria select rows with search parameters only: a result parameter
(_include, _count, _sort, …) in a scope's criteria is refused wherever a scope enters."""

from __future__ import annotations

import pytest

from headless_ehr.auth.scopes import ScopeError, parse_grant
from tests.conftest import bearer, mint_token


@pytest.mark.parametrize("extra", ["_include=Observation:subject", "_count=1", "_sort=date", "_revinclude:iterate=x"])
def test_result_parameters_in_scope_criteria_are_refused(extra: str) -> None:
    with pytest.raises(ScopeError):
        parse_grant(f"patient/Observation.rs?category=laboratory&{extra}")


def test_search_parameters_in_scope_criteria_are_kept() -> None:
    grant = parse_grant("patient/Observation.rs?category=laboratory&code:in=http://x/vs")
    assert grant is not None and grant.criteria == (("category", "laboratory"), ("code:in", "http://x/vs"))


async def test_a_token_whose_scope_criteria_hold_a_result_parameter_is_refused_with_401(app, anonymous) -> None:
    token = mint_token(app, "user/Observation.rs?_include=Observation:subject", fhirUser="Practitioner/1")
    res = await anonymous.get("/Observation", headers=bearer(token))
    assert res.status_code == 401
    assert 'error="invalid_token"' in res.headers["www-authenticate"]


async def test_the_challenge_quotes_a_refusal_that_cites_the_tokens_own_text(app, anonymous) -> None:
    token = mint_token(app, 'user/Observation."rs', fhirUser="Practitioner/1")
    res = await anonymous.get("/Observation", headers=bearer(token))
    assert res.status_code == 401
    challenge = res.headers["www-authenticate"]
    description = challenge.split('error_description="', 1)[1]
    assert description.endswith('"') and '\\"' in description
    assert '"' not in description[:-1].replace('\\"', "")
