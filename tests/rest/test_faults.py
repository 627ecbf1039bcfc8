"""A real server fault is a 500 OperationOutcome that reveals nothing inside."""

from __future__ import annotations

from headless_ehr.store import ResourceStore


async def test_unexpected_exception_is_500_without_internals(client, app, monkeypatch):
    async def broken(*args, **kwargs):
        raise RuntimeError("secret connection string postgresql://user:pw@db")

    monkeypatch.setattr(ResourceStore, "read", broken)  # every store: the app keeps one per base
    res = await client.get("/Patient/anything")
    assert res.status_code == 500
    outcome = res.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert "secret" not in res.text and "Traceback" not in res.text
