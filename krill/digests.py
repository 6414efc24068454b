"""Content digests as the OCI image spec defines them.

A digest is ``algorithm ":" encoded``. Krill stores and verifies sha256 only
(the registered algorithm every client uses); sha512 digests are parsed so
they can be refused with a clear reason instead of a generic one.
"""

from __future__ import annotations

import hashlib
import re
import threading
from dataclasses import dataclass

# The spec's grammar: algorithm-component ([a-z0-9]+) joined by [+._-]; encoded [a-zA-Z0-9=_-]+.
_DIGEST_RE = re.compile(r"^([a-z0-9]+(?:[+._-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)$")
_SHA256_HEX_RE = re.compile(r"^[a-f0-9]{64}$")

SUPPORTED_ALGORITHMS = ("sha256",)


class DigestError(ValueError):
    """A string that is not a digest Krill can use."""


@dataclass(frozen=True, slots=True)
class Digest:
    """A validated sha256 digest; safe to use as a file name."""

    algorithm: str
    hex: str

    @classmethod
    def parse(cls, text: str) -> Digest:
        """Parse and validate; raise DigestError saying what is wrong."""
        match = _DIGEST_RE.fullmatch(text)  # "$" alone also takes a final "\n"
        if match is None:
            raise DigestError(
                f"not a digest: {text[:80]!r} (expected 'sha256:<64 hex digits>')"
            )
        algorithm, encoded = match.groups()
        if algorithm not in SUPPORTED_ALGORITHMS:
            raise DigestError(f"unsupported digest algorithm {algorithm!r}; use sha256")
        if not _SHA256_HEX_RE.fullmatch(encoded):
            raise DigestError(
                f"sha256 digest must be 64 lowercase hex digits, got {encoded[:80]!r}"
            )
        return cls(algorithm, encoded)

    @classmethod
    def of_bytes(cls, data: bytes) -> Digest:
        return cls("sha256", hashlib.sha256(data).hexdigest())

    @classmethod
    def from_hasher(cls, hasher: hashlib._Hash) -> Digest:
        return cls("sha256", hasher.hexdigest())

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"


def is_digest(text: str) -> bool:
    """True when ``text`` looks like a digest reference (so not a tag)."""
    return ":" in text


class FileDigest:
    """A file's sha256, computed once by whichever thread asks first (the others wait).

    A delta's apply needs its base blob's digest twice: to trust the base's tokens
    early (segreuse.BaseTokens) and to trust its tar at the end (GrowingTar).
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._digest: Digest | None = None

    def get(self) -> Digest:
        with self._lock:
            if self._digest is None:
                self._digest = sha256_file(self._path)
            return self._digest


def sha256_file(path: str, chunk_size: int = 1 << 20) -> Digest:
    """Hash a file in chunks; memory stays bounded whatever its size."""
    hasher = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            hasher.update(chunk)
    return Digest.from_hasher(hasher)
