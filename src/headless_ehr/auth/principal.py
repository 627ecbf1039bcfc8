"""Who is asking, and what they may do.

Every store and search call takes a Principal and checks it where data is touched,
so no route can forget the check. Until the SMART server lands, requests run as the
system principal; the seam is here so that policies plug in without touching callers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..fhir.outcome import FhirError

READ_INTERACTIONS = frozenset({"read", "vread", "history", "search"})
WRITE_INTERACTIONS = frozenset({"create", "update", "patch", "delete"})


@dataclass(frozen=True)
class Principal:
    """An authenticated caller with the resource types it may read and write.

    `read_types` / `write_types` of None mean every type. `system`: a system-level
    caller (the server itself, the CLI, a backend client granted SMART `system/`
    scopes), the only kind that may run server-wide operations such as $reindex.
    """

    subject: str
    read_types: frozenset[str] | None = None
    write_types: frozenset[str] | None = None
    attributes: dict[str, str] = field(default_factory=dict)
    system: bool = False

    def allows(self, interaction: str, resource_type: str) -> bool:
        allowed = self.write_types if interaction in WRITE_INTERACTIONS else self.read_types
        return allowed is None or resource_type in allowed

    def require(self, interaction: str, resource_type: str) -> None:
        """Raise 403 unless this principal may perform the interaction on the type."""
        if not self.allows(interaction, resource_type):
            raise FhirError.of(403, "forbidden", f"not permitted to {interaction} {resource_type} resources")

    def require_system(self, operation: str) -> None:
        """Raise 403 unless this is a system-level caller."""
        if not self.system:
            raise FhirError.of(403, "forbidden", f"{operation} may only be run by a system-level client")


SYSTEM = Principal(subject="system", system=True)


def authenticate_as_system(request: object) -> Principal:
    """The authenticator in force until the SMART server lands: every request runs as
    SYSTEM. `app.state.authenticate` holds the authenticator, so another (tokens,
    mutual TLS) replaces it without touching the routes."""
    return SYSTEM
