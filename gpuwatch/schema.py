"""The version of the on-disk run layout, in a module of its own: what reads a stored summary back checks it
without loading the record types (msgspec, dataclasses) that `gpuwatch.records` defines beside it."""

SCHEMA_VERSION = 1
"""Version of the on-disk run layout and segment columns; bumped on any incompatible change."""
