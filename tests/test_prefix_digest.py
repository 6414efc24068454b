"""A blob's digest taken while it is written, and the store's use of it."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from krill.blobstore import BlobStore, DigestMismatchError
from krill.digests import Digest
from krill.prefixdigest import PrefixDigest
from krill.writeback import start_writeback


def test_advancing_in_steps_hashes_the_file_once_front_to_back(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 5)
    path = tmp_path / "blob"
    path.write_bytes(data)
    prefix = PrefixDigest(path)
    for end in (0, 1, 100, 100, 2 * 1024 * 1024 + 3, 50, len(data)):
        prefix.advance(end)
    assert prefix.offset == len(data)
    assert prefix.hasher.hexdigest() == hashlib.sha256(data).hexdigest()


def test_advancing_past_the_end_of_the_file_stops_there(tmp_path: Path) -> None:
    path = tmp_path / "short"
    path.write_bytes(b"0123456789")
    prefix = PrefixDigest(path)
    prefix.advance(1000)
    assert prefix.offset == 10
    twin = prefix.copy()
    twin.advance(2000)
    expected = hashlib.sha256(b"0123456789").hexdigest()
    assert prefix.hasher.hexdigest() == twin.hasher.hexdigest() == expected


def incoming_with(store: BlobStore, data: bytes) -> Path:
    path = store.incoming_path()
    path.write_bytes(data)
    return path


def test_a_file_hashed_in_part_is_published_after_hashing_the_rest(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    data = os.urandom(1024 * 1024)
    path = incoming_with(store, data)
    prefix = PrefixDigest(path)
    prefix.advance(700_000)
    digest = store.adopt_file(path, Digest.of_bytes(data), hashed=prefix)
    assert store.read_bytes(digest) == data
    assert prefix.offset == 700_000, "the store must finish a copy, not the caller's digest"


def test_a_prefix_hashed_before_its_bytes_were_final_does_not_condemn_a_good_blob(
    tmp_path: Path,
) -> None:
    """The prefix was read while a writer still owed some bytes: the store checks the
    whole file before it calls it corrupt, and publishes it."""
    store = BlobStore(tmp_path)
    data = os.urandom(256 * 1024)
    path = incoming_with(store, bytes(len(data)))  # zeros: the writer has not written yet
    prefix = PrefixDigest(path)
    prefix.advance(100_000)
    path.write_bytes(data)
    digest = store.adopt_file(path, Digest.of_bytes(data), hashed=prefix)
    assert store.read_bytes(digest) == data


def test_a_corrupt_file_is_refused_with_or_without_a_prefix(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    good = os.urandom(64 * 1024)
    for hashed_bytes in (None, 1000):
        path = incoming_with(store, good[:-1] + b"!")
        prefix = None
        if hashed_bytes is not None:
            prefix = PrefixDigest(path)
            prefix.advance(hashed_bytes)
        with pytest.raises(DigestMismatchError):
            store.adopt_file(path, Digest.of_bytes(good), hashed=prefix)
        assert not path.exists()
    assert list(store.digests()) == []


def test_a_prefix_of_another_file_is_ignored(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    data = os.urandom(10_000)
    other = tmp_path / "other"
    other.write_bytes(os.urandom(10_000))
    prefix = PrefixDigest(other)
    prefix.advance(5_000)
    path = incoming_with(store, data)
    assert store.adopt_file(path, Digest.of_bytes(data), hashed=prefix) == Digest.of_bytes(data)


def test_early_writeback_is_a_hint_that_never_fails(tmp_path: Path) -> None:
    path = tmp_path / "growing"
    path.write_bytes(os.urandom(1024 * 1024))
    start_writeback(path, 512 * 1024)
    start_writeback(path, 0)
    start_writeback(tmp_path / "gone", 100)  # a removed download's file: nothing to do
    assert path.stat().st_size == 1024 * 1024


def test_the_store_reads_only_what_comes_after_the_prefix(tmp_path: Path) -> None:
    """The shortcut is really taken: the caller vouches that the hashed bytes are
    final, so the store does not read them again. (Here they are changed behind
    its back, which only a broken caller would do, to show they are not re-read;
    the same file without the prefix is refused.)"""
    store = BlobStore(tmp_path)
    data = os.urandom(300_000)
    expected = Digest.of_bytes(data)
    path = incoming_with(store, data)
    prefix = PrefixDigest(path)
    prefix.advance(200_000)
    with open(path, "r+b") as f:
        f.write(bytes(1000))  # the first bytes, already hashed
    assert store.adopt_file(path, expected, hashed=prefix) == expected

    path = incoming_with(store, bytes(1000) + data[1000:])
    with pytest.raises(DigestMismatchError):
        store.adopt_file(path, expected)
