"""Recompression recipes: how to turn a rebuilt tar back into the exact blob.

A delta rebuilds the *uncompressed* tar (deltas over gzip bytes save almost
nothing), so a node must then recreate the registry's compressed bytes.
That only works when the compressor is one we can run again with the same
parameters and get the same output:

* ``identity``: the blob is the tar.
* ``gzip-zlib``: zlib deflate at some level/memLevel/strategy, with the
  original gzip header bytes kept verbatim (mtime, OS, flags, file name).
* ``gzip-go``: Go's compress/gzip (Docker, BuildKit, crane, ko) at some
  level, header verbatim, by Krill's C port of Go's deflate
  (``krill/delta/gogzip.py``). GNU gzip, pigz, zlib-ng and ISA-L produce
  other bytes, and neither family reproduces them. At levels 4-9 the recipe
  carries proven restart points (``restarts``), so a node with several cores
  recompresses segments in parallel (``krill/delta/restarts.py``).
* ``zstd``: streaming compression by the pinned libzstd at some level, with
  the frame's checksum and content-size flags. The recipe records the
  libzstd version and is refused by any other version.

A recipe is *detected* by reproducing the blob (``krill/delta/detect.py``).
"""

from __future__ import annotations

import gzip
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from krill.delta.blobread import (
    GZIP_MAGIC,
    MAX_GZIP_HEADER,
    blob_kind,
    iter_tar_chunks,
)
from krill.delta.compressors import (
    Compressor,
    GzipGo,
    GzipZlib,
    Identity,
    RecipeError,
    Zstd,
    gzip_go_parallel,
    gzip_zlib_parallel,
)
from krill.delta.gogzip import (
    GO_LEVELS,
    go_header,
    missing_reason,
)
from krill.delta.restarts import (
    PARALLEL_LEVELS,
    RestartError,
    RestartPoint,
    parse_restarts,
)
from krill.delta.zstdlib import zstd

if TYPE_CHECKING:  # imported where a gzip-zlib recipe needs it: ~5 ms the others do not pay
    from krill.delta.segreuse import BaseTokens, Reuse, ReuseSpan
    from krill.delta.segwriter import ReuseFor
    from krill.delta.zlibrestarts import ZlibPoint

__all__ = [
    "IDENTITY",
    "Compressor",
    "Recipe",
    "RecipeError",
    "blob_kind",
    "go_gzip_recipe",
    "gzip_recipe",
    "iter_tar_chunks",
    "zstd_recipe",
]

log = logging.getLogger(__name__)

PROBE_CHUNK = 1 << 16
ZSTD_VERSION = zstd.zstd_version
# Compression ratios no stream can exceed (see Recipe.max_tar_size), with a little margin.
_MAX_DEFLATE_RATIO = 1040
_MAX_ZSTD_RATIO = 32800


@dataclass(frozen=True, slots=True)
class Recipe:
    """A reproducible compression setting, serialisable into a delta header."""

    kind: str
    params: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.params}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Recipe:
        kind = doc.get("kind")
        params = {k: v for k, v in doc.items() if k != "kind"}
        recipe = cls(str(kind), params)
        recipe.check_usable()
        return recipe

    def check_usable(self) -> None:
        """Refuse recipes this node cannot run exactly (unknown kind, other libzstd)."""
        if self.kind == "identity":
            return
        if self.kind == "gzip-zlib":
            _gzip_params(self.params)
            _zlib_restarts(self.params)
            return
        if self.kind == "gzip-go":
            _go_params(self.params)
            _go_restarts(self.params)
            _go_reuse(self.params)
            if (reason := missing_reason()) is not None:
                raise RecipeError(reason)
            return
        if self.kind == "zstd":
            if self.params.get("libzstd") != ZSTD_VERSION:
                raise RecipeError(
                    f"recipe needs libzstd {self.params.get('libzstd')}, this node has "
                    f"{ZSTD_VERSION}: its output may differ, so the layer cannot be rebuilt here"
                )
            _zstd_options(self.params, 0)
            return
        raise RecipeError(f"unknown recipe kind {self.kind!r}")

    def compressor(
        self,
        tar_size: int,
        *,
        workers: int = 1,
        spill_dir: str | None = None,
        base: BaseTokens | None = None,
    ) -> Compressor:
        """A compressor for a tar of ``tar_size`` bytes, on up to ``workers`` threads;
        ``spill_dir``: where input for a long segment may wait on disk (see segstream.py);
        ``base``: the base blob, whose tokens a Go recipe's reuse spans name (segreuse.py)."""
        if self.kind == "identity":
            return Identity()
        if self.kind == "gzip-zlib":
            header, *setting = _gzip_params(self.params)
            zpoints, end_bit = _zlib_restarts(self.params)
            if workers > 1 and zpoints:
                from krill.delta.zlibrestarts import ZlibSetting

                zlib_setting = ZlibSetting(*setting)
                args = (header, zlib_setting, zpoints, end_bit, tar_size, workers, spill_dir)
                return gzip_zlib_parallel(*args)
            return GzipZlib(header, *setting)
        if self.kind == "gzip-go":
            self.check_usable()
            header, level = _go_params(self.params)
            points = _go_restarts(self.params)
            reuse = _go_reuse(self.params, tar_size)
            spans = reuse.spans if reuse and base and base.digest == reuse.base_digest else ()
            if points and (workers > 1 or spans):  # segments, even on one core, to reuse
                reuse_for = _reuse_for(spans, base) if spans and base else None
                return gzip_go_parallel(
                    header, level, points, tar_size, workers, spill_dir, reuse_for
                )
            return GzipGo(header, level)
        if self.kind == "zstd":
            return Zstd(
                _zstd_options(self.params, tar_size), tar_size, bool(self.params["content_size"])
            )
        raise RecipeError(f"unknown recipe kind {self.kind!r}")

    def max_tar_size(self, blob_size: int) -> int:
        """The largest tar a blob of ``blob_size`` bytes can decompress to under this recipe.

        Deflate cannot beat 1032:1 (a 258-byte match in about 2 bits); a zstd
        frame needs at least 4 bytes (an RLE block) per 128 KiB block, 32768:1.
        Measured on 256 MiB of zeros: zlib 1028.7:1, zstd 32680:1. A delta
        declaring a larger tar is crafted: it would only burn CPU.
        """
        if self.kind in ("gzip-zlib", "gzip-go"):
            return blob_size * _MAX_DEFLATE_RATIO
        if self.kind == "zstd":
            return blob_size * _MAX_ZSTD_RATIO
        return blob_size  # identity: the blob is the tar

    def describe(self) -> str:
        shown = {
            k: v
            for k, v in self.params.items()
            if k not in ("header", "restarts", "deflate_bits", "reuse")
        }
        if restarts := self.params.get("restarts"):
            shown["restarts"] = len(restarts)
        if isinstance(reuse := self.params.get("reuse"), dict):
            shown["reuse"] = len(reuse.get("spans") or ())
        extras = ",".join(f"{k}={v}" for k, v in sorted(shown.items()))
        return f"{self.kind}({extras})" if extras else self.kind


IDENTITY = Recipe("identity", {})


def gzip_recipe(
    level: int = 6,
    header: bytes | None = None,
    *,
    mem_level: int = 8,
    strategy: int = 0,
    restarts: Sequence[ZlibPoint] = (),
    deflate_bits: int = 0,
) -> Recipe:
    """zlib gzip as Python's gzip module writes it with mtime 0 (the default for convert).

    ``restarts``: proven restart points (levels 4-9, krill/delta/zlibrestarts.py) and
    ``deflate_bits`` the stream's length; a node that predates them ignores both keys
    and compresses in sequence.
    """
    if header is None:
        header = gzip.compress(b"", compresslevel=level, mtime=0)[:10]
    params: dict[str, Any] = {
        "level": level,
        "mem_level": mem_level,
        "strategy": strategy,
        "header": header.hex(),
    }
    if restarts:
        params["restarts"] = [point.to_json() for point in restarts]
        params["deflate_bits"] = deflate_bits
    return Recipe("gzip-zlib", params)


def go_gzip_recipe(
    level: int = 6,
    header: bytes | None = None,
    restarts: Sequence[RestartPoint] = (),
    reuse: Reuse | None = None,
) -> Recipe:
    """Go's compress/gzip at ``level`` (-1 is recorded as 6: the same bytes); Go's header.

    ``restarts``: proven restart points (levels 4-9), for parallel recompression;
    ``reuse``: proven spans whose tokens a node takes from the base (segreuse.py).
    """
    level = 6 if level == -1 else level
    params: dict[str, Any] = {"level": level, "header": (header or go_header(level)).hex()}
    if restarts:
        params["restarts"] = [point.to_json() for point in restarts]
    if reuse and reuse.spans:
        params["reuse"] = reuse.to_json()
    return Recipe("gzip-go", params)


def zstd_recipe(level: int = 3, *, checksum: bool = False, content_size: bool = True) -> Recipe:
    return Recipe(
        "zstd",
        {
            "level": level,
            "checksum": checksum,
            "content_size": content_size,
            "libzstd": ZSTD_VERSION,
        },
    )


def _gzip_params(params: dict[str, Any]) -> tuple[bytes, int, int, int]:
    try:
        header = bytes.fromhex(params["header"])
        level, mem_level, strategy = (
            int(params["level"]),
            int(params["mem_level"]),
            int(params["strategy"]),
        )
    except (KeyError, TypeError, ValueError, OverflowError) as exc:  # Overflow: int(1e999)
        raise RecipeError(f"bad gzip-zlib recipe: {exc}") from exc
    if not (0 <= level <= 9 and 1 <= mem_level <= 9 and 0 <= strategy <= 4):
        raise RecipeError("bad gzip-zlib recipe: parameter out of range")
    if len(header) > MAX_GZIP_HEADER or header[:2] != GZIP_MAGIC:
        raise RecipeError("bad gzip-zlib recipe: header is not a gzip header")
    return header, level, mem_level, strategy


def _go_params(params: dict[str, Any]) -> tuple[bytes, int]:
    try:
        header = bytes.fromhex(params["header"])
        level = int(params["level"])
    except (KeyError, TypeError, ValueError, OverflowError) as exc:  # Overflow: int(1e999)
        raise RecipeError(f"bad gzip-go recipe: {exc}") from exc
    if level not in GO_LEVELS:
        raise RecipeError(f"bad gzip-go recipe: level {level} is not one of Go's {GO_LEVELS}")
    if len(header) > MAX_GZIP_HEADER or header[:2] != GZIP_MAGIC:
        raise RecipeError("bad gzip-go recipe: header is not a gzip header")
    return header, level


def _go_restarts(params: dict[str, Any]) -> tuple[RestartPoint, ...]:
    if "restarts" not in params:
        return ()
    try:
        points = parse_restarts(params["restarts"])
    except RestartError as exc:
        raise RecipeError(f"bad gzip-go recipe: {exc}") from exc
    if points and int(params["level"]) not in PARALLEL_LEVELS:
        raise RecipeError("bad gzip-go recipe: restart points at a level compressed in sequence")
    return points


def _reuse_for(spans: Sequence[ReuseSpan], base: BaseTokens) -> ReuseFor:
    from krill.delta.segreuse import segment_reuse

    return lambda segment: segment_reuse(spans, segment, base)


def _go_reuse(params: dict[str, Any], tar_size: int | None = None) -> Reuse | None:
    if "reuse" not in params:
        return None
    from krill.delta.segreuse import ReuseError, parse_reuse

    try:
        return parse_reuse(params["reuse"], tar_size)
    except ReuseError as exc:
        raise RecipeError(f"bad gzip-go recipe: {exc}") from exc


def _zlib_restarts(params: dict[str, Any]) -> tuple[tuple[ZlibPoint, ...], int]:
    """The recipe's restart points and its stream's length in bits (none: ((), 0))."""
    if "restarts" not in params:
        return (), 0
    from krill.delta.zlibrestarts import ZLIB_PARALLEL_LEVELS, parse_zlib_restarts

    try:
        points = parse_zlib_restarts(params["restarts"])
    except RestartError as exc:
        raise RecipeError(f"bad gzip-zlib recipe: {exc}") from exc
    end_bit = params.get("deflate_bits")
    if points and (type(end_bit) is not int or not points[-1].bit_off < end_bit < 1 << 53):
        raise RecipeError("bad gzip-zlib recipe: deflate_bits must follow the last restart point")
    if points and int(params["level"]) not in ZLIB_PARALLEL_LEVELS:
        raise RecipeError("bad gzip-zlib recipe: restart points at a level compressed in sequence")
    return (points, end_bit) if points and type(end_bit) is int else ((), 0)


def _zstd_options(params: dict[str, Any], tar_size: int) -> dict[Any, int]:
    p = zstd.CompressionParameter
    try:
        level = int(params["level"])
        options = {
            p.compression_level: level,
            p.checksum_flag: int(bool(params["checksum"])),
            p.content_size_flag: int(bool(params["content_size"])),
        }
    except (KeyError, TypeError, ValueError, OverflowError) as exc:  # Overflow: int(1e999)
        raise RecipeError(f"bad zstd recipe: {exc}") from exc
    lo, hi = p.compression_level.bounds()
    if not lo <= level <= hi:
        raise RecipeError(f"bad zstd recipe: level {level} outside {lo}..{hi}")
    return options
