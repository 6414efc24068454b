"""Bencoding (BEP 3): the serialisation of torrents and tracker responses.

Small and strict on purpose: ``encode`` sorts dictionary keys as the spec
requires (so the same data always gives the same bytes, which is what makes
infohashes deterministic), and ``decode`` refuses anything malformed or
trailing instead of guessing.
"""

from __future__ import annotations

from typing import Any


class BencodeError(ValueError):
    """Bytes that are not valid bencoding."""


def encode(value: Any) -> bytes:
    """Bencode ints, bytes, str (as UTF-8), lists/tuples and dicts with str/bytes keys."""
    out: list[bytes] = []
    _encode_into(value, out)
    return b"".join(out)


def _encode_into(value: Any, out: list[bytes]) -> None:
    if isinstance(value, bool):
        raise TypeError("bencoding has no booleans; use 0 or 1")
    if isinstance(value, int):
        out.append(b"i%de" % value)
    elif isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        out.append(b"%d:" % len(raw))
        out.append(raw)
    elif isinstance(value, str):
        _encode_into(value.encode(), out)
    elif isinstance(value, (list, tuple)):
        out.append(b"l")
        for item in value:
            _encode_into(item, out)
        out.append(b"e")
    elif isinstance(value, dict):
        out.append(b"d")
        items = [(k.encode() if isinstance(k, str) else bytes(k), v) for k, v in value.items()]
        for key, item in sorted(items, key=lambda kv: kv[0]):
            _encode_into(key, out)
            _encode_into(item, out)
        out.append(b"e")
    else:
        raise TypeError(f"cannot bencode {type(value).__name__}")


def decode(data: bytes) -> Any:
    """Decode one complete bencoded value; dict keys and strings come back as bytes."""
    try:
        value, end = _decode_at(data, 0)
    except (IndexError, ValueError) as exc:
        raise BencodeError(f"invalid bencoding: {exc}") from None
    if end != len(data):
        raise BencodeError(f"invalid bencoding: {len(data) - end} trailing bytes")
    return value


def _decode_at(data: bytes, pos: int) -> tuple[Any, int]:
    lead = data[pos : pos + 1]
    if lead == b"i":
        end = data.index(b"e", pos)
        return int(data[pos + 1 : end]), end + 1
    if lead == b"l":
        items, pos = [], pos + 1
        while data[pos : pos + 1] != b"e":
            item, pos = _decode_at(data, pos)
            items.append(item)
        return items, pos + 1
    if lead == b"d":
        result: dict[bytes, Any] = {}
        pos += 1
        while data[pos : pos + 1] != b"e":
            key, pos = _decode_at(data, pos)
            if not isinstance(key, bytes):
                raise ValueError("dictionary key is not a string")
            result[key], pos = _decode_at(data, pos)
        return result, pos + 1
    if lead.isdigit():
        colon = data.index(b":", pos)
        length = int(data[pos:colon])
        start = colon + 1
        if start + length > len(data):
            raise ValueError("string runs past the end")
        return data[start : start + length], start + length
    raise ValueError(f"unexpected byte {lead!r} at {pos}")
