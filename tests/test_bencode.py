"""Bencoding: canonical, strict, bounded; and what libtorrent makes still decodes."""

from __future__ import annotations

from pathlib import Path

import libtorrent as lt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from krill import bencode

bencodable = st.recursive(
    st.integers(min_value=-(2**63), max_value=2**63 - 1) | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=5)
    | st.dictionaries(st.binary(max_size=10), inner, max_size=5),
    max_leaves=30,
)


def test_round_trip_and_canonical_encoding() -> None:
    value = {"b": [1, -2, b"x"], "a": {"nested": b""}}
    encoded = bencode.encode(value)
    assert encoded == b"d1:ad6:nested0:e1:bli1ei-2e1:xee"
    assert bencode.decode(encoded) == {b"a": {b"nested": b""}, b"b": [1, -2, b"x"]}


@given(bencodable)
def test_decode_inverts_encode_and_encode_inverts_decode(value: object) -> None:
    encoded = bencode.encode(value)
    assert bencode.decode(encoded) == value
    assert bencode.encode(bencode.decode(encoded)) == encoded


@pytest.mark.parametrize(
    "bad",
    [
        b"", b"x", b"i1", b"5:abc", b"d1:a", b"i1ee", b"ie", b"i-e", b"le1:a",
        b"i1_000e", b"i 1 e", b"i+1e", b"i-0e", b"i03e", b"i-03e", b"i1.5e",
        b"01:a", b"1_0:abcdefghij", b"+1:a", b" 1:a",
        b"d1:bi1e1:ai2ee",  # keys out of order
        b"d1:ai1e1:ai2ee",  # repeated key
        b"di1ei2ee",  # key that is not a string
        b"i" + b"9" * 5000 + b"e",  # absurdly long integer
    ],
)
def test_non_canonical_or_malformed_input_is_refused(bad: bytes) -> None:
    with pytest.raises(bencode.BencodeError):
        bencode.decode(bad)


@pytest.mark.parametrize(
    "deep",
    [
        b"l" * 100_000 + b"e" * 100_000,
        b"d1:a" * 2000 + b"i0e" + b"e" * 2000,
        b"l" * (bencode.MAX_DEPTH + 1) + b"e" * (bencode.MAX_DEPTH + 1),
    ],
)
def test_deep_nesting_is_a_bencode_error_not_a_recursion_error(deep: bytes) -> None:
    with pytest.raises(bencode.BencodeError, match="nested deeper"):
        bencode.decode(deep)


def test_nesting_up_to_the_limit_is_fine() -> None:
    depth = bencode.MAX_DEPTH
    assert bencode.decode(b"l" * depth + b"e" * depth) is not None


def test_what_libtorrent_makes_decodes_and_re_encodes_identically(tmp_path: Path) -> None:
    (tmp_path / "blob").write_bytes(bytes(range(256)) * 1000)
    creator = lt.create_torrent(lt.list_files(str(tmp_path / "blob")), 16 * 1024)
    creator.set_creator("krill test")
    creator.add_tracker("http://127.0.0.1:1/announce")
    lt.set_piece_hashes(creator, str(tmp_path))
    torrent = lt.bencode(creator.generate())
    decoded = bencode.decode(torrent)
    assert decoded[b"info"][b"length"] == 256_000
    assert bencode.encode(decoded) == torrent
    answer = lt.bencode(
        {"interval": 30, "peers": b"\x7f\x00\x00\x01\x1a\xe1", "complete": 1, "incomplete": 0}
    )
    assert bencode.decode(answer)[b"peers"] == b"\x7f\x00\x00\x01\x1a\xe1"


def test_dict_value_span_finds_the_raw_bytes_of_a_value() -> None:
    data = b"d8:announce3:url4:infod6:lengthi5eee"
    start, end = bencode.dict_value_span(data, b"info")
    assert data[start:end] == b"d6:lengthi5ee"
    with pytest.raises(bencode.BencodeError, match="no key"):
        bencode.dict_value_span(data, b"missing")
    with pytest.raises(bencode.BencodeError):
        bencode.dict_value_span(b"li1ee", b"info")
