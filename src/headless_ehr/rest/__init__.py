"""Thin HTTP handlers: parse, call the layer below, format."""
