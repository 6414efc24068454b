"""Detecting a blob's recipe: the setting that turns its tar back into it exactly.

Compress the tar with each candidate setting (likelier first: the gzip
header's hints) and compare against the blob, stopping at the first differing
chunk, so wrong candidates cost little. At Go's levels 4-9 the detecting run
records restart points, which are then proven (``krill/delta/restarts.py``);
zlib's are found and proven in ``krill/delta/zlibrestarts.py``. Split from
recipes.py, which only describes and runs recipes (what a node needs).
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterator
from pathlib import Path

from krill.delta.blobread import CHUNK, blob_kind, gzip_header
from krill.delta.compressors import Compressor, GzipGo, Identity
from krill.delta.gogzip import candidate_levels, looks_go_made, missing_reason
from krill.delta.options import default_workers
from krill.delta.recipes import (
    IDENTITY,
    PROBE_CHUNK,
    ZSTD_VERSION,
    Recipe,
    RecipeError,
    _go_params,
    _gzip_params,
    go_gzip_recipe,
    gzip_recipe,
    zstd_recipe,
)
from krill.delta.restarts import (
    PARALLEL_LEVELS,
    RESTART_INTERVAL,
    TAIL_MIN,
    RestartPoint,
    prove_restarts,
    thin_points,
)
from krill.delta.zstdlib import zstd

__all__ = ["detect_recipe", "gzip_candidates", "zstd_candidates"]

log = logging.getLogger(__name__)


def detect_recipe(
    blob: Path, tar: Path, *, workers: int | None = None, restart_every: int = RESTART_INTERVAL
) -> Recipe:
    """The recipe that turns ``tar`` back into ``blob`` exactly; RecipeError if none does.

    A Go-made blob at levels 4-9 gets restart points, each proven on up to
    ``workers`` threads (default: the cores, at most 4) by reproducing its
    segment of the blob; ``restart_every``: tar bytes between them.
    """
    kind = blob_kind(blob)
    if kind == "tar":
        if _reproduces(blob, tar, Identity()):
            return IDENTITY
        raise RecipeError("blob is neither gzip, zstd nor its own tar")
    candidates = gzip_candidates(blob) if kind == "gzip" else zstd_candidates(blob)
    for recipe in candidates:
        compressor = _detecting_compressor(recipe, tar, restart_every)
        if _reproduces(blob, tar, compressor):
            if isinstance(compressor, GzipGo) and (points := compressor.restart_points()):
                points = thin_points(points, tar.stat().st_size, restart_every)
                recipe = _with_proven_restarts(recipe, points, blob, tar, workers)
            elif recipe.kind == "gzip-zlib":
                recipe = _with_zlib_restarts(recipe, blob, tar, workers, restart_every)
            log.info("delta.recipe.detected blob=%s recipe=%s", blob.name, recipe.describe())
            return recipe
    if kind == "gzip":
        hint = "made by GNU gzip, pigz or another deflate, neither zlib nor Go's compress/gzip"
        if (reason := missing_reason()) is not None:
            hint = f"not zlib; Go-made gzip was not tried: {reason}"
    else:
        hint = f"not made by streaming libzstd {ZSTD_VERSION}"

    raise RecipeError(
        f"cannot reproduce the target's {kind} compression ({hint}); "
        "re-publish the image with `krill convert` to make its layers delta-able"
    )


def _detecting_compressor(recipe: Recipe, tar: Path, restart_every: int) -> Compressor:
    """The recipe's compressor; at Go's levels 4-9 one that notes restart points on the way."""
    if recipe.kind == "gzip-go":
        header, level = _go_params(recipe.params)
        if level in PARALLEL_LEVELS:
            # recorded closer than kept: thin_points picks segments that shrink at the end
            return GzipGo(header, level, record_every=max(1, min(restart_every, TAIL_MIN) // 4))
    return recipe.compressor(tar.stat().st_size)


def _with_proven_restarts(
    recipe: Recipe, points: list[RestartPoint], blob: Path, tar: Path, workers: int | None
) -> Recipe:
    """``recipe`` with the points whose segments reproduce the blob (see restarts.py)."""
    header, level = _go_params(recipe.params)
    workers = workers or default_workers()
    proven = prove_restarts(level, points, tar, blob, len(header), workers)
    if len(proven) < len(points):
        log.warning(
            "delta.recipe.restarts_dropped blob=%s kept=%d of=%d",
            blob.name,
            len(proven),
            len(points),
        )
    return go_gzip_recipe(level, header, proven)


def _with_zlib_restarts(
    recipe: Recipe, blob: Path, tar: Path, workers: int | None, every: int
) -> Recipe:
    """``recipe`` with proven restart points at its levels 4-9 (see zlibrestarts.py)."""
    from krill.delta.zlibrestarts import ZlibSetting, find_zlib_restarts

    header, level, mem_level, strategy = _gzip_params(recipe.params)
    workers = workers or default_workers()
    setting = ZlibSetting(level, mem_level, strategy)
    proven, planned, end_bit = find_zlib_restarts(setting, tar, blob, len(header), workers, every)
    if len(proven) < planned:
        log.warning(
            "delta.recipe.restarts_dropped blob=%s kept=%d of=%d", blob.name, len(proven), planned
        )
    return gzip_recipe(
        level, header, mem_level=mem_level, strategy=strategy, restarts=proven, deflate_bits=end_bit
    )


def _reproduces(blob: Path, tar: Path, compressor: Compressor) -> bool:
    """Run ``compressor`` over ``tar`` and compare to ``blob``, stopping at the first difference."""
    with open(blob, "rb") as expected, open(tar, "rb") as source:

        def same(out: bytes) -> bool:
            return not out or expected.read(len(out)) == out

        # Small chunks first, doubling to CHUNK: deflate emits its first block after about
        # 16 K symbols, which on compressible text is more than 64 KiB of input, so a
        # wrong candidate is refused after about as much work as that block took, not
        # after a whole 1 MiB chunk (a 10 MB GNU gzip layer: 2.2 -> 0.45 CPU-s to refuse).
        read_size = PROBE_CHUNK
        while chunk := source.read(read_size):
            read_size = min(2 * read_size, CHUNK)
            out = compressor.feed(chunk)
            if not same(out):
                return False
        if not same(compressor.finish()):
            return False
        return expected.read(1) == b""


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
