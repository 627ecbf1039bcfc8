"""FHIR operations ($validate, ...), one module each, registered by name."""
