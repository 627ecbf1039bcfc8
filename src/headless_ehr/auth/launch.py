"""EHR launch contexts (SMART App Launch 2.2, "launch-ehr"): the EHR mints an opaque
`launch` value naming a patient (and encounter); the app passes it to /oauth/authorize
and receives that context in the token response."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from ..fhir.references import RESOURCE_ID
from . import secrets

LAUNCH_LIFETIME = 600  # seconds between minting a launch and the app's authorization request


class LaunchError(ValueError):
    """A launch context that cannot be made (400 on /admin/launch)."""


@dataclass(frozen=True)
class LaunchContext:
    launch_id: str
    patient: str | None
    encounter: str | None
    expires_in: int = LAUNCH_LIFETIME


def _id(value: str | None, rtype: str) -> str | None:
    if value is None:
        return None
    value = value.removeprefix(f"{rtype}/") if isinstance(value, str) else value
    if not isinstance(value, str) or not RESOURCE_ID.fullmatch(value):
        raise LaunchError(f"{rtype.lower()} must be a {rtype} id (or {rtype}/id)")
    return value


async def create_launch(
    pool: asyncpg.Pool | asyncpg.Connection, patient: str | None, encounter: str | None, created_by: str
) -> LaunchContext:
    """A launch context for the app to be launched; valid for LAUNCH_LIFETIME seconds."""
    patient_id, encounter_id = _id(patient, "Patient"), _id(encounter, "Encounter")
    if patient_id is None and encounter_id is None:
        raise LaunchError("a launch needs a patient (and optionally an encounter)")
    launch_id = secrets.new_token(24)
    await pool.execute(
        "INSERT INTO auth_launch (launch_id, patient, encounter, created_by, expires_at)"
        " VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5))",
        launch_id,
        patient_id,
        encounter_id,
        created_by,
        LAUNCH_LIFETIME,
    )
    return LaunchContext(launch_id, patient_id, encounter_id)


async def resolve_launch(pool: asyncpg.Pool | asyncpg.Connection, launch_id: str) -> LaunchContext | None:
    """The context of a live launch value; None when unknown or expired."""
    row = await pool.fetchrow(
        "SELECT launch_id, patient, encounter FROM auth_launch WHERE launch_id = $1 AND expires_at > now()",
        launch_id,
    )
    return LaunchContext(row["launch_id"], row["patient"], row["encounter"]) if row is not None else None
