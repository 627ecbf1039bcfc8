"""The app outside the FHIR base: a 404 that says where the base is."""

from __future__ import annotations

import httpx


async def _get(app: object, path: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        return await c.get(path)


async def test_a_path_outside_the_base_is_404_naming_the_base(app):
    r = await _get(app, "/Patient/1")
    assert r.status_code == 404
    outcome = r.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert "the FHIR base is /fhir" in outcome["issue"][0]["diagnostics"]


async def test_the_root_is_404_naming_the_base(app):
    r = await _get(app, "/")
    assert r.status_code == 404
    assert "/fhir" in r.json()["issue"][0]["diagnostics"]
