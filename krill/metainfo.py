"""Deterministic BitTorrent metainfo (v1 .torrent) for a blob.

Every origin must derive the *same* infohash for the same blob, otherwise
origins and agents that met the blob separately would sit in different
swarms. So the torrent holds nothing that varies: no creation date, no
creator, no announce URL (trackers are configured per deployment and handed
to libtorrent separately), no private flag. The info dictionary is exactly
``{length, name, piece length, pieces}`` with ``name`` = the digest's hex,
bencoded with sorted keys.

Piece-length policy (``piece_length_for``): the smallest power of two that
keeps the blob at or under ``TARGET_PIECES`` pieces, clamped to
[``MIN_PIECE_LENGTH``, ``MAX_PIECE_LENGTH``]. Why:

* Small pieces let a peer re-share data sooner (a piece is shareable only
  once it is complete and hash-checked), which is what makes a herd of
  nodes feed each other instead of all waiting on the origin, and they make
  streaming (in-order verified prefix) advance in small steps.
* Too many pieces cost metainfo size (20 bytes each), bitfield and HAVE
  traffic and per-piece bookkeeping; ~2048 pieces keeps a 1 GiB layer's
  metainfo at 40 KB.
* 64 KiB is the floor (four 16 KiB request blocks per piece, so a piece is
  still pipelined); 16 MiB is the ceiling so huge layers stay downloadable
  with bounded per-piece memory and re-fetch cost on a hash failure.

This is part of the wire identity of a blob: changing it changes every
infohash, so it must only change together across all origins.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from krill import bencode
from krill.digests import Digest

MIN_PIECE_LENGTH = 64 * 1024
MAX_PIECE_LENGTH = 16 * 1024 * 1024
TARGET_PIECES = 2048

METAINFO_CONTENT_TYPE = "application/x-bittorrent"
MAX_METAINFO_BYTES = 1 << 20  # 16 MiB pieces: even a 32 GiB blob needs only 40 KB
# The info dictionary's keys: exactly these, so its bytes (the infohash) depend on the blob alone.
INFO_KEYS = frozenset({b"length", b"name", b"piece length", b"pieces"})


class MetainfoError(Exception):
    """Metainfo that cannot be fetched or does not describe the blob asked for."""


def piece_length_for(size: int) -> int:
    """The piece length every origin uses for a blob of ``size`` bytes (see module doc)."""
    if size < 0:
        raise ValueError(f"blob size must not be negative, got {size}")
    length = MIN_PIECE_LENGTH
    while length < MAX_PIECE_LENGTH and length * TARGET_PIECES < size:
        length *= 2
    return length


def piece_count(size: int, piece_length: int) -> int:
    """How many pieces a blob of ``size`` bytes has (0 for an empty blob)."""
    return -(-size // piece_length)


def make_metainfo(path: Path, digest: Digest) -> bytes:
    """Hash the blob at ``path`` into pieces and return the bencoded torrent.

    Reads the file once, in piece-sized chunks (memory stays bounded). The
    caller is responsible for ``path`` holding the blob named by ``digest``
    (the blob store guarantees that for committed blobs).
    """
    size = path.stat().st_size
    piece_length = piece_length_for(size)
    hashes = []
    with open(path, "rb") as f:
        while chunk := f.read(piece_length):
            hashes.append(hashlib.sha1(chunk).digest())
    info = {
        "length": size,
        "name": digest.hex,
        "piece length": piece_length,
        "pieces": b"".join(hashes),
    }
    return bencode.encode({"info": info})


def info_hash(metainfo: bytes) -> str:
    """The hex v1 infohash: sha1 of the info dictionary's bytes exactly as received.

    Hashing the received bytes rather than a re-encoding is what libtorrent
    does, so the two always agree. (``bencode.decode`` accepts only canonical
    input, for which re-encoding would give the same bytes anyway.)
    """
    try:
        start, end = bencode.dict_value_span(metainfo, b"info")
    except bencode.BencodeError as exc:
        raise MetainfoError(f"metainfo has no valid info dictionary: {exc}") from None
    return hashlib.sha1(metainfo[start:end]).hexdigest()


def check_metainfo(metainfo: bytes, digest: Digest) -> None:
    """Raise MetainfoError unless ``metainfo`` is the torrent every origin makes for ``digest``.

    That is: a single-file torrent named for the digest, with a non-negative
    length, the piece length ``piece_length_for`` gives for that length (so
    every origin derives the same infohash) and one SHA-1 per piece, and
    nothing else: an extra info key gives another infohash (a swarm of its
    own), an extra top-level key (``announce``) would point libtorrent at
    another tracker. Whether the hashes are the blob's only the download shows.
    """
    info = _info_dict(metainfo)
    if set(info) != INFO_KEYS:
        extra = sorted(k[:40] for k in set(info) - INFO_KEYS)
        missing = sorted(INFO_KEYS - set(info))
        raise MetainfoError(
            f"metainfo for {digest} is not the one every origin makes: info keys "
            f"{extra} are extra, {missing} missing"
        )
    name = info.get(b"name")
    if name != digest.hex.encode():
        raise MetainfoError(f"metainfo names {name!r}, not the requested blob {digest}")
    length, piece_length = info.get(b"length"), info.get(b"piece length")
    if not isinstance(length, int) or not isinstance(piece_length, int):
        raise MetainfoError(f"metainfo for {digest} lacks a length or piece length")
    if length < 0:
        raise MetainfoError(f"metainfo for {digest} has a negative length {length}")
    if piece_length != piece_length_for(length):
        raise MetainfoError(
            f"metainfo for {digest} has piece length {piece_length}, not the "
            f"{piece_length_for(length)} every Krill origin uses for {length} bytes"
        )
    pieces = info.get(b"pieces", b"")
    expected_pieces = piece_count(length, piece_length)
    if not isinstance(pieces, bytes) or len(pieces) != 20 * expected_pieces:
        raise MetainfoError(f"metainfo for {digest} has the wrong number of piece hashes")


def _info_dict(metainfo: bytes) -> dict[bytes, object]:
    try:
        decoded = bencode.decode(metainfo)
    except bencode.BencodeError as exc:
        raise MetainfoError(f"metainfo is not bencoded: {exc}") from None
    if not isinstance(decoded, dict) or not isinstance(decoded.get(b"info"), dict):
        raise MetainfoError("metainfo has no info dictionary")
    if len(decoded) != 1:
        extra = sorted(k[:40] for k in decoded if k != b"info")
        raise MetainfoError(f"metainfo has keys {extra} besides 'info'; no origin adds any")
    info: dict[bytes, object] = decoded[b"info"]
    return info
