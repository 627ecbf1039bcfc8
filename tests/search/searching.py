"""Small HTTP helpers shared by the search specification tests.

Every test makes its own data with uuid-based values, so these helpers only create
resources, run searches and read which resources a searchset Bundle holds.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx

FHIR_JSON = "application/fhir+json"
Params = list[tuple[str, str]]


def unique(prefix: str = "") -> str:
    """A value no other test uses (lowercase hex, so it is a valid id and token)."""
    return prefix + uuid.uuid4().hex[:16]


async def create(client: httpx.AsyncClient, resource: dict[str, Any]) -> dict[str, Any]:
    res = await client.post(f"/{resource['resourceType']}", json=resource, headers={"Content-Type": FHIR_JSON})
    assert res.status_code == 201, res.text
    return res.json()


async def delete(client: httpx.AsyncClient, resource: dict[str, Any]) -> None:
    res = await client.delete(f"/{resource['resourceType']}/{resource['id']}")
    assert res.status_code in (200, 204), res.text


async def search(
    client: httpx.AsyncClient, path: str, params: Params, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    """A search that must succeed; returns the searchset Bundle."""
    res = await client.get(path, params=params, headers=headers)
    assert res.status_code == 200, res.text
    bundle = res.json()
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset"
    return bundle


def entries(bundle: dict[str, Any], mode: str) -> list[dict[str, Any]]:
    return [e for e in bundle.get("entry", []) if e.get("search", {}).get("mode") == mode]


def match_ids(bundle: dict[str, Any]) -> list[str]:
    """The ids of the matches, in the order the server returned them."""
    return [e["resource"]["id"] for e in entries(bundle, "match")]


def match_keys(bundle: dict[str, Any]) -> set[tuple[str, str]]:
    return {(e["resource"]["resourceType"], e["resource"]["id"]) for e in entries(bundle, "match")}


def include_keys(bundle: dict[str, Any]) -> set[tuple[str, str]]:
    return {(e["resource"]["resourceType"], e["resource"]["id"]) for e in entries(bundle, "include")}


def key(resource: dict[str, Any]) -> tuple[str, str]:
    return (resource["resourceType"], resource["id"])


def link(bundle: dict[str, Any], relation: str) -> str | None:
    return next((item["url"] for item in bundle.get("link", []) if item["relation"] == relation), None)


async def ids_of(client: httpx.AsyncClient, path: str, params: Params) -> set[str]:
    """The set of matching ids of a search (one page; tests keep results small)."""
    bundle = await search(client, path, [*params, ("_count", "100")])
    assert link(bundle, "next") is None, "test data should fit one page"
    return set(match_ids(bundle))
