"""Properties of the bencoding codec (krill/bencode.py).

Torrents and tracker answers come from the network, and every caller guards
``decode`` with ``except BencodeError``: any other exception out of it (an
IndexError, a RecursionError) is a crash in the tracker or the agent. So:
values round-trip exactly, the decoder accepts only canonical bytes (so
re-encoding gives back what was hashed), and any bytes, random or a mutated
valid encoding, decode or raise ``BencodeError``.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from krill import bencode
from krill.bencode import MAX_DEPTH, BencodeError

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# What decode can give back: 20-digit integers at most (its documented bound), bytes, lists
# and dictionaries keyed by bytes.
integers = st.integers(min_value=-(10**20) + 1, max_value=10**20 - 1)
values = st.recursive(
    integers | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.binary(max_size=6), inner,
                                                                max_size=4),
    max_leaves=15,
)


def decodes_or_refuses(data: bytes) -> Any:
    """The contract: a value, or BencodeError (any other exception fails the test)."""
    try:
        return bencode.decode(data)
    except BencodeError:
        return None


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid encoding with bytes flipped, inserted, deleted or the end cut off."""
    data = bytearray(bencode.encode(draw(values)))
    for _ in range(draw(st.integers(1, 4))):
        where = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["flip", "insert", "delete", "cut"]))
        byte = draw(st.sampled_from(b"ilde0123456789:-x\x00"))
        if action == "insert" or not data:
            data.insert(where, byte)
        elif action == "flip":
            data[min(where, len(data) - 1)] = byte
        elif action == "delete":
            del data[min(where, len(data) - 1)]
        else:
            del data[where:]
    return bytes(data)


@PROPERTY
@given(values)
def test_values_round_trip(value: Any) -> None:
    assert bencode.decode(bencode.encode(value)) == value


@PROPERTY
@given(values)
def test_str_keys_and_values_encode_as_their_utf8(value: Any) -> None:
    as_text = {"k\u00e9y": value, "s": "v\u00e4lue"}
    assert bencode.decode(bencode.encode(as_text)) == {"k\u00e9y".encode(): value,
                                                       b"s": "v\u00e4lue".encode()}


@PROPERTY
@given(st.binary(max_size=200))
def test_any_bytes_decode_or_raise_bencode_error(data: bytes) -> None:
    decodes_or_refuses(data)


@PROPERTY
@given(mutated())
def test_mutated_encodings_decode_or_raise_bencode_error(data: bytes) -> None:
    value = decodes_or_refuses(data)
    if value is not None:  # accepted: then it was canonical
        assert bencode.encode(value) == data


@PROPERTY
@given(st.binary(max_size=200) | mutated())
def test_accepted_bytes_are_canonical(data: bytes) -> None:
    try:
        value = bencode.decode(data)
    except BencodeError:
        return
    assert bencode.encode(value) == data


@PROPERTY
@given(st.dictionaries(st.binary(max_size=6), values, min_size=1, max_size=4), st.data())
def test_dict_value_span_is_the_value_as_received(
    doc: dict[bytes, Any], data: st.DataObject
) -> None:
    key = data.draw(st.sampled_from(sorted(doc)))
    raw = bencode.encode(doc)
    start, end = bencode.dict_value_span(raw, key)
    assert raw[start:end] == bencode.encode(doc[key])


@PROPERTY
@given(st.binary(max_size=120) | mutated(), st.binary(max_size=6))
def test_dict_value_span_of_any_bytes_is_a_span_or_bencode_error(raw: bytes, key: bytes) -> None:
    try:
        start, end = bencode.dict_value_span(raw, key)
    except BencodeError:
        return
    assert 0 < start <= end <= len(raw)


@pytest.mark.parametrize("opener", [b"l", b"d1:a"])
def test_nesting_past_the_limit_is_a_bencode_error(opener: bytes) -> None:
    at_limit = b"l" * MAX_DEPTH + b"e" * MAX_DEPTH
    assert bencode.decode(at_limit) is not None
    for depth in (MAX_DEPTH + 1, 100_000):
        with pytest.raises(BencodeError, match="nested deeper"):
            bencode.decode(opener * depth + b"i0e" + b"e" * depth)


@pytest.mark.parametrize("data", [
    b"i-0e", b"i01e", b"i+1e", b"i 1e", b"i1_0e", b"ie",
    b"i" + b"9" * 21 + b"e", b"i-" + b"9" * 21 + b"e",
    b"01:a", b"1:", b"9" * 21 + b":", b"d1:bi0e1:ai0ee", b"d1:ai0e1:ai0ee", b"di0ei0ee",
    b"l", b"d", b"i1ei2e", b"\xb2:a", b"",
])
def test_malformed_or_non_canonical_bytes_are_refused(data: bytes) -> None:
    with pytest.raises(BencodeError):
        bencode.decode(data)
