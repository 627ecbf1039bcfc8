"""Headless EHR: a FHIR R4-native clinical data backend."""

__version__ = "0.1.0"
FHIR_VERSION = "4.0.1"
