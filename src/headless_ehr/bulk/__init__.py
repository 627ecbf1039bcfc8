"""Bulk data: `ehr import` (and later $export/$import)."""
