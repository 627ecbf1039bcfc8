"""`near` for Location (R4 Location-near, http://hl7.org/fhir/R4/location.html#positional):
`near=latitude|longitude|distance|units` matches Locations whose position lies within
the great-circle distance (km by default; mi, [mi_i], m and km accepted); without a
distance, 10 km. Malformed values are a 400."""

from __future__ import annotations

import httpx

from .searching import create, ids_of, unique

# Ann Arbor, MI and points around it (distances by the haversine formula, R = 6371 km)
ANN_ARBOR = (42.2808, -83.7430)
YPSILANTI = (42.2411, -83.6130)  # about 11.4 km east-south-east (7.1 mi)
DETROIT = (42.3314, -83.0458)  # about 57 km east
CHICAGO = (41.8781, -87.6298)  # about 322 km west


async def location(client: httpx.AsyncClient, name: str, lat: float, lon: float) -> dict:
    return await create(
        client, {"resourceType": "Location", "name": name, "position": {"latitude": lat, "longitude": lon}}
    )


async def places(client: httpx.AsyncClient) -> tuple[str, dict[str, str]]:
    name = unique()
    ids = {}
    for label, (lat, lon) in {"ann": ANN_ARBOR, "ypsi": YPSILANTI, "detroit": DETROIT, "chicago": CHICAGO}.items():
        ids[label] = (await location(client, name, lat, lon))["id"]
    return name, ids


def near(point: tuple[float, float], *rest: str) -> str:
    return "|".join([str(point[0]), str(point[1]), *rest])


async def test_near_matches_locations_within_the_distance_in_km(client: httpx.AsyncClient) -> None:
    name, ids = await places(client)
    found = await ids_of(client, "/Location", [("name", name), ("near", near(ANN_ARBOR, "60", "km"))])
    assert found == {ids["ann"], ids["ypsi"], ids["detroit"]}


async def test_near_units_default_to_km(client: httpx.AsyncClient) -> None:
    name, ids = await places(client)
    found = await ids_of(client, "/Location", [("name", name), ("near", near(ANN_ARBOR, "12"))])
    assert found == {ids["ann"], ids["ypsi"]}


async def test_near_in_miles(client: httpx.AsyncClient) -> None:
    name, ids = await places(client)
    found = await ids_of(client, "/Location", [("name", name), ("near", near(ANN_ARBOR, "7.5", "mi"))])
    assert found == {ids["ann"], ids["ypsi"]}  # 7.5 mi = 12 km; 7.5 km would miss Ypsilanti
    found = await ids_of(client, "/Location", [("name", name), ("near", near(ANN_ARBOR, "7.5", "[mi_i]"))])
    assert found == {ids["ann"], ids["ypsi"]}


async def test_near_excludes_points_inside_the_box_but_outside_the_circle(client: httpx.AsyncClient) -> None:
    name = unique()
    # 0.9 degrees north and 0.9 degrees of longitude east at the equator: inside a 100 km
    # box (±0.899°) on each axis only just, but about 141 km away on the diagonal
    corner = await location(client, name, 0.89, 0.89)
    centre = await location(client, name, 0.0, 0.0)
    found = await ids_of(client, "/Location", [("name", name), ("near", "0|0|100|km")])
    assert found == {centre["id"]}
    assert corner["id"] not in found


async def test_near_without_distance_uses_ten_km(client: httpx.AsyncClient) -> None:
    name, ids = await places(client)
    found = await ids_of(client, "/Location", [("name", name), ("near", near(ANN_ARBOR))])
    assert found == {ids["ann"]}


async def test_near_wraps_across_the_antimeridian(client: httpx.AsyncClient) -> None:
    name = unique()
    east = await location(client, name, 0.0, 179.95)
    west = await location(client, name, 0.0, -179.95)
    await location(client, name, 0.0, 178.0)
    found = await ids_of(client, "/Location", [("name", name), ("near", "0|-179.99|20|km")])
    assert found == {east["id"], west["id"]}


async def test_near_ignores_locations_without_position(client: httpx.AsyncClient) -> None:
    name = unique()
    await create(client, {"resourceType": "Location", "name": name})
    here = await location(client, name, *ANN_ARBOR)
    assert await ids_of(client, "/Location", [("name", name), ("near", near(ANN_ARBOR, "1"))]) == {here["id"]}


async def test_near_follows_an_update_of_the_position(client: httpx.AsyncClient) -> None:
    name = unique()
    moved = await location(client, name, *ANN_ARBOR)
    moved["position"] = {"latitude": CHICAGO[0], "longitude": CHICAGO[1]}
    res = await client.put(f"/Location/{moved['id']}", json=moved)
    assert res.status_code == 200, res.text
    assert await ids_of(client, "/Location", [("name", name), ("near", near(ANN_ARBOR, "50"))]) == set()
    assert await ids_of(client, "/Location", [("name", name), ("near", near(CHICAGO, "1"))]) == {moved["id"]}


async def test_near_with_malformed_values_is_refused(client: httpx.AsyncClient) -> None:
    for value in ("42", "abc|1", "91|0|1|km", "0|181", "0|0|-1|km", "0|0|1|furlong", "0|0|1e999999999|km", "0|0|x"):
        res = await client.get("/Location", params={"near": value})
        assert res.status_code == 400, value
        assert res.json()["resourceType"] == "OperationOutcome"


async def test_capability_statement_lists_near_for_location(client: httpx.AsyncClient) -> None:
    statement = (await client.get("/metadata")).json()
    location_entry = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Location")
    near_entry = next(p for p in location_entry["searchParam"] if p["name"] == "near")
    assert near_entry["type"] == "special"


async def test_near_missing_true_matches_locations_without_position(client: httpx.AsyncClient) -> None:
    name = unique()
    bare = await create(client, {"resourceType": "Location", "name": name})
    await location(client, name, *ANN_ARBOR)
    assert await ids_of(client, "/Location", [("name", name), ("near:missing", "true")]) == {bare["id"]}
