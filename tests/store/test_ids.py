"""Server-assigned resource ids: valid FHIR ids, RFC 9562 version 7, time-ordered."""

from __future__ import annotations

import re
import time
import uuid

from headless_ehr.store.ids import new_id

FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


def test_ids_are_valid_fhir_ids_and_version_7_uuids():
    for _ in range(1000):
        rid = new_id()
        assert FHIR_ID.fullmatch(rid)
        parsed = uuid.UUID(rid)
        assert str(parsed) == rid
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122


def test_ids_lead_with_the_creation_millisecond():
    before = time.time_ns() // 1_000_000
    rid = new_id()
    after = time.time_ns() // 1_000_000
    assert before <= uuid.UUID(rid).int >> 80 <= after


def test_ids_made_later_sort_after_earlier_ones():
    first = new_id()
    time.sleep(0.002)
    assert new_id() > first


def test_ids_do_not_repeat():
    assert len({new_id() for _ in range(100_000)}) == 100_000
