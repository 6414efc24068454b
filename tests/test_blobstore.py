"""The blob store publishes only verified, complete blobs."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from krill.blobstore import BlobStore, DigestMismatchError, SizeMismatchError
from krill.digests import Digest, DigestError


def test_commit_publishes_under_digest(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    digest = store.put_bytes(b"hello")
    assert digest == Digest("sha256", hashlib.sha256(b"hello").hexdigest())
    assert store.read_bytes(digest) == b"hello"
    assert list(store.digests()) == [digest]


def test_mismatching_digest_leaves_nothing(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    wrong = Digest.of_bytes(b"other")
    with pytest.raises(DigestMismatchError):
        store.put_bytes(b"hello", expected=wrong)
    assert not store.has(wrong)
    assert list(store.digests()) == []
    assert list((tmp_path / "incoming").iterdir()) == []


def test_size_mismatch_leaves_nothing(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    w = store.writer()
    w.write(b"abc")
    with pytest.raises(SizeMismatchError):
        w.commit(Digest.of_bytes(b"abc"), expected_size=4)
    assert list(store.digests()) == []


def test_interrupted_write_is_removed_on_restart(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    w = store.writer()
    w.write(b"partial")
    # Simulate a crash: the writer is never committed or aborted.
    BlobStore(tmp_path)
    assert not w.path.exists()
    assert list(BlobStore(tmp_path).digests()) == []


def test_concurrent_writers_of_same_digest_end_with_one_file(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    data = b"x" * 1_000_000
    errors: list[BaseException] = []

    def write() -> None:
        try:
            store.put_bytes(data, expected=Digest.of_bytes(data))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    digest = Digest.of_bytes(data)
    assert store.read_bytes(digest) == data
    assert list(store.digests()) == [digest]


@pytest.mark.parametrize(
    "text",
    [
        "sha256:" + "A" * 64,
        "sha256:" + "a" * 63,
        "sha256:../../etc/passwd",
        "md5:" + "a" * 32,
        "sha256",
        "",
        "sha256:" + "a" * 64 + "/x",
    ],
)
def test_bad_digests_are_refused(text: str) -> None:
    with pytest.raises(DigestError):
        Digest.parse(text)


def test_sidecar_kind_cannot_escape(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    digest = store.put_bytes(b"a")
    assert store.sidecar_path(digest, "torrent").name.endswith(".torrent")
    with pytest.raises(ValueError):
        store.sidecar_path(digest, "../x")
    store.sidecar_path(digest, "torrent").write_bytes(b"t")
    assert list(store.digests()) == [digest]
    assert store.delete(digest)
    assert not store.sidecar_path(digest, "torrent").exists()


def test_a_cache_adopts_a_file_without_fsync_but_never_unverified(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``durable=False`` (the agent's swarm downloads) skips the fsyncs, not the check."""
    synced: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)  # a spy: it still syncs
    store = BlobStore(tmp_path)
    data = os.urandom(300_000)
    good = store.incoming_path()
    good.write_bytes(data)
    digest = store.adopt_file(good, Digest.of_bytes(data), durable=False)
    assert store.read_bytes(digest) == data
    assert synced == []

    bad = store.incoming_path()
    bad.write_bytes(data[:-1] + b"?")
    with pytest.raises(DigestMismatchError):
        store.adopt_file(bad, Digest.of_bytes(data + b"other"), durable=False)
    assert not bad.exists()

    durable = store.incoming_path()
    durable.write_bytes(data + b"more")
    store.adopt_file(durable, Digest.of_bytes(data + b"more"))
    assert len(synced) == 2, "by default the file and its directory are fsynced"
