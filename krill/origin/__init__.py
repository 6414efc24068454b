"""Krill's origin: the OCI registry of record (push, pull, pull-through mirror)."""
