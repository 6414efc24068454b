"""Deterministic BitTorrent metainfo (v1 .torrent) for a blob.

Every origin must derive the *same* infohash for the same blob, otherwise
origins and agents that met the blob separately would sit in different
swarms. So the torrent holds nothing that varies: no creation date, no
creator, no announce URL (trackers are configured per deployment and handed
to libtorrent separately), no private flag. The info dictionary is exactly
``{length, name, piece length, pieces}`` with ``name`` = the digest's hex,
bencoded with sorted keys.

Piece-length policy (``piece_length_for``, since 2026-12-06): start at
``MIN_PIECE_LENGTH`` (64 KiB) and double while the blob still has at least
``MIN_PIECES`` (64) pieces of the doubled length, up to
``PREFERRED_PIECE_LENGTH`` (128 KiB); then double further while the blob has
more than ``TARGET_PIECES`` (2048), up to ``MAX_PIECE_LENGTH`` (16 MiB). So a
4 MiB blob has 64 pieces of 64 KiB, anything from 8 MiB to 256 MiB pieces of
128 KiB (a 64 MiB layer: 512), 1 GiB 2048 of 512 KiB, as before. Why:

* Small pieces let a peer re-share data sooner (a piece is shareable only
  once it is complete and hash-checked), which is what makes a herd of
  nodes feed each other instead of all waiting on the origin, and they make
  streaming (in-order verified prefix) advance in small steps. A small blob
  keeps at least 64 pieces (while they are over 64 KiB) so a herd of dozens
  still has something to trade, and its first verified byte is one small
  piece away.
* Every piece costs CPU on every node, per piece and per message: a HAVE to
  each peer, a piece-finished alert, a hash job, piece-picker and interest
  updates, and an origin-fed piece's copy into libtorrent. In the N=16
  real-agent herd on 2 cores that CPU is pull time. But a piece is passed on
  only once it is whole, so bigger pieces also add a store-and-forward delay
  per hop. Alternated N=16 herds (docs/benchmarks.md, issue 16): 128 KiB
  instead of 64 KiB took ~7 % of the agents' CPU per GiB with the same or a
  slightly better p50; 256 KiB took ~14 % but made p50 ~4 % worse whenever
  the CPU was not the limit (first byte ~0.15 s later). 128 KiB it is.
* Too many pieces cost metainfo size (20 bytes each), bitfield and HAVE
  traffic; ~2048 pieces keeps a 1 GiB layer's metainfo at 40 KB.
* 64 KiB is the floor (four 16 KiB request blocks per piece, so a piece is
  still pipelined); 16 MiB is the ceiling so huge layers stay downloadable
  with bounded per-piece memory and re-fetch cost on a hash failure.

This is part of the wire identity of a blob: changing it changes every
infohash, so it must only change together across all origins.

Upgrades. The rule before 2026-12-06 (``legacy_piece_length_for``: a
64 KiB floor, the same 2048-piece target) gave other lengths for blobs of
8 MiB to 256 MiB. What each side does with a torrent of the old length:

* Origins make and keep only the current rule's torrent: a stored sidecar of
  the old length is made again on its first request
  (``check_metainfo(..., legacy=False)`` raises ``MetainfoOutdated``; one
  SHA-1 pass over the blob, logged ``origin.metainfo_outdated``), so all
  origins converge on one infohash per blob.
* Everyone else (agents, the tracker's metainfo fetch, delta rebuilds)
  accepts either length (``check_metainfo``'s default): a torrent handed out
  before the upgrade (a tracker's in-memory cache, an origin not yet
  upgraded during a rolling upgrade) still downloads, in its own swarm, with
  the origin's piece claims cut in the torrent's piece length (the node says
  which, ``origin.piececlaims``). Nothing else is accepted: a length neither
  rule gives is still a different swarm, and refused.
* Agents keep no metainfo across restarts; a blob in an agent's cache is
  served from the file whatever torrent it came with.

Upgrade agents before origins: an agent older than this accepts only the
old length and falls back to the origin's HTTP for a new one.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from krill import bencode
from krill.digests import Digest

MIN_PIECE_LENGTH = 64 * 1024
PREFERRED_PIECE_LENGTH = 128 * 1024
MAX_PIECE_LENGTH = 16 * 1024 * 1024
MIN_PIECES = 64
TARGET_PIECES = 2048

METAINFO_CONTENT_TYPE = "application/x-bittorrent"
MAX_METAINFO_BYTES = 1 << 20  # 16 MiB pieces: even a 32 GiB blob needs only 40 KB
# The info dictionary's keys: exactly these, so its bytes (the infohash) depend on the blob alone.
INFO_KEYS = frozenset({b"length", b"name", b"piece length", b"pieces"})


class MetainfoError(Exception):
    """Metainfo that cannot be fetched or does not describe the blob asked for."""


class MetainfoOutdated(MetainfoError):
    """The blob's torrent as origins made it before the current piece-length rule."""


def piece_length_for(size: int) -> int:
    """The piece length every origin uses for a blob of ``size`` bytes (see module doc)."""
    if size < 0:
        raise ValueError(f"blob size must not be negative, got {size}")
    length = MIN_PIECE_LENGTH
    while length < PREFERRED_PIECE_LENGTH and 2 * length * MIN_PIECES <= size:
        length *= 2
    return _grown_to_target(length, size)


def legacy_piece_length_for(size: int) -> int:
    """The piece length origins used before 2026-12-06 (64 KiB floor), still accepted."""
    if size < 0:
        raise ValueError(f"blob size must not be negative, got {size}")
    return _grown_to_target(MIN_PIECE_LENGTH, size)


def accepted_piece_lengths(size: int) -> frozenset[int]:
    """Piece lengths a torrent of ``size`` bytes may have: the current rule's and the old one's."""
    return frozenset({piece_length_for(size), legacy_piece_length_for(size)})


def _grown_to_target(length: int, size: int) -> int:
    """``length`` doubled until the blob has at most TARGET_PIECES pieces (or the ceiling)."""
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


def check_metainfo(metainfo: bytes, digest: Digest, *, legacy: bool = True) -> None:
    """Raise MetainfoError unless ``metainfo`` is the torrent every origin makes for ``digest``.

    That is: a single-file torrent named for the digest, with a non-negative
    length, the piece length ``piece_length_for`` gives for that length (so
    every origin derives the same infohash) and one SHA-1 per piece, and
    nothing else: an extra info key gives another infohash (a swarm of its
    own), an extra top-level key (``announce``) would point libtorrent at
    another tracker. Whether the hashes are the blob's only the download shows.

    With ``legacy`` (the default: nodes, trackers) the piece length of the
    rule before 2026-12-06 is accepted too, so a torrent handed out before an
    upgrade still downloads; without it (origins, for the torrent they keep)
    that length raises ``MetainfoOutdated`` (module doc, "Upgrades").
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
    _check_piece_length(digest, length, piece_length, legacy)
    pieces = info.get(b"pieces", b"")
    expected_pieces = piece_count(length, piece_length)
    if not isinstance(pieces, bytes) or len(pieces) != 20 * expected_pieces:
        raise MetainfoError(f"metainfo for {digest} has the wrong number of piece hashes")


def _check_piece_length(digest: Digest, length: int, piece_length: int, legacy: bool) -> None:
    current = piece_length_for(length)
    if piece_length == current:
        return
    if piece_length == legacy_piece_length_for(length):
        if legacy:
            return
        raise MetainfoOutdated(
            f"metainfo for {digest} has the old piece length {piece_length}; origins "
            f"now use {current} for {length} bytes"
        )
    raise MetainfoError(
        f"metainfo for {digest} has piece length {piece_length}, not the "
        f"{current} every Krill origin uses for {length} bytes"
    )


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
