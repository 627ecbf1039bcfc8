"""The FHIR R4 specification as data: definitions, JSON, validation, OperationOutcome."""
