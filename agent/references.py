"""Digests and manifest references from request paths, checked once for the whole agent.

Bad input becomes a ``RegistryError`` with the distribution spec's code, so
every route answers it the same way.
"""

from __future__ import annotations

from krill.digests import Digest, DigestError, is_digest
from krill.names import InvalidNameError, validate_tag
from krill.registry_errors import RegistryError


def parse_digest(text: str) -> Digest:
    """A sha256 digest; 400 DIGEST_INVALID otherwise."""
    try:
        return Digest.parse(text)
    except DigestError as exc:
        raise RegistryError("DIGEST_INVALID", str(exc), status=400) from None


def parse_reference(reference: str) -> Digest | str:
    """A digest or a validated tag; RegistryError otherwise."""
    if is_digest(reference):
        return parse_digest(reference)
    try:
        return validate_tag(reference)
    except InvalidNameError as exc:
        raise RegistryError("MANIFEST_INVALID", str(exc), status=400) from None
