"""Properties of metainfo handling (krill/metainfo.py).

Metainfo reaches an agent from a tracker or an origin, and the origin reads
its own stored copies back; all of them call ``check_metainfo`` and
``info_hash`` and catch ``MetainfoError`` only. So: any bytes are accepted or
refused with ``MetainfoError``, never another exception; what is accepted is
exactly the torrent ``make_metainfo`` builds for the blob (any other info
dictionary would give another infohash, so the agent would sit in a swarm of
its own); and the infohash is the SHA-1 of the info bytes as received.
"""

from __future__ import annotations

import hashlib
import random
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from krill import bencode
from krill.digests import Digest
from krill.metainfo import (
    MIN_PIECE_LENGTH,
    MetainfoError,
    check_metainfo,
    info_hash,
    make_metainfo,
    piece_count,
    piece_length_for,
)

PROPERTY = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

DIGEST = Digest.of_bytes(b"the blob")
bencodable = st.recursive(
    st.integers(-(10**6), 10**6) | st.binary(max_size=24),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.binary(max_size=12), inner,
                                                                max_size=3),
    max_leaves=10,
)
INFO_KEYS = [b"length", b"name", b"piece length", b"pieces"]


def canonical_info(length: int) -> dict[bytes, Any]:
    """The info dictionary every origin makes for a blob of ``length`` bytes (hashes aside)."""
    piece_length = piece_length_for(length)
    return {b"length": length, b"name": DIGEST.hex.encode(), b"piece length": piece_length,
            b"pieces": bytes(20 * piece_count(length, piece_length))}


def accepted(metainfo: bytes) -> bool:
    """The contract: accepted, or MetainfoError (any other exception fails the test)."""
    try:
        check_metainfo(metainfo, DIGEST)
    except MetainfoError:
        return False
    return True


lengths = st.integers(0, 3 * MIN_PIECE_LENGTH) | st.integers(0, 1 << 40)


@PROPERTY
@given(lengths)
def test_the_canonical_torrent_is_accepted(length: int) -> None:
    assert accepted(bencode.encode({b"info": canonical_info(length)}))


@PROPERTY
@given(st.binary(max_size=300))
def test_any_bytes_are_accepted_or_a_metainfo_error(metainfo: bytes) -> None:
    accepted(metainfo)
    try:
        info_hash(metainfo)
    except MetainfoError:
        pass


@PROPERTY
@given(bencodable)
def test_any_bencoded_value_is_accepted_or_a_metainfo_error(value: Any) -> None:
    accepted(bencode.encode(value))
    accepted(bencode.encode({b"info": value}))


@PROPERTY
@given(lengths, st.sampled_from(INFO_KEYS), bencodable)
def test_an_info_field_changed_is_refused(length: int, key: bytes, value: Any) -> None:
    info = canonical_info(length)
    changed = {**info, key: value}
    if key == b"pieces" and isinstance(value, bytes) and len(value) == len(info[b"pieces"]):
        return  # other hashes of the right count: only the download can tell
    if accepted(bencode.encode({b"info": changed})):  # only as another blob's own torrent
        assert changed == canonical_info(changed[b"length"])


@PROPERTY
@given(lengths, st.binary(max_size=12), bencodable)
def test_any_extra_info_key_is_refused(length: int, key: bytes, value: Any) -> None:
    """An extra key would change the infohash: another swarm than every origin's."""
    info = canonical_info(length)
    if key not in info:
        assert not accepted(bencode.encode({b"info": {**info, key: value}}))


@PROPERTY
@given(lengths, st.binary(max_size=12).filter(lambda k: k != b"info"), bencodable)
def test_any_extra_top_level_key_is_refused(length: int, key: bytes, value: Any) -> None:
    """No origin adds one; an ``announce`` would send libtorrent to another tracker."""
    torrent = {b"info": canonical_info(length), key: value}
    assert not accepted(bencode.encode(torrent))


@PROPERTY
@given(lengths, st.dictionaries(st.binary(max_size=12), bencodable, max_size=3))
def test_info_hash_is_the_sha1_of_the_info_bytes(length: int, extra: dict[bytes, Any]) -> None:
    info = canonical_info(length)
    torrent = bencode.encode({**extra, b"info": info})
    assert info_hash(torrent) == hashlib.sha1(bencode.encode(info)).hexdigest()


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 3 * MIN_PIECE_LENGTH + 7), st.integers(0, 2**32))
def test_made_metainfo_is_checked_and_hashes_every_piece(size: int, seed: int) -> None:
    data = random.Random(seed).randbytes(size)
    digest = Digest.of_bytes(data)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "blob"
        path.write_bytes(data)
        metainfo = make_metainfo(path, digest)
    check_metainfo(metainfo, digest)
    info = bencode.decode(metainfo)[b"info"]
    step = info[b"piece length"]
    hashes = [hashlib.sha1(data[i : i + step]).digest() for i in range(0, len(data), step)]
    assert info[b"pieces"] == b"".join(hashes)
