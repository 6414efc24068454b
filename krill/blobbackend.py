"""Where the origin keeps blob bytes: the ``BlobBackend`` protocol and its directory form.

A backend is content-addressed: a blob is stored under its digest, and only
bytes that hash to it are ever stored there. Every ``put`` verifies before
the blob becomes visible, so a reader sees no object or the whole verified
object, never a partial one:

* the directory (``DirectoryBackend``, over ``krill.blobstore.BlobStore``)
  writes to ``incoming/`` and renames into place after the hash matches;
* S3 (``krill.s3backend``) PUTs a small blob only after hashing it (and sends
  the digest as the signed payload hash, so the store checks it too), and a
  big one as a multipart upload that is completed only if the digest of all
  parts matches (an incomplete multipart upload is invisible, and aborted).

Two writers of the same digest both succeed and leave one correct object:
the bytes are the same whoever wins.

The protocol is async and streams: a blob is never held in memory whole
(a put buffers at most one multipart part, a read yields chunks). Reads take
a byte range, because the origin passes clients' ``Range`` requests through.
``list`` gives each blob's size and modification time, for garbage collection
and its grace period. The shared conformance suite,
tests/test_blob_backend_conformance.py, runs every implementation through the
same contract.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import BinaryIO, Protocol

from krill.blobstore import BlobStore, BlobWriter, DigestMismatchError
from krill.digests import Digest

__all__ = [
    "READ_CHUNK",
    "BlobBackend",
    "BlobInfo",
    "BlobMissingError",
    "BlobReader",
    "DigestMismatchError",
    "DirectoryBackend",
    "PutOutcome",
    "RangeNotSatisfiableError",
    "file_chunks",
]

READ_CHUNK = 1 << 20


class PutOutcome(Enum):
    """What a put did. Either way the backend holds the verified blob afterwards."""

    STORED = "stored"
    ALREADY_PRESENT = "already_present"  # nothing sent: the digest names the same bytes


@dataclass(frozen=True)
class BlobInfo:
    digest: Digest
    size: int
    modified: float  # seconds since the epoch: garbage collection's grace period


class BlobMissingError(LookupError):
    """The backend has no blob with this digest."""

    def __init__(self, digest: Digest, where: str) -> None:
        super().__init__(f"blob {digest} is not in {where}")
        self.digest = digest


class RangeNotSatisfiableError(ValueError):
    """A read that starts at or past the blob's end (HTTP 416)."""

    def __init__(self, digest: Digest, start: int, size: int) -> None:
        super().__init__(f"range starting at byte {start} is past the end of {digest} ({size} B)")
        self.size = size


@dataclass
class BlobReader:
    """An open read of ``length`` bytes from ``start`` of a blob of ``size`` bytes."""

    size: int
    start: int
    length: int
    chunks: AsyncIterator[bytes]


class BlobBackend(Protocol):
    """What the origin needs from storage of blob bytes (directory, S3)."""

    @property
    def description(self) -> str:
        """Where the blobs are, for logs and error messages (never credentials)."""
        ...

    async def stat(self, digest: Digest) -> BlobInfo | None:
        """Size and modification time, or None if the blob is not stored."""
        ...

    async def exists(self, digest: Digest) -> bool: ...

    async def put_file(self, digest: Digest, path: Path) -> PutOutcome:
        """Store the file's bytes as ``digest``; DigestMismatchError (nothing stored) if
        they hash to something else. The file is left where it is."""
        ...

    async def put_stream(self, digest: Digest, chunks: AsyncIterable[bytes]) -> PutOutcome:
        """Store streamed bytes as ``digest``, with the same verification as ``put_file``."""
        ...

    def open(
        self, digest: Digest, start: int = 0, length: int | None = None
    ) -> AbstractAsyncContextManager[BlobReader]:
        """Read ``length`` bytes (None: to the end) from ``start``; a range past the end is
        clamped to it. BlobMissingError, RangeNotSatisfiableError (start >= size > 0)."""
        ...

    async def delete(self, digest: Digest) -> bool:
        """Remove the blob; False if it was not there."""
        ...

    def list(self) -> AsyncIterator[BlobInfo]:
        """Every stored blob (order unspecified)."""
        ...

    async def close(self) -> None: ...


def check_range(digest: Digest, start: int, length: int | None, size: int) -> int:
    """The length to read from ``start``, clamped to the blob; raise if it starts past it."""
    if start < 0 or (length is not None and length < 0):
        raise ValueError(f"negative range start={start} length={length}")
    if start >= size and not start == size == 0:
        raise RangeNotSatisfiableError(digest, start, size)
    remaining = size - start
    return remaining if length is None else min(length, remaining)


async def file_chunks(path: Path, chunk: int = READ_CHUNK) -> AsyncIterator[bytes]:
    """A file's bytes in chunks, read off the event loop."""
    f = await asyncio.to_thread(open, path, "rb")
    with f:
        while data := await asyncio.to_thread(f.read, chunk):
            yield data


class DirectoryBackend:
    """Blobs in a local directory (``BlobStore``): the default, and the S3 origin's cache."""

    def __init__(self, store: BlobStore) -> None:
        self.store = store

    @property
    def description(self) -> str:
        return f"directory {self.store.root}"

    async def stat(self, digest: Digest) -> BlobInfo | None:
        try:
            st = await asyncio.to_thread(os.stat, self.store.path(digest))
        except FileNotFoundError:
            return None
        return BlobInfo(digest, st.st_size, st.st_mtime)

    async def exists(self, digest: Digest) -> bool:
        return await asyncio.to_thread(self.store.has, digest)

    async def put_file(self, digest: Digest, path: Path) -> PutOutcome:
        if await self.exists(digest):
            return PutOutcome.ALREADY_PRESENT
        await asyncio.to_thread(self._copy_in, digest, path)
        return PutOutcome.STORED

    def _copy_in(self, digest: Digest, path: Path) -> None:
        with self.store.writer() as writer, open(path, "rb") as src:
            shutil.copyfileobj(src, _HashingSink(writer), READ_CHUNK)
            writer.commit(digest)

    async def put_stream(self, digest: Digest, chunks: AsyncIterable[bytes]) -> PutOutcome:
        with self.store.writer() as writer:
            async for chunk in chunks:
                await asyncio.to_thread(writer.write, chunk)
            await asyncio.to_thread(writer.commit, digest)
        return PutOutcome.STORED

    @contextlib.asynccontextmanager
    async def open(
        self, digest: Digest, start: int = 0, length: int | None = None
    ) -> AsyncIterator[BlobReader]:
        try:
            f = await asyncio.to_thread(open, self.store.path(digest), "rb")
        except FileNotFoundError:
            raise BlobMissingError(digest, self.description) from None
        with f:
            size = os.fstat(f.fileno()).st_size
            count = check_range(digest, start, length, size)
            f.seek(start)
            yield BlobReader(size, start, count, _read_exactly(f, count))

    async def delete(self, digest: Digest) -> bool:
        return await asyncio.to_thread(self.store.delete, digest)

    async def list(self) -> AsyncIterator[BlobInfo]:
        for digest in await asyncio.to_thread(lambda: list(self.store.digests())):
            info = await self.stat(digest)
            if info is not None:  # deleted since the listing
                yield info

    async def close(self) -> None:
        return None


class _HashingSink:
    """``shutil.copyfileobj``'s destination: the blob writer (which hashes what it gets)."""

    def __init__(self, writer: BlobWriter) -> None:
        self._writer = writer

    def write(self, data: bytes) -> int:
        self._writer.write(data)
        return len(data)


async def _read_exactly(f: BinaryIO, count: int) -> AsyncIterator[bytes]:
    while count > 0:
        data = await asyncio.to_thread(f.read, min(READ_CHUNK, count))
        if not data:  # truncated under us: the reader sees fewer bytes than promised
            return
        count -= len(data)
        yield data
