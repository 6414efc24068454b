"""Reused tokens: where a new layer repeats its base, a node takes Go's decisions from the base.

Recompressing is most of a node's rebuild, and most of that is Go's matcher
searching its hash chains. Where the target's tar repeats the base's (files
that did not change between two versions of an image), the matcher mostly
decides exactly what it decided in the base: Go's lazy matcher (levels 4-9)
decides at each position from the 32 KiB behind it, the bytes ahead and a
little pending state. The base's gzip stream records those decisions as its
tokens (literals and matches). So the origin compares the two streams' tokens
(``krill._goflate.deflate_tokens``) over the tar ranges the layers share, and
lists the spans where they are the same (``find_spans``), each from just
after a match (nothing pending) to the end of one. A node decodes those
tokens from its copy of the base (Huffman decoding only, several times faster
than searching) and its segment encoder takes them instead of searching,
visiting the same positions, so blocks, window slides and stored-block
choices fall exactly where Go's do (``krill/_native/goreuse.c``).

Nothing here is trusted: the origin proves every segment with its spans
against the blob's bits before publishing them (``prove_spans``; a segment
that differs loses its spans), a node uses them only with the very base blob
the delta names (its sha256, checked before the first span), and every
rebuilt layer's digest is checked as always. A span the node cannot use is
searched as before: the bytes are the same, only slower.

The origin's side is ``encode._with_reuse`` (after the recipe is detected);
the node's is ``segment_reuse``, called by each segment's worker.

Measured (Go level 6, this 2-core VM; docs/benchmarks.md, "Reused tokens"):
pandas 2.2.2 -> 2.2.3, the whole stream on one core, 0.85 -> 0.63 s with spans
over 41 % of the tar; `krill delta apply` on two workers against the tree
before, alternated, 0.713 -> 0.634 s (numpy 0.885 -> 0.645 s).
"""

from __future__ import annotations

import hashlib
import importlib
import itertools
import mmap
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from krill.delta.blobread import gzip_header
from krill.delta.restarts import (
    RestartError,
    RestartPoint,
    Segment,
    compress_segment,
    ends_where_planned,
    same_bits,
    segments,
)
from krill.digests import FileDigest

__all__ = [
    "MIN_SPAN",
    "BaseTokens",
    "Reuse",
    "ReuseError",
    "ReuseSpan",
    "aligned_ranges",
    "find_spans",
    "parse_reuse",
    "prove_spans",
    "segment_reuse",
]

# Shorter spans are searched: each costs a read of the base, its block's tables, and on
# leaving a re-hash of up to 32 KiB. Pandas with every file's mtime changed, spans over
# 4 / 8 / 16 / 64 KiB: 42 / 38 / 32 / 12 % of the tar; the whole stream on one core, tokens
# decoded included: 0.75 / 0.72 / 0.73 / 0.80 s (none: 0.84 s).
MIN_SPAN = 8 << 10
# Spans end this far before the tar's end: Go's last steps look at less than a full window.
TAIL_GUARD = 64 << 10
MAX_SPANS = 1 << 16
# The origin holds both streams' tokens while comparing: ~0.2 per tar byte at Go's level 6
# (pandas: 8.9 M for 45 MB), 4 bytes each, and 8 more per base token for its offset, so
# ~3.2 bytes per tar byte: layers up to this size, under 0.9 GB; larger ones are not planned.
MAX_PLANNED_TAR = 256 << 20
# Tar members start on 512-byte boundaries: shared files line up on them in both tars.
_BLOCK = 512


class ReuseError(ValueError):
    """A recipe's reuse spans are malformed."""


@dataclass(frozen=True, slots=True)
class ReuseSpan:
    """Target tar ``[p1, p2)`` has the base's tokens from base tar offset ``q1``; a node
    reads the tables of the base's block at ``block_bit`` (of its deflate stream) and
    decodes from the token at ``token_bit``."""

    p1: int
    p2: int
    q1: int
    block_bit: int
    token_bit: int

    def to_json(self) -> list[int]:
        return [self.p1, self.p2, self.q1, self.block_bit, self.token_bit]


@dataclass(frozen=True, slots=True)
class Reuse:
    """The spans of one recipe and the base blob (digest) whose tokens they are."""

    base_digest: str
    spans: tuple[ReuseSpan, ...]

    def to_json(self) -> dict[str, Any]:
        return {"base": self.base_digest, "spans": [span.to_json() for span in self.spans]}


def parse_reuse(value: object, tar_size: int | None = None) -> Reuse:
    """A recipe's ``reuse`` value, checked for shape and order (ReuseError if not)."""
    if not isinstance(value, dict) or not isinstance(value.get("base"), str):
        raise ReuseError('reuse must be {"base": <digest>, "spans": [...]}')
    items = value.get("spans")
    if not isinstance(items, list) or len(items) > MAX_SPANS:
        raise ReuseError(f"reuse spans must be a list of at most {MAX_SPANS}")
    spans = tuple(_parse_span(item, tar_size) for item in items)
    if any(b.p1 < a.p2 for a, b in itertools.pairwise(spans)):
        raise ReuseError("reuse spans must be in order and not overlap")
    return Reuse(value["base"], spans)


def _parse_span(item: object, tar_size: int | None) -> ReuseSpan:
    if not isinstance(item, list) or len(item) != 5 or not all(type(v) is int for v in item):
        raise ReuseError("a reuse span is [p1, p2, q1, block_bit, token_bit], integers")
    span = ReuseSpan(*item)
    end = 1 << 50 if tar_size is None else tar_size
    if not (0 <= span.p1 < span.p2 <= end and 0 <= span.q1 < 1 << 50):
        raise ReuseError(f"reuse span {item} is out of range")
    if not 0 <= span.block_bit < span.token_bit < 1 << 53:
        raise ReuseError(f"reuse span {item} is out of range")
    return span


def _native() -> Any:
    return importlib.import_module("krill._goflate")


# --- the origin ------------------------------------------------------------------------------


def aligned_ranges(base_tar: Path, target_tar: Path) -> list[tuple[int, int, int]]:
    """Runs of 512-byte blocks the target shares with the base, as ``(t_from, t_to, b_from)``:
    target bytes ``[t_from, t_to)`` are the base's from ``b_from`` (each block's first
    occurrence in the base; a hash match is checked against the bytes)."""
    base = _mapped(base_tar)
    first: dict[bytes, int] = {}
    for at in range(0, len(base) - _BLOCK + 1, _BLOCK):
        first.setdefault(hashlib.blake2b(base[at : at + _BLOCK], digest_size=8).digest(), at)
    target = _mapped(target_tar)
    ranges: list[tuple[int, int, int]] = []
    at = 0
    while at + _BLOCK <= len(target):
        b = first.get(hashlib.blake2b(target[at : at + _BLOCK], digest_size=8).digest())
        if b is None or base[b : b + _BLOCK] != target[at : at + _BLOCK]:
            at += _BLOCK
            continue
        n = _BLOCK
        while at + n + _BLOCK <= len(target) and base[b + n : b + n + _BLOCK] == target[
            at + n : at + n + _BLOCK
        ]:
            n += _BLOCK
        ranges.append((at, at + n, b))
        at += n
    return ranges


def _mapped(path: Path) -> mmap.mmap | bytes:
    """A file's bytes from the page cache (an empty file cannot be mapped)."""
    with open(path, "rb") as f:
        if f.seek(0, 2) == 0:
            return b""
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


def _stream(blob: Path) -> tuple[mmap.mmap | bytes, int]:
    """A gzip blob's bytes and where its deflate stream starts."""
    return _mapped(blob), len(gzip_header(blob))


def find_spans(
    base_blob: Path, base_tar: Path, target_blob: Path, target_tar: Path, cuts: Sequence[int]
) -> list[ReuseSpan]:
    """Where the target's tokens are the base's, long enough to pay, none crossing a cut
    (the restart points' offsets: a segment's spans lie inside it)."""
    native = _native()
    t_tokens, _, _, t_size = native.deflate_tokens(*_stream(target_blob))
    b_tokens, _, _, _ = native.deflate_tokens(*_stream(base_blob))
    ranges = aligned_ranges(base_tar, target_tar)
    found = native.reuse_spans(
        t_tokens, b_tokens, ranges, list(cuts), MIN_SPAN, t_size - TAIL_GUARD
    )
    found = found[:MAX_SPANS]
    wanted = sorted({q1 for _p1, _p2, q1 in found})
    bits = dict(zip(wanted, native.deflate_token_bits(*_stream(base_blob), wanted), strict=True))
    return [
        ReuseSpan(p1, p2, q1, *bits[q1]) for p1, p2, q1 in found if bits[q1][0] >= 0
    ]


def prove_spans(
    level: int,
    points: Sequence[RestartPoint],
    spans: Sequence[ReuseSpan],
    tar: Path,
    blob: Path,
    base: BaseTokens,
    workers: int,
) -> tuple[ReuseSpan, ...]:
    """The spans of the segments that, compressed with them, give the blob's bits exactly
    (the node's own code path: ``segment_reuse`` over ``base``); the others' are dropped."""
    data = _mapped(tar)
    expected = _mapped(blob)
    offset = len(gzip_header(blob))

    def proven(segment: Segment[RestartPoint]) -> list[ReuseSpan]:
        mine = _inside(spans, segment)
        if not mine:
            return []
        reuse = segment_reuse(mine, segment, base)
        if len(reuse) != len(mine):
            return []
        lo, hi = segment.input_range(len(data))
        try:
            bits = compress_segment(level, segment, data[lo:hi], reuse)
        except RestartError:
            return []
        at = offset + segment.byte_off
        if not same_bits(bits, expected[at : at + len(bits.data)]):
            return []
        return mine if ends_where_planned(segment, bits) else []

    with ThreadPoolExecutor(max(1, workers)) as pool:
        kept = pool.map(proven, segments(points))
        return tuple(span for group in kept for span in group)


def _inside(spans: Sequence[ReuseSpan], segment: Segment[RestartPoint]) -> list[ReuseSpan]:
    first = segment.start.in_off if segment.start else 0
    last = segment.stop.in_off if segment.stop else None
    return [s for s in spans if s.p1 >= first and (last is None or s.p2 <= last)]


# --- the node (and the origin's proofs) ------------------------------------------------------


class BaseTokens:
    """The base blob's tokens for a span, decoded on demand (from any thread).

    Only the blob the delta names will do: its sha256 is checked on first use, and
    a different blob (the same tar, compressed otherwise) disables reuse. A span
    reads only its own stretch of the blob: memory follows the span, not the layer.
    """

    def __init__(self, blob: Path, digest: str, blob_digest: FileDigest | None = None) -> None:
        """``digest``: the one the delta names; ``blob_digest``: the blob's own, shared."""
        self._blob = blob
        self._digest = digest
        self._blob_digest = blob_digest or FileDigest(str(blob))
        self._lock = threading.Lock()
        self._offset: int | None = None  # the deflate stream's start; None: not usable
        self._checked = False

    @property
    def digest(self) -> str:
        return self._digest

    def _stream_offset(self) -> int | None:
        with self._lock:
            if not self._checked:
                self._checked = True
                try:
                    if str(self._blob_digest.get()) == self._digest:
                        self._offset = len(gzip_header(self._blob))
                except (OSError, ValueError):
                    self._offset = None
            return self._offset

    def tokens(self, span: ReuseSpan) -> bytes | None:
        """The base's tokens from the block holding ``q1`` through ``q1 + (p2 - p1)``."""
        offset = self._stream_offset()
        if offset is None:
            return None
        start = offset + (span.block_bit >> 3)
        entry = span.token_bit - (span.block_bit & ~7)
        stop = span.q1 + span.p2 - span.p1
        # Deflate grows incompressible data by a few bytes per 64 KiB: the span's length
        # plus a margin is enough in practice; a stream cut short is read again, longer.
        size = (entry >> 3) + (span.p2 - span.p1) + (64 << 10)
        with open(self._blob, "rb") as f:
            while True:
                data = os.pread(f.fileno(), size, start)
                try:
                    tokens, _, _, _ = _native().deflate_tokens(
                        data, 0, span.block_bit & 7, span.q1, stop, entry
                    )
                    return tokens
                except ValueError:  # cut short, or not a block boundary of this stream
                    if len(data) < size:
                        return None  # the whole rest of the blob: search instead
                    size *= 2


def segment_reuse(
    spans: Sequence[ReuseSpan], segment: Segment[RestartPoint], base: BaseTokens
) -> list[tuple[int, int, bytes, int]]:
    """``krill._goflate.segment``'s ``reuse`` for the spans inside ``segment``, as offsets
    into its data (which starts at its window's base)."""
    lo = segment.start.base if segment.start else 0
    out = []
    for span in _inside(spans, segment):
        tokens = base.tokens(span)
        if tokens is None:
            return []
        out.append((span.p1 - lo, span.p2 - lo, tokens, span.p1 - lo))
    return out
