"""An asynchronous request of a user under an access policy: polled without any operation
grant, and run with the policy's rules (the ward nurse of tests/auth)."""

from __future__ import annotations

from tests.auth.test_policies_enforcement import admin, assign, ids, nurse, ward  # noqa: F401 (fixtures)
from tests.rest.asyncflow import run


async def test_a_policy_holders_async_search_sees_what_its_synchronous_one_sees(nurse, ward):  # noqa: F811
    params = {"code": ward.lab_code}
    sync = await nurse.get("/Observation", params=params)
    assert sync.status_code == 200, sync.text
    res = await run(nurse, "GET", "/Observation", params=params)
    assert res.status_code == 200, res.text
    assert ids(res.json()) == ids(sync.json())
    assert ward.lab_a not in ids(res.json())  # the policy's rule for Observations holds in the background too
    assert ward.vitals_a in ids(res.json())
