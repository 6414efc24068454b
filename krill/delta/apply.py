"""Rebuild a target layer blob from a base layer blob and a delta, verified.

The output is streamed: ops are decoded (content ops in worker threads:
zstd and bsdiff4 release the GIL), written in order into the recipe's
compressor, and hashed twice (tar = diff_id, blob = digest). Memory is
bounded by the largest piece an op may rebuild plus its base range and the
in-flight budget, never by the layer. The result is written to a temp file
beside OUT and renamed only when both digests match the delta's header.

This module checks the header against what the caller wants and drives the
rebuild; the steps live beside it: opqueue.py (ops in order, within the
memory budget), opdecode.py (one op's bytes), metastream.py (the meta
stream's prefix), sink.py (hashing and recompressing the output).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

from krill.atomicfile import atomic_output
from krill.delta import format as fmt
from krill.delta.format import DeltaFormatError
from krill.delta.growingtar import GrowingTar
from krill.delta.metastream import open_meta_decoder
from krill.delta.opqueue import run_ops
from krill.delta.options import default_workers
from krill.delta.ranges import Range, iter_range
from krill.delta.recipes import Recipe, RecipeError, blob_kind
from krill.delta.segreuse import BaseTokens
from krill.delta.sink import LayerSink
from krill.digests import Digest, FileDigest, sha256_file

__all__ = [
    "ApplyResult",
    "RebuildResult",
    "apply_delta",
    "check_expected_target",
    "read_delta_header",
    "rebuild_layer",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """A verified rebuilt layer: ``path`` holds bytes whose sha256 is ``digest``."""

    path: Path
    digest: str
    diff_id: str
    size: int
    tar_size: int
    recipe: str


RebuildResult = ApplyResult


def read_delta_header(delta: Path) -> fmt.DeltaHeader:
    """The header of a delta file (validated), without applying it."""
    with open(delta, "rb") as f:
        return fmt.read_header(f)


def apply_delta(
    base_blob: Path,
    delta: Path,
    out: Path,
    *,
    workers: int | None = None,
    expected_digest: str | None = None,
    expected_size: int | None = None,
) -> ApplyResult:
    """Rebuild the delta's target from ``base_blob`` into ``out`` (only if verified).

    ``expected_digest``/``expected_size`` (the manifest's descriptor, when the
    caller knows it) are checked against the header before any work, so a
    delta for another layer, or one declaring another size, costs nothing.
    Raises DeltaFormatError for a malformed delta or a base that does not match
    it, RecipeError when this node cannot run the recipe.
    """
    out = Path(out)
    header = _verified_header(delta)
    check_expected_target(header, expected_digest, expected_size)
    recipe = Recipe.from_json(header.recipe)
    _check_declared_sizes(header, recipe)
    workers = workers or default_workers()
    if blob_kind(base_blob) == "tar":
        return _apply_on_plain_base(base_blob, delta, header, recipe, out, workers)
    return _apply_on_growing_base(base_blob, delta, header, recipe, out, workers)


def _apply_on_growing_base(
    base_blob: Path, delta: Path, header: fmt.DeltaHeader, recipe: Recipe, out: Path, workers: int
) -> ApplyResult:
    """A compressed base is decompressed in a thread while the delta is applied from it.

    The rebuild reads the base's tar as it grows (``growingtar.py``), so
    decompressing it no longer runs before everything else. The base's digest
    is checked before anything is published; when the rebuild fails, a base
    that is not the delta's is the error reported (it is the cause).
    """
    blob_digest = FileDigest(str(base_blob))  # hashed once, for the tokens and for the tar
    claimed = (header.base.digest, header.base.diff_id)
    growing = GrowingTar(base_blob, out.parent, claimed, blob_digest)
    size = header.base.tar_size

    def check_base() -> None:
        tar = growing.result()
        _check_base(tar.diff_id, tar.size, header)

    try:
        try:
            opener = cast(Callable[[], BinaryIO], growing.open)
            base = BaseTokens(base_blob, header.base.digest, blob_digest)
            return _rebuild(size, opener, delta, header, recipe, out, workers, check_base, base)
        except Exception:
            check_base()  # a base that is not the delta's raises here, from the original
            raise
    finally:
        growing.discard()


def _apply_on_plain_base(
    base_blob: Path, delta: Path, header: fmt.DeltaHeader, recipe: Recipe, out: Path, workers: int
) -> ApplyResult:
    """An uncompressed base is hashed in a thread while the delta is applied.

    Nothing is published before the hash is checked, so overlapping the two
    is safe; it saves one full read of the base from the critical path.
    """
    size = base_blob.stat().st_size
    if size != header.base.tar_size:  # its digest is not known yet: say what is
        raise DeltaFormatError(
            f"base layer does not match the delta: its tar is {size} bytes, the delta was "
            f"made from {header.base.diff_id} ({header.base.tar_size} bytes)"
        )
    with ThreadPoolExecutor(1, thread_name_prefix="krill-delta-hash") as hasher:
        digest = hasher.submit(sha256_file, str(base_blob))
        return _rebuild(
            size,
            lambda: open(base_blob, "rb"),
            delta,
            header,
            recipe,
            out,
            workers,
            lambda: _check_base(str(digest.result()), size, header),
        )


def _check_base(diff_id: str, size: int, header: fmt.DeltaHeader) -> None:
    if diff_id != header.base.diff_id or size != header.base.tar_size:
        raise DeltaFormatError(
            f"base layer does not match the delta: its tar is {diff_id} ({size} bytes), "
            f"the delta was made from {header.base.diff_id} ({header.base.tar_size} bytes)"
        )


def rebuild_layer(
    base_blob: Path,
    delta: Path,
    out_dir: Path,
    *,
    expected_digest: str | None = None,
    expected_size: int | None = None,
) -> RebuildResult:
    """Agent entry point: rebuild into ``out_dir/<target hex>``, verified or not at all.

    Decompresses the base, applies the delta, recompresses by the recipe and
    checks diff_id and digest before the file appears. Pass the manifest's
    ``expected_digest`` and ``expected_size``: the header is checked against
    them before anything else is read. Raises DeltaFormatError or RecipeError
    (both ValueError) on any failure; nothing is left behind.
    """
    header = read_delta_header(delta)
    check_expected_target(header, expected_digest, expected_size)
    out = Path(out_dir) / Digest.parse(header.target.digest).hex
    return apply_delta(
        base_blob, delta, out, expected_digest=expected_digest, expected_size=expected_size
    )


def check_expected_target(
    header: fmt.DeltaHeader, expected_digest: str | None, expected_size: int | None
) -> None:
    """Refuse a delta whose header names another target than the caller wants."""
    if expected_digest is not None and header.target.digest != expected_digest:
        raise DeltaFormatError(
            f"delta rebuilds {header.target.digest}, not the wanted layer {expected_digest}"
        )
    if expected_size is not None and header.target.size != expected_size:
        raise DeltaFormatError(
            f"delta declares a {header.target.size}-byte layer, the manifest says "
            f"{expected_size} bytes: refusing it"
        )


def _check_declared_sizes(header: fmt.DeltaHeader, recipe: Recipe) -> None:
    """The tar size must be one the declared blob size can hold under the recipe.

    Output on disk is bounded by ``target.size`` (see LayerSink); this bounds the
    work (hashing, compressing) a crafted ``tar_size`` up to 2^50 could cause.
    """
    target = header.target
    if recipe.kind == "identity" and target.tar_size != target.size:
        raise DeltaFormatError(
            f"delta header: an uncompressed layer's tar_size ({target.tar_size}) must equal "
            f"its size ({target.size})"
        )
    if target.tar_size > recipe.max_tar_size(target.size):
        raise DeltaFormatError(
            f"delta header: target tar_size {target.tar_size} cannot come from a "
            f"{target.size}-byte {recipe.kind} blob (over the recipe's maximum ratio)"
        )


def _delta_truncated() -> DeltaFormatError:
    return DeltaFormatError("delta truncated")


def _verified_header(delta: Path) -> fmt.DeltaHeader:
    """Check the trailer (sha256 of the rest) first, so truncation fails before any work."""
    size = delta.stat().st_size
    if size < 32:
        raise DeltaFormatError("delta truncated (shorter than its trailer)")
    hasher = hashlib.sha256()
    with open(delta, "rb") as f:
        for chunk in iter_range(f, Range(0, size - 32), _delta_truncated):
            hasher.update(chunk)
        if f.read(32) != hasher.digest():
            raise DeltaFormatError("delta is truncated or corrupt (trailer checksum mismatch)")
        f.seek(0)
        return fmt.read_header(f)


def _rebuild(
    base_size: int,
    open_base: Callable[[], BinaryIO],
    delta: Path,
    header: fmt.DeltaHeader,
    recipe: Recipe,
    out: Path,
    workers: int,
    check_base: Callable[[], None],
    base_tokens: BaseTokens | None = None,
) -> ApplyResult:
    with atomic_output(out, prefix=f".{out.name}.", suffix=".krill-tmp") as dst:
        compressor = recipe.compressor(
            header.target.tar_size, workers=workers, spill_dir=str(out.parent), base=base_tokens
        )
        sink = LayerSink(
            dst,
            compressor,
            identity=recipe.kind == "identity",
            max_size=header.target.size,
        )
        with open_base() as base, open(delta, "rb") as df:
            meta = open_meta_decoder(base, base_size, header.meta)
            fmt.read_header(df)
            reader = fmt.OpReader(
                df,
                base_size=base_size,
                target_size=header.target.tar_size,
                delta_size=delta.stat().st_size,
            )
            run_ops(reader, base, meta, sink.write, workers)
            if reader.remaining_out:
                raise DeltaFormatError("delta ended before rebuilding the whole target tar")
            reader.read_trailer()
        sink.finish()
        check_base()
        _check(sink, header)
    log.info("delta.applied out=%s digest=%s recipe=%s", out.name, sink.digest(), recipe.describe())
    return ApplyResult(
        out, sink.digest(), sink.diff_id(), sink.size, sink.tar_size, recipe.describe()
    )


def _check(sink: LayerSink, header: fmt.DeltaHeader) -> None:
    if sink.diff_id() != header.target.diff_id or sink.tar_size != header.target.tar_size:
        raise DeltaFormatError(
            f"rebuilt tar has digest {sink.diff_id()}, expected {header.target.diff_id}"
        )
    if sink.digest() != header.target.digest or sink.size != header.target.size:
        raise RecipeError(
            f"recompressed layer has digest {sink.digest()}, expected {header.target.digest} "
            f"(the recipe did not reproduce the layer on this node)"
        )
