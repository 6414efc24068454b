"""A content-addressed blob store on local disk.

Layout under ``root``::

    blobs/sha256/<2 hex>/<64 hex>     committed blobs, named by their digest
    blobs/sha256/<2 hex>/<64 hex>.<k> sidecars (e.g. ``.torrent``) derived from the blob
    incoming/<random>                 blobs being written

A blob becomes visible only through ``BlobWriter.commit``: the bytes are hashed
as they stream in, fsynced, and renamed into place only if the digest matches.
``rename`` is atomic on one filesystem, so a reader sees either no file or the
whole verified file, and two writers of the same digest end with one correct
file (the second rename replaces identical bytes). Whatever is left in
``incoming/`` after a crash is unreachable and removed on the next start.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

from krill.atomicfile import fsync_dir
from krill.digests import Digest
from krill.prefixdigest import PrefixDigest

log = logging.getLogger(__name__)


class DigestMismatchError(ValueError):
    """The bytes written do not hash to the digest the caller promised."""

    def __init__(self, expected: Digest, actual: Digest) -> None:
        super().__init__(f"content digest {actual} does not match the expected {expected}")
        self.expected = expected
        self.actual = actual


class SizeMismatchError(ValueError):
    """The bytes written are not as many as the caller promised."""


class WriterBrokenError(OSError):
    """A write failed earlier: the file may hold bytes the digest does not cover."""


class BlobWriter:
    """Streams bytes into a temporary file while hashing them.

    Use ``commit`` to verify and publish, ``abort`` to throw away; a writer
    that is neither committed nor aborted leaves a temp file that the next
    ``BlobStore`` start removes.

    A write that fails (ENOSPC, EIO) may still have put part of its bytes in
    the file, and the hash does not include them: a caller that wrote the
    same bytes again once space freed would publish a torn file under a digest
    that matches what it meant to write. So the first failed write breaks the
    writer for good: every later ``write`` and ``commit`` raises.
    """

    def __init__(self, store: BlobStore, path: Path) -> None:
        self._store = store
        self.path = path
        self._file = open(path, "wb")
        self._hasher = hashlib.sha256()
        self.size = 0
        self.closed = False
        self._broken: OSError | None = None

    def write(self, data: bytes | memoryview) -> None:
        self._check_not_broken()
        try:
            self._file.write(data)
        except OSError as exc:
            self._broken = exc
            raise
        self._hasher.update(data)
        self.size += len(data)

    def _check_not_broken(self) -> None:
        if self._broken is not None:
            raise WriterBrokenError(
                self._broken.errno, f"an earlier write failed ({self._broken.strerror})"
            )

    def flush(self) -> None:
        """Push buffered bytes to the file, so readers of ``path`` see all written so far."""
        self._file.flush()

    def digest(self) -> Digest:
        """The digest of what has been written so far."""
        return Digest.from_hasher(self._hasher)

    def commit(self, expected: Digest | None = None, expected_size: int | None = None) -> Digest:
        """Verify, fsync and publish; return the digest. Raises on mismatch (and aborts)."""
        actual = self.digest()
        try:
            self._check_not_broken()
            if expected is not None and actual != expected:
                raise DigestMismatchError(expected, actual)
            if expected_size is not None and self.size != expected_size:
                raise SizeMismatchError(
                    f"received {self.size} bytes where {expected_size} were declared"
                )
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self.closed = True
            self._store._publish(self.path, actual)
        except BaseException:
            self.abort()
            raise
        return actual

    def abort(self) -> None:
        """Discard what was written. Safe to call more than once, and on a full disk
        (close's flush fails there, yet the descriptor is closed and the file goes)."""
        if not self._file.closed:
            with contextlib.suppress(OSError):
                self._file.close()
        self.closed = True
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.closed:
            self.abort()


class BlobStore:
    """Content-addressed blobs on one filesystem."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self._blobs = self.root / "blobs" / "sha256"
        self._incoming = self.root / "incoming"
        self._blobs.mkdir(parents=True, exist_ok=True)
        self._clear_incoming()

    def _clear_incoming(self) -> None:
        """Remove writes interrupted by a crash; they were never visible."""
        if self._incoming.exists():
            leftovers = list(self._incoming.iterdir())
            if leftovers:
                log.info("blobstore.cleanup removed=%d dir=%s", len(leftovers), self._incoming)
            shutil.rmtree(self._incoming)
        self._incoming.mkdir(parents=True)

    def path(self, digest: Digest) -> Path:
        """Where a blob with this digest lives (whether or not it exists)."""
        return self._blobs / digest.hex[:2] / digest.hex

    def sidecar_path(self, digest: Digest, kind: str) -> Path:
        """Where a file derived from this blob (``kind`` like 'torrent') lives."""
        if not kind.isalnum():
            raise ValueError(f"sidecar kind must be alphanumeric, got {kind!r}")
        return self._blobs / digest.hex[:2] / f"{digest.hex}.{kind}"

    def has(self, digest: Digest) -> bool:
        return self.path(digest).is_file()

    def size(self, digest: Digest) -> int | None:
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            return None

    def writer(self) -> BlobWriter:
        """Start writing a new blob; its digest is decided at commit."""
        return BlobWriter(self, self.incoming_path())

    def incoming_path(self) -> Path:
        """A fresh temporary path on the store's filesystem (for tools that write files)."""
        return self._incoming / secrets.token_hex(16)

    def put_bytes(self, data: bytes, expected: Digest | None = None) -> Digest:
        with self.writer() as w:
            w.write(data)
            return w.commit(expected)

    def adopt_file(
        self,
        path: Path,
        expected: Digest | None = None,
        *,
        hashed: PrefixDigest | None = None,
        durable: bool = True,
    ) -> Digest:
        """Verify a finished file (hashing it), fsync it and move it into the store.

        ``hashed`` is the digest of this file's first bytes, taken while it was
        being written (see krill.prefixdigest): only the rest is read here. The
        caller vouches that nobody rewrites those bytes afterwards (libtorrent
        never rewrites a piece that passed its check), so a match stands. A
        mismatch is only a suspicion: it is confirmed by hashing the whole file
        before the file is thrown away.

        ``durable=False`` skips both fsyncs (file and directory), for a store that
        is a cache and hashes its blobs again after a restart before using them
        (the agent's): a crash may then lose a blob or leave it torn, and it is
        fetched again; it is never served unverified. Measured in the herd
        benchmark, 16 nodes publishing at once spent 50-130 ms in those fsyncs.
        """
        actual = _digest_of(path, hashed)
        if expected is not None and actual != expected and hashed is not None and hashed.offset:
            log.warning("blobstore.prefix_digest_mismatch path=%s hashed=%d", path, hashed.offset)
            actual = _digest_of(path, None)
        if expected is not None and actual != expected:
            path.unlink(missing_ok=True)
            raise DigestMismatchError(expected, actual)
        if durable:
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        self._publish(path, actual, durable=durable)
        return actual

    def read_bytes(self, digest: Digest) -> bytes:
        """Whole blob in memory: for manifests and configs only, never layers."""
        return self.path(digest).read_bytes()

    def delete(self, digest: Digest) -> bool:
        path = self.path(digest)
        for sidecar in path.parent.glob(f"{digest.hex}.*"):
            sidecar.unlink(missing_ok=True)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        return True

    def digests(self) -> Iterator[Digest]:
        """Every committed blob (sidecars excluded)."""
        for shard in sorted(self._blobs.iterdir()):
            if not shard.is_dir():
                continue
            for entry in sorted(shard.iterdir()):
                if len(entry.name) == 64 and "." not in entry.name:
                    yield Digest("sha256", entry.name)

    def _publish(self, tmp: Path, digest: Digest, *, durable: bool = True) -> None:
        final = self.path(digest)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, final)
        if durable:
            fsync_dir(final.parent)


def _digest_of(path: Path, hashed: PrefixDigest | None) -> Digest:
    """The file's sha256, reading only what ``hashed`` has not (if it is of this file)."""
    if hashed is None or hashed.path != path:
        prefix = PrefixDigest(path)
    else:
        prefix = hashed.copy()
    prefix.advance(os.stat(path).st_size)
    return Digest.from_hasher(prefix.hasher)
