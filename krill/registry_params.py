"""Client-supplied path parts turned into validated values, or the spec's error.

Origin and agent both answer the distribution API, so both parse names, tags,
digests and references here: bad input is refused with ``NAME_INVALID``,
``DIGEST_INVALID`` or ``MANIFEST_INVALID`` before it can reach a path or a key,
and the two services cannot drift apart in what they accept.
"""

from __future__ import annotations

from aiohttp import web

from krill.digests import Digest, DigestError, is_digest
from krill.names import InvalidNameError, validate_name, validate_tag
from krill.registry_errors import API_HEADERS, RegistryError

__all__ = [
    "API_HEADERS",
    "parse_count",
    "parse_digest",
    "parse_name",
    "parse_reference",
    "repo_name",
]


def parse_name(name: str) -> str:
    """A valid repository name; 400 NAME_INVALID otherwise."""
    try:
        return validate_name(name)
    except InvalidNameError as exc:
        raise RegistryError("NAME_INVALID", str(exc), detail={"name": name[:300]}) from None


def repo_name(request: web.Request) -> str:
    """The ``{name}`` of a ``/v2/<name>/...`` route, validated."""
    return parse_name(request.match_info["name"])


def parse_digest(text: str | None, *, what: str = "digest") -> Digest:
    """A sha256 digest; 400 DIGEST_INVALID otherwise (also when ``text`` is missing)."""
    if not text:
        raise RegistryError("DIGEST_INVALID", f"a {what} is required (sha256:<64 hex>)")
    try:
        return Digest.parse(text)
    except DigestError as exc:
        raise RegistryError("DIGEST_INVALID", str(exc)) from None


def parse_reference(text: str) -> Digest | str:
    """A manifest reference: a digest (has ':') or a validated tag."""
    if is_digest(text):
        return parse_digest(text)
    try:
        return validate_tag(text)
    except InvalidNameError as exc:
        raise RegistryError("MANIFEST_INVALID", str(exc), detail={"tag": text[:200]}) from None


def parse_count(request: web.Request) -> int | None:
    """The ``n`` query parameter of list endpoints (None when absent)."""
    text = request.query.get("n")
    if text is None or text == "":
        return None
    if not text.isdigit():
        raise RegistryError(
            "UNSUPPORTED", f"n must be a non-negative integer, got {text[:40]!r}", status=400
        )
    return int(text)
