"""A real server fault is a 500 OperationOutcome that reveals nothing inside."""

from __future__ import annotations


async def test_unexpected_exception_is_500_without_internals(client, app, monkeypatch):
    async def broken(*args, **kwargs):
        raise RuntimeError("secret connection string postgresql://user:pw@db")

    monkeypatch.setattr(app.state.store, "read", broken)
    res = await client.get("/Patient/anything")
    assert res.status_code == 500
    outcome = res.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert "secret" not in res.text and "Traceback" not in res.text
