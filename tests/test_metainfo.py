"""Deterministic metainfo: every origin derives the same infohash for the same blob."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import libtorrent as lt
import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpClient

from krill import bencode
from krill.blobstore import BlobStore
from krill.digests import Digest
from krill.endpoints import METAINFO
from krill.metainfo import (
    MAX_METAINFO_BYTES,
    MAX_PIECE_LENGTH,
    MIN_PIECE_LENGTH,
    MetainfoError,
    MetainfoOutdated,
    accepted_piece_lengths,
    check_metainfo,
    info_hash,
    legacy_piece_length_for,
    make_metainfo,
    piece_count,
    piece_length_for,
)
from krill.originclient import fetch_metainfo

OTHER_PROCESS = """
import sys
from pathlib import Path
from krill.digests import Digest
from krill.metainfo import info_hash, make_metainfo
print(info_hash(make_metainfo(Path(sys.argv[1]), Digest.parse(sys.argv[2]))))
"""


@pytest.fixture
def blob(tmp_path: Path) -> tuple[BlobStore, Digest]:
    store = BlobStore(tmp_path / "store")
    data = bytes(range(256)) * 4096 + b"tail"  # 1 MiB + 4: a short last piece
    return store, store.put_bytes(data)


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        (0, MIN_PIECE_LENGTH),
        (1, MIN_PIECE_LENGTH),
        (4 * 1024 * 1024, MIN_PIECE_LENGTH),  # a small layer keeps 64 pieces
        (8 * 1024 * 1024 - 1, MIN_PIECE_LENGTH),
        (8 * 1024 * 1024, 128 * 1024),
        (16 * 1024 * 1024, 128 * 1024),
        (64 * 1024 * 1024, 128 * 1024),  # the herd benchmark's blob: 512 pieces
        (256 * 1024 * 1024, 128 * 1024),
        (256 * 1024 * 1024 + 1, 256 * 1024),
        (512 * 1024 * 1024 + 1, 512 * 1024),
        (1024**3, 512 * 1024),
        (10**15, MAX_PIECE_LENGTH),
    ],
)
def test_piece_length_policy(size: int, expected: int) -> None:
    assert piece_length_for(size) == expected


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        (1, MIN_PIECE_LENGTH),
        (64 * 1024 * 1024, MIN_PIECE_LENGTH),  # 1024 pieces, as origins made it until 2026-12-06
        (128 * 1024 * 1024 + 1, 128 * 1024),
        (1024**3, 512 * 1024),
    ],
)
def test_the_old_rule_is_kept_for_torrents_handed_out_before_it_changed(
    size: int, expected: int
) -> None:
    assert legacy_piece_length_for(size) == expected
    assert accepted_piece_lengths(size) == {piece_length_for(size), expected}


def test_a_small_blob_keeps_enough_pieces_for_a_herd() -> None:
    for size in range(1 << 20, 1 << 30, 1 << 20):
        pieces = piece_count(size, piece_length_for(size))
        assert pieces >= 64 or piece_length_for(size) == MIN_PIECE_LENGTH, size
        assert piece_length_for(size) <= max(128 * 1024, legacy_piece_length_for(size))


def test_piece_count_stays_bounded_until_the_ceiling() -> None:
    for size in (1, 10**6, 10**8, 10**9, 3 * 10**10):
        length = piece_length_for(size)
        assert length & (length - 1) == 0, "piece length must be a power of two"
        assert -(-size // length) <= 2048


def test_same_blob_gives_same_infohash_in_another_process(
    blob: tuple[BlobStore, Digest], tmp_path: Path
) -> None:
    store, digest = blob
    mine = make_metainfo(store.path(digest), digest)
    # A second origin holding its own copy of the blob elsewhere.
    copy = tmp_path / "elsewhere" / "copy"
    copy.parent.mkdir()
    copy.write_bytes(store.path(digest).read_bytes())
    theirs = subprocess.run(
        [sys.executable, "-c", OTHER_PROCESS, str(copy), str(digest)],
        capture_output=True, text=True, check=True, cwd=Path(__file__).parent.parent,
    ).stdout.strip()
    assert info_hash(mine) == theirs
    assert make_metainfo(store.path(digest), digest) == mine


def test_metainfo_is_what_libtorrent_sees(blob: tuple[BlobStore, Digest]) -> None:
    store, digest = blob
    metainfo = make_metainfo(store.path(digest), digest)
    ti = lt.torrent_info(lt.bdecode(metainfo))
    assert str(ti.info_hashes().v1) == info_hash(metainfo)
    assert ti.name() == digest.hex
    assert ti.total_size() == store.size(digest)
    assert ti.num_pieces() == 17  # 16 full 64 KiB pieces and a 4-byte one
    decoded = bencode.decode(metainfo)
    assert set(decoded) == {b"info"}, "nothing that could vary between origins"
    assert set(decoded[b"info"]) == {b"length", b"name", b"piece length", b"pieces"}


def test_metainfo_for_another_digest_is_refused(blob: tuple[BlobStore, Digest]) -> None:
    store, digest = blob
    metainfo = make_metainfo(store.path(digest), digest)
    with pytest.raises(MetainfoError, match="not the requested blob"):
        check_metainfo(metainfo, Digest.of_bytes(b"something else"))
    with pytest.raises(MetainfoError, match="not bencoded"):
        check_metainfo(b"<html>", digest)


def _torrent(digest: Digest, length: int, piece_length: int, pieces: bytes = b"") -> bytes:
    info = {"length": length, "name": digest.hex, "piece length": piece_length, "pieces": pieces}
    return bencode.encode({"info": info})


@pytest.mark.parametrize(
    ("length", "piece_length", "pieces", "reason"),
    [
        (-5, MIN_PIECE_LENGTH, b"", "negative length"),
        (1000, 16 * 1024, bytes(20), "piece length 16384, not the 65536"),
        (1000, 2 * MIN_PIECE_LENGTH, bytes(20), "piece length"),
        (1000, MIN_PIECE_LENGTH, bytes(40), "wrong number of piece hashes"),
        (1000, 0, b"", "piece length 0"),
    ],
    ids=["negative-length", "small-pieces", "big-pieces", "extra-hashes", "zero-pieces"],
)
def test_metainfo_that_no_origin_would_make_is_refused(
    length: int, piece_length: int, pieces: bytes, reason: str
) -> None:
    digest = Digest.of_bytes(b"x")
    with pytest.raises(MetainfoError, match=reason):
        check_metainfo(_torrent(digest, length, piece_length, pieces), digest)


def test_an_old_rule_torrent_is_accepted_by_nodes_and_outdated_for_origins() -> None:
    """A torrent handed out before the rule changed still downloads; origins remake theirs."""
    digest = Digest.of_bytes(b"x")
    size = 64 * 1024 * 1024
    old = _torrent(digest, size, MIN_PIECE_LENGTH, bytes(20 * 1024))
    check_metainfo(old, digest)
    with pytest.raises(MetainfoOutdated, match="old piece length 65536; origins now use 131072"):
        check_metainfo(old, digest, legacy=False)
    current = _torrent(digest, size, 128 * 1024, bytes(20 * 512))
    check_metainfo(current, digest, legacy=False)
    with pytest.raises(MetainfoError, match="piece length 262144, not the 131072") as refused:
        check_metainfo(_torrent(digest, size, 256 * 1024, bytes(20 * 256)), digest)
    assert not isinstance(refused.value, MetainfoOutdated), "neither rule: another swarm"


def test_an_empty_blob_has_a_valid_metainfo() -> None:
    digest = Digest.of_bytes(b"")
    check_metainfo(_torrent(digest, 0, MIN_PIECE_LENGTH), digest)


def test_info_hash_is_of_the_info_bytes_as_received(tmp_path: Path) -> None:
    """A torrent with more top-level keys (announce, creation date): libtorrent's infohash."""
    (tmp_path / "blob").write_bytes(b"z" * 100_000)
    creator = lt.create_torrent(lt.list_files(str(tmp_path / "blob")), MIN_PIECE_LENGTH)
    creator.add_tracker("http://127.0.0.1:1/announce")
    lt.set_piece_hashes(creator, str(tmp_path))
    torrent = lt.bencode(creator.generate())
    assert info_hash(torrent) == str(lt.torrent_info(torrent).info_hashes().v1)
    with pytest.raises(MetainfoError, match="no valid info"):
        info_hash(bencode.encode({"announce": "x"}))


async def test_fetch_metainfo_checks_the_answer(
    blob: tuple[BlobStore, Digest], aiohttp_client: AiohttpClient
) -> None:
    store, digest = blob
    metainfo = make_metainfo(store.path(digest), digest)

    async def serve(request: web.Request) -> web.Response:
        if request.match_info["digest"] == str(digest):
            return web.Response(body=metainfo)
        return web.Response(status=404, text="no such blob")

    app = web.Application()
    app.router.add_get(METAINFO.route, serve)
    client = await aiohttp_client(app)
    base = str(client.make_url(""))
    assert await fetch_metainfo(client.session, base, digest) == metainfo
    with pytest.raises(MetainfoError, match="404"):
        await fetch_metainfo(client.session, base, Digest.of_bytes(b"missing"))


async def test_fetch_metainfo_refuses_an_oversized_answer(aiohttp_client: AiohttpClient) -> None:
    digest = Digest.of_bytes(b"huge")

    async def serve(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()  # chunked: no Content-Length to refuse up front
        await response.prepare(request)
        for _ in range(MAX_METAINFO_BYTES // 65536 + 2):
            await response.write(b"x" * 65536)
        return response

    app = web.Application()
    app.router.add_get(METAINFO.route, serve)
    client = await aiohttp_client(app)
    with pytest.raises(MetainfoError, match="exceeds"):
        await fetch_metainfo(client.session, str(client.make_url("")), digest)
