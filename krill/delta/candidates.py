"""The recipes that could have made a compressed blob, likelier first (for detect_recipe).

Split from recipes.py to keep it short; each candidate costs one probe chunk
when wrong (recipes._reproduces).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from pathlib import Path

from krill.delta.blobread import gzip_header
from krill.delta.gogzip import candidate_levels, looks_go_made, missing_reason
from krill.delta.recipes import Recipe, RecipeError, go_gzip_recipe, zstd_recipe
from krill.delta.zstdlib import zstd

__all__ = ["gzip_candidates", "zstd_candidates"]


def gzip_candidates(blob: Path) -> Iterator[Recipe]:
    """zlib's and Go's settings that could have written the blob's header, likelier first.

    Go's default header is also Python gzip's, so a Go-shaped header only puts
    Go's levels first; a wrong candidate costs one chunk either way.
    """
    header = gzip_header(blob)
    go = [] if missing_reason() else [go_gzip_recipe(lv, header) for lv in candidate_levels(header)]
    if looks_go_made(header):
        yield from go
    yield from _zlib_candidates(header)
    if not looks_go_made(header):
        yield from go


def _zlib_candidates(header: bytes) -> Iterator[Recipe]:
    xfl = header[8]
    if xfl == 2:
        levels = [9]
    elif xfl == 4:
        levels = [1]
    else:
        levels = [6, 5, 4, 3, 2, 7, 8, 0, 9, 1]
    for mem_level in (8, 9):
        for level in levels:
            for strategy in (zlib.Z_DEFAULT_STRATEGY, zlib.Z_FILTERED):
                params = {"level": level, "mem_level": mem_level, "strategy": strategy}
                yield Recipe("gzip-zlib", {**params, "header": header.hex()})


def zstd_candidates(blob: Path) -> Iterator[Recipe]:
    with open(blob, "rb") as f:
        head = f.read(18)
    if len(head) < 6:
        raise RecipeError("zstd frame truncated")
    descriptor = head[4]
    if descriptor & 0x03:
        raise RecipeError("zstd frame uses a dictionary")
    checksum = bool(descriptor & 0x04)
    single_segment = bool(descriptor & 0x20)
    content_size = bool(descriptor >> 6) or single_segment
    lo, hi = zstd.CompressionParameter.compression_level.bounds()
    order = [3, 1, 2, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22]
    order += list(range(-1, max(lo, -7) - 1, -1))
    for level in order:
        if lo <= level <= hi:
            yield zstd_recipe(level, checksum=checksum, content_size=content_size)
