"""Bencoding (BEP 3): the serialisation of torrents and tracker responses.

Small and strict on purpose: ``encode`` sorts dictionary keys as the spec
requires (so the same data always gives the same bytes, which is what makes
infohashes deterministic), and ``decode`` accepts only that canonical form
and refuses anything malformed or trailing instead of guessing:

* integers are ``i`` + ``0`` or ``-?[1-9][0-9]*`` + ``e`` (no ``+``, blanks,
  underscores, leading zeros or ``-0``), of at most 20 digits;
* string lengths are ``0`` or ``[1-9][0-9]*`` (no leading zeros), of at most 20 digits;
* dictionary keys are strings, sorted as raw bytes and unique;
* nesting is at most ``MAX_DEPTH`` lists/dictionaries deep, so hostile input
  cannot exhaust the interpreter's stack (a ``RecursionError`` would escape
  every caller's ``except BencodeError``).

Because of this, ``encode(decode(data)) == data`` for every accepted input:
re-encoding a decoded info dictionary gives back the bytes that were hashed.
Torrents made by libtorrent and answers from BitTorrent trackers are
canonical, so strictness costs nothing with real peers.
"""

from __future__ import annotations

import re
from typing import Any

# Deeper than any torrent or tracker answer (a torrent nests 3 levels; BEP 52 file trees a few
# more per directory level), shallow enough that recursion is never a risk.
MAX_DEPTH = 64

# A length or integer of more digits cannot describe anything that fits in memory; refusing
# it first keeps int() from spending time on thousands of digits.
_MAX_DIGITS = 20
_INTEGER = re.compile(rb"i(0|-?[1-9][0-9]{0,%d})e" % (_MAX_DIGITS - 1))
_STRING_LENGTH = re.compile(rb"(0|[1-9][0-9]{0,%d}):" % (_MAX_DIGITS - 1))


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
    """Decode one complete canonical bencoded value; dict keys and strings come back as bytes."""
    value, end = _decode_checked(data, 0)
    if end != len(data):
        raise BencodeError(f"invalid bencoding: {len(data) - end} trailing bytes")
    return value


def dict_value_span(data: bytes, key: bytes) -> tuple[int, int]:
    """Where ``key``'s value lies in the top-level dictionary ``data``: ``data[start:end]``.

    For hashing a value exactly as it was received (a torrent's infohash is
    the SHA-1 of the info dictionary's bytes), without trusting a re-encode.
    Raises BencodeError if ``data`` is not a dictionary or has no ``key``.
    """
    if data[:1] != b"d":
        raise BencodeError("invalid bencoding: not a dictionary")
    decode(data)  # the whole document must be valid, not just the part we look at
    pos = 1
    while data[pos : pos + 1] != b"e":
        found, pos = _decode_checked(data, pos)
        start = pos
        _, pos = _decode_checked(data, pos, depth=1)
        if found == key:
            return start, pos
    raise BencodeError(f"dictionary has no key {key!r}")


def _decode_checked(data: bytes, pos: int, depth: int = 0) -> tuple[Any, int]:
    try:
        return _decode_at(data, pos, depth)
    except (IndexError, ValueError) as exc:
        if isinstance(exc, BencodeError):
            raise
        raise BencodeError(f"invalid bencoding: {exc}") from None


def _decode_at(data: bytes, pos: int, depth: int) -> tuple[Any, int]:
    lead = data[pos : pos + 1]
    if lead == b"i":
        return _decode_integer(data, pos)
    if lead in (b"l", b"d"):
        if depth >= MAX_DEPTH:
            raise BencodeError(f"invalid bencoding: nested deeper than {MAX_DEPTH} levels")
        if lead == b"l":
            return _decode_list(data, pos + 1, depth + 1)
        return _decode_dict(data, pos + 1, depth + 1)
    if lead.isdigit():
        return _decode_string(data, pos)
    raise ValueError(f"unexpected byte {lead!r} at {pos}")


def _decode_integer(data: bytes, pos: int) -> tuple[int, int]:
    match = _INTEGER.match(data, pos)
    if match is None:
        raise ValueError(f"malformed integer at {pos}: {data[pos : pos + 24]!r}")
    return int(match[1]), match.end()


def _decode_string(data: bytes, pos: int) -> tuple[bytes, int]:
    match = _STRING_LENGTH.match(data, pos)
    if match is None:
        raise ValueError(f"malformed string length at {pos}: {data[pos : pos + 24]!r}")
    start = match.end()
    end = start + int(match[1])
    if end > len(data):
        raise ValueError("string runs past the end")
    return data[start:end], end


def _decode_list(data: bytes, pos: int, depth: int) -> tuple[list[Any], int]:
    items = []
    while data[pos : pos + 1] != b"e":
        item, pos = _decode_at(data, pos, depth)
        items.append(item)
    return items, pos + 1


def _decode_dict(data: bytes, pos: int, depth: int) -> tuple[dict[bytes, Any], int]:
    result: dict[bytes, Any] = {}
    previous: bytes | None = None
    while data[pos : pos + 1] != b"e":
        if not data[pos : pos + 1].isdigit():
            raise ValueError(f"dictionary key at {pos} is not a string")
        key, pos = _decode_string(data, pos)
        if previous is not None and key <= previous:
            problem = "repeated" if key == previous else "out of order"
            raise ValueError(f"dictionary key {key[:40]!r} at {pos} is {problem}")
        result[key], pos = _decode_at(data, pos, depth)
        previous = key
    return result, pos + 1
