"""Client-supplied path parts and headers turned into validated values, or the spec's error.

Origin and agent both answer the distribution API, so both parse names, tags,
digests, references, list counts and blob ``Range`` headers here: bad input is
refused with ``NAME_INVALID``, ``DIGEST_INVALID``, ``MANIFEST_INVALID`` or
``RANGE_INVALID`` before it can reach a path or a key, and the two services
cannot drift apart in what they accept.

Numbers are ASCII digits only: ``str.isdigit`` and ``\\d`` also accept
characters such as ``'²'`` (which ``int`` refuses: a 500 in issue 20) or
Arabic-Indic digits (which ``int`` takes, so ``n=٣`` would silently mean 3).
A number of more than 20 significant digits is read as ``BEYOND_ANY_SIZE``
rather than converted: ``int`` refuses strings of over 4,300 digits (another
500), and no blob or listing comes near 2**64 anyway.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from aiohttp import web

from krill.digests import Digest, DigestError, is_digest
from krill.names import InvalidNameError, validate_name, validate_tag
from krill.registry_errors import API_HEADERS, RegistryError

__all__ = [
    "API_HEADERS",
    "BEYOND_ANY_SIZE",
    "ByteRange",
    "is_ascii_number",
    "lookup_reference",
    "parse_count",
    "parse_decimal",
    "parse_digest",
    "parse_name",
    "parse_range",
    "parse_reference",
    "repo_name",
]

# One ``bytes=`` range; the unit is case-insensitive (RFC 9110 section 14.1).
_RANGE_RE = re.compile(r"bytes=([0-9]*)-([0-9]*)", re.ASCII | re.IGNORECASE)
# A longer Range is refused: the FileResponse that serves an accepted one parses
# it again with int(), which raises past 4,300 digits (an empty, non-spec 416).
_MAX_RANGE_CHARS = 1000


# Larger than any blob size or listing; what an over-long decimal reads as.
BEYOND_ANY_SIZE = 1 << 64
_SIGNIFICANT_DIGITS = 20


def is_ascii_number(text: str) -> bool:
    """Whether ``text`` is one or more ASCII digits (what ``int`` reads as the same number)."""
    return text.isascii() and text.isdigit()


def parse_decimal(digits: str) -> int:
    """ASCII ``digits`` as an int, at most ``BEYOND_ANY_SIZE`` (never int's 4,300-digit error)."""
    significant = digits.lstrip("0")
    if len(significant) > _SIGNIFICANT_DIGITS:
        return BEYOND_ANY_SIZE
    return min(int(significant or "0"), BEYOND_ANY_SIZE)


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
    """A manifest reference to store under: a digest (has ':') or a valid tag.

    An invalid tag is 400 ``MANIFEST_INVALID``: the push names something no
    manifest may be stored as.
    """
    if is_digest(text):
        return parse_digest(text)
    try:
        return validate_tag(text)
    except InvalidNameError as exc:
        raise RegistryError("MANIFEST_INVALID", str(exc), detail={"tag": text[:200]}) from None


def lookup_reference(text: str) -> Digest | str:
    """A manifest reference to read or delete: a digest or a valid tag.

    An invalid tag names no manifest, so the answer is the spec's 404
    ``MANIFEST_UNKNOWN`` ("if the manifest is not found in the repository, the
    response code MUST be 404"; the conformance suite asks for
    ``.INVALID_MANIFEST_NAME``), not a 400 a client would take for a bad request.
    A malformed digest stays 400 ``DIGEST_INVALID``.
    """
    if is_digest(text):
        return parse_digest(text)
    try:
        return validate_tag(text)
    except InvalidNameError as exc:
        raise RegistryError(
            "MANIFEST_UNKNOWN", f"no manifest is tagged {text[:200]!r}: {exc}",
            detail={"tag": text[:200]}, status=404,
        ) from None


def parse_count(request: web.Request) -> int | None:
    """The ``n`` query parameter of list endpoints (None when absent)."""
    text = request.query.get("n")
    if text is None or text == "":
        return None
    if not is_ascii_number(text):
        raise RegistryError(
            "UNSUPPORTED", f"n must be a non-negative integer, got {text[:40]!r}", status=400
        )
    return parse_decimal(text)


@dataclass(frozen=True)
class ByteRange:
    """A satisfiable part of a blob: ``start`` up to ``end`` (exclusive)."""

    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.end - 1}/{size}"


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The requested range within a blob of ``size`` bytes; None for the whole blob.

    Registries and containerd only ever ask for a single range (resuming a
    download), so multi-range requests are refused rather than answered with
    a multipart body no client here would parse. Raises RegistryError
    RANGE_INVALID (416, with ``Content-Range: bytes */size``) for a malformed
    or unsatisfiable range, ``bytes=-0`` included (a suffix of nothing).
    """
    if header is None:
        return None
    match = _RANGE_RE.fullmatch(header.strip())
    if match is None or match.groups() == ("", ""):
        raise _invalid(f"malformed Range {header[:80]!r}; expected 'bytes=START-[END]'", size)
    if len(header) > _MAX_RANGE_CHARS:
        raise _invalid(f"a Range of over {_MAX_RANGE_CHARS} characters ({header[:80]!r}...)", size)
    first, last = match.groups()
    if first == "":  # suffix range: the last N bytes
        count = parse_decimal(last)
        if count == 0:
            raise _invalid("a suffix range of 0 bytes selects nothing", size)
        return ByteRange(max(0, size - count), size)
    start = parse_decimal(first)
    end = size if last == "" else parse_decimal(last) + 1
    if start >= size:  # first: "bytes=N-" past the end would otherwise "end before it starts"
        raise _invalid(f"Range {header[:80]!r} starts past the blob's {size} bytes", size)
    if end <= start:
        raise _invalid(f"Range {header[:80]!r} ends before it starts", size)
    return ByteRange(start, min(end, size))


def _invalid(message: str, size: int) -> RegistryError:
    return RegistryError("RANGE_INVALID", message, headers={"Content-Range": f"bytes */{size}"})
