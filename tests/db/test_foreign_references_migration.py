"""Migration 0011: index rows of absolute references written before the local-base rule
keep only their URL, so no foreign reference stays in a local compartment."""

from __future__ import annotations

from headless_ehr.db.migrate import migration_files


async def test_rows_of_absolute_urls_lose_type_and_id_and_relative_rows_keep_them(db):
    rows = [
        ("subject", "Patient", "p1", None, "http://other.example.org/fhir/Patient/p1"),
        ("questionnaire", "Questionnaire", "q1", "2.0", "http://ex.org/Questionnaire/q1"),
        ("performer", "Practitioner", "r1", None, None),
        ("encounter", None, None, None, "urn:uuid:1"),
    ]
    (sql,) = [text for version, _name, text in migration_files() if version == 11]
    async with db.acquire() as conn, conn.transaction():
        # a temporary table of the same name shadows the real one: other tests' rows stay
        await conn.execute("CREATE TEMP TABLE search_reference (LIKE public.search_reference) ON COMMIT DROP")
        await conn.executemany(
            "INSERT INTO search_reference (resource_type, resource_id, param, target_type, target_id,"
            " target_version, url) VALUES ('Observation', 'o1', $1, $2, $3, $4, $5)",
            rows,
        )
        await conn.execute(sql)
        found = await conn.fetch(
            "SELECT param, target_type, target_id, target_version, url FROM search_reference ORDER BY param"
        )
    assert [tuple(r) for r in found] == [
        ("encounter", None, None, None, "urn:uuid:1"),
        ("performer", "Practitioner", "r1", None, None),
        ("questionnaire", None, None, "2.0", "http://ex.org/Questionnaire/q1"),
        ("subject", None, None, None, "http://other.example.org/fhir/Patient/p1"),
    ]
    assert await db.fetchval("SELECT count(*) FROM public.search_reference WHERE url = 'urn:uuid:1'") == 0
