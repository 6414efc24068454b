"""Compute a delta that rebuilds a target layer's tar from a base layer's tar.

Per file (member content larger than the small-file limit), smallest wins:

* copy from the base, when a base file has the same content (by sha256),
* zstd with the paired base file as prefix (paired by path, then by name),
  with long-distance matching and a window covering prefix + file: a cheap
  level-3 gate first, a higher level only where no diff won clearly,
* a binary diff for changed files, tried only where the gate left a lot:
  HDiffPatch by default (OP_HDIFF, see hdiff.py), bsdiff4 with
  ``diff_engine="bsdiff"``; binaries over ``diff_segment_bytes`` are diffed
  in one segment per worker, in parallel, and binaries over
  ``bsdiff_max_bytes`` in as many segments as keep each op within it;
  changed x86-64/aarch64 ELF files get the ELF-aware diff (OP_ELF, elf.py)
  where it round-trips, whole, not in segments,
* literal zstd for files with no partner.

Everything else (headers, padding, small files, end-of-archive) is the meta
stream: one zstd frame whose prefix is the base's meta stream, so unchanged
headers cost almost nothing. Files bigger than MAX_PIECE_BYTES are coded in
pieces so the applier's memory stays bounded.

This module runs the pipeline (scan, pair, code in worker threads, write the
ops in order, sign); the steps live beside it: pairing.py (which base file),
jobs.py (pieces and segments), piececoder.py (the smallest op for a piece),
metastream.py (the meta stream).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from krill.atomicfile import atomic_output
from krill.delta import format as fmt
from krill.delta.detect import detect_recipe
from krill.delta.elf import looks_elf
from krill.delta.jobs import Job, partner_piece, segmentable, segments, split
from krill.delta.layerfiles import TarFile, materialize_tar, window_log_for
from krill.delta.metaprefix import TRIAL_BYTES, choose_meta_cut, meta_cuts
from krill.delta.metastream import MetaCoder
from krill.delta.options import EncodeOptions, default_workers
from krill.delta.pairing import BaseIndex, hash_range, read_tar_range
from krill.delta.piececoder import encode_piece
from krill.delta.ranges import Range
from krill.delta.recipes import Recipe
from krill.delta.restarts import parse_restarts
from krill.delta.segreuse import (
    MAX_PLANNED_TAR,
    BaseTokens,
    Reuse,
    find_spans,
    prove_spans,
)
from krill.delta.tarscan import Layout, Member, bulk_members, meta_ranges, read_meta_prefix, scan
from krill.digests import sha256_file

__all__ = ["EncodeOptions", "EncodeResult", "create_delta"]

log = logging.getLogger(__name__)

META_OP_BYTES = 4 << 20


@dataclass(frozen=True, slots=True)
class EncodeResult:
    path: Path
    size: int
    target_size: int
    recipe: Recipe
    stats: dict[str, int]


@dataclass(frozen=True, slots=True)
class _Sources:
    """What coding a target file reads: both tars, the base's index, the knobs, the counts."""

    base: BinaryIO
    target: BinaryIO
    index: BaseIndex
    options: EncodeOptions
    stats: _Stats


class _Stats:
    """Counts of encodings chosen, updated from worker threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def add(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counts[str(key)] += n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


def create_delta(
    base_blob: Path, target_blob: Path, out: Path, options: EncodeOptions | None = None
) -> EncodeResult:
    """Write a delta rebuilding ``target_blob`` from ``base_blob`` to ``out``.

    Raises RecipeError when the target's compression cannot be reproduced.
    ``out`` appears only when complete (written beside it, then renamed).
    """
    options = options or EncodeOptions()
    work = out.parent
    target_tar = materialize_tar(target_blob, work)
    base_tar: TarFile | None = None
    try:
        # Reproducing the target's compression takes one full recompression: it runs
        # beside the encoding (zlib and zstd release the GIL) and stops it on failure.
        side = ThreadPoolExecutor(1, thread_name_prefix="krill-delta-recipe")
        with side:
            recipe = side.submit(detect_recipe, target_blob, target_tar.path)
            base_tar = materialize_tar(base_blob, work)
            return _encode_tars(
                base_tar,
                target_tar,
                _layer_infos(base_blob, base_tar, target_blob, target_tar),
                recipe,
                out,
                options,
                (base_blob, target_blob),
            )
    finally:
        target_tar.discard()
        if base_tar is not None:
            base_tar.discard()


def _with_reuse(
    recipe: Recipe,
    base_blob: Path,
    base_tar: Path,
    base_digest: str,
    target_blob: Path,
    target_tar: Path,
    workers: int,
) -> Recipe:
    """``recipe`` with the proven spans where a node can take the target's tokens from the
    base (segreuse.py); unchanged unless it is a Go recipe with restart points and the
    base is gzip."""
    if recipe.kind != "gzip-go" or not recipe.params.get("restarts"):
        return recipe
    if target_tar.stat().st_size > MAX_PLANNED_TAR:
        log.info("delta.recipe.reuse_skipped blob=%s reason=tar-over-limit", target_blob.name)
        return recipe
    points = parse_restarts(recipe.params["restarts"])
    level = int(recipe.params["level"])
    try:
        spans = find_spans(base_blob, base_tar, target_blob, target_tar, [p.in_off for p in points])
        base = BaseTokens(base_blob, base_digest)
        proven = prove_spans(level, points, spans, target_tar, target_blob, base, workers)
    except (OSError, ValueError) as exc:  # a base that is no deflate stream (zstd, a tar)
        log.info("delta.recipe.reuse_skipped blob=%s reason=%s", target_blob.name, exc)
        return recipe  # reuse only saves a node time: the delta is good without it
    covered = sum(span.p2 - span.p1 for span in proven)
    log.info(
        "delta.recipe.reuse blob=%s spans=%d of=%d bytes=%d tar=%d",
        target_blob.name,
        len(proven),
        len(spans),
        covered,
        target_tar.stat().st_size,
    )
    if not proven:
        return recipe
    params = {**recipe.params, "reuse": Reuse(base_digest, proven).to_json()}
    return Recipe(recipe.kind, params)


def _layer_infos(
    base_blob: Path, base_tar: TarFile, target_blob: Path, target_tar: TarFile
) -> tuple[fmt.LayerInfo, fmt.LayerInfo]:
    return _layer_info(base_blob, base_tar), _layer_info(target_blob, target_tar)


def _layer_info(blob: Path, tar: TarFile) -> fmt.LayerInfo:
    return fmt.LayerInfo(str(sha256_file(str(blob))), blob.stat().st_size, tar.diff_id, tar.size)


def _encode_tars(
    base_tar: TarFile,
    target_tar: TarFile,
    infos: tuple[fmt.LayerInfo, fmt.LayerInfo],
    recipe_future: Future[Recipe],
    out: Path,
    options: EncodeOptions,
    blobs: tuple[Path, Path],
) -> EncodeResult:
    stats = _Stats()
    with open(base_tar.path, "rb") as base, open(target_tar.path, "rb") as target:
        base_layout = scan(base, base_tar.size)
        target_layout = scan(target, target_tar.size)
        limit = options.small_file_limit
        prefix, meta = _meta_params(base, base_layout, target, target_layout, limit)
        index = BaseIndex(base, bulk_members(base_layout, limit))
        fd, body_name = tempfile.mkstemp(prefix=".krill-delta-", suffix=".tmp", dir=out.parent)
        body_path = Path(body_name)
        try:
            with os.fdopen(fd, "wb") as body:
                sources = _Sources(base, target, index, options, stats)
                meta_coder = MetaCoder(prefix, meta, options.meta_level)
                _write_ops(body, target_layout, sources, meta_coder, recipe_future)
            recipe = _with_reuse(
                recipe_future.result(),
                blobs[0],
                base_tar.path,
                infos[0].digest,
                blobs[1],
                target_tar.path,
                default_workers(),
            )
            header = fmt.DeltaHeader(infos[0], infos[1], recipe.to_json(), meta, stats.snapshot())
            size = _assemble(out, header.to_bytes(), body_path)
        finally:
            body_path.unlink(missing_ok=True)
    log.info(
        "delta.created out=%s size=%d target_tar=%d stats=%s",
        out.name,
        size,
        target_tar.size,
        stats.snapshot(),
    )
    return EncodeResult(out, size, infos[1].size, recipe, stats.snapshot())


def _meta_params(
    base: BinaryIO, base_layout: Layout, target: BinaryIO, target_layout: Layout, limit: int
) -> tuple[bytes, fmt.MetaParams]:
    """The base's meta stream up to the cut the clock chooses (metaprefix.py: the node's
    first op waits for the base to be decompressed that far), and the parameters the
    applier checks it against."""
    prefix = read_meta_prefix(base, base_layout, limit, fmt.MAX_META_PREFIX_BYTES)
    target_meta_size = sum(n for _, n in meta_ranges(target_layout, limit))
    window_log = min(fmt.MAX_META_WINDOW_LOG, window_log_for(len(prefix) + target_meta_size))
    cuts = meta_cuts(meta_ranges(base_layout, limit), base_layout.total_size, len(prefix))
    target_meta = read_meta_prefix(target, target_layout, limit, TRIAL_BYTES)
    cut = choose_meta_cut(prefix, cuts, target_meta, window_log, target_meta_size)
    log.info(
        "delta.meta_prefix len=%d of=%d base_tar_offset=%d",
        cut.prefix_len,
        len(prefix),
        cut.tar_offset,
    )
    prefix = prefix[: cut.prefix_len]
    return prefix, fmt.MetaParams(
        prefix_len=len(prefix),
        prefix_sha256=hashlib.sha256(prefix).hexdigest(),
        window_log=min(fmt.MAX_META_WINDOW_LOG, window_log_for(len(prefix) + target_meta_size)),
        small_file_limit=limit,
    )


def _assemble(out: Path, header: bytes, body_path: Path) -> int:
    """header + ops + OP_END + sha256(everything before), written beside ``out`` then renamed."""
    hasher = hashlib.sha256()
    with (
        atomic_output(out, prefix=".krill-delta-", suffix=".tmp") as dst,
        open(body_path, "rb") as body,
    ):
        for chunk in _chain(header, body, bytes([fmt.OP_END])):
            hasher.update(chunk)
            dst.write(chunk)
        dst.write(hasher.digest())
    return out.stat().st_size


def _chain(head: bytes, body: BinaryIO, tail: bytes) -> Iterator[bytes]:
    yield head
    while chunk := body.read(1 << 20):
        yield chunk
    yield tail


class _OrderedOps:
    """Ops written to ``body`` in the order emitted, each as soon as it and those before are ready.

    At most ``max_pending`` ops wait at a time (workers' futures and finished ops
    queued behind them), so memory stays bounded by a few pieces.
    """

    def __init__(self, body: BinaryIO, max_pending: int) -> None:
        self._body = body
        self._max_pending = max_pending
        self._pending: deque[Future[bytes]] = deque()

    def emit(self, op: bytes | Future[bytes]) -> None:
        if isinstance(op, bytes):
            if not self._pending:
                self._body.write(op)
                return
            done: Future[bytes] = Future()
            done.set_result(op)
            op = done
        pending = self._pending
        pending.append(op)
        while pending and (len(pending) > self._max_pending or pending[0].done()):
            self._body.write(pending.popleft().result())

    def drain(self) -> None:
        while self._pending:
            self._body.write(self._pending.popleft().result())


def _write_ops(
    body: BinaryIO,
    layout: Layout,
    src: _Sources,
    meta_coder: MetaCoder,
    recipe_future: Future[Recipe],
) -> None:
    """Every op of the target in order; unchanged stretches become one COPY each.

    A meta range (headers, padding) is held until the member after it is known: when
    that member's content is in the base and the base holds the same meta bytes right
    before it, both are copied, so a run of unchanged files (same order, same headers)
    costs one COPY instead of a COPY and a META op per file.
    """
    options = src.options
    ops = _OrderedOps(body, options.workers * 2)
    run = _CopyRun(ops)
    held: Range | None = None  # _segments never yields two meta ranges in a row
    with ThreadPoolExecutor(options.workers, thread_name_prefix="krill-delta-enc") as pool:
        for item in _segments(layout, options.small_file_limit):
            if recipe_future.done():
                recipe_future.result()  # an unreproducible target stops the work here
            if isinstance(item, Range):
                held = item
                continue
            same = _same_content(item, src)
            if same is not None:
                src.stats.add("copy_files")
                if held is not None and _base_has_before(src, held, same):
                    run.add(same.offset - held.size, held.size + same.size)
                    src.stats.add("meta_copied_bytes", held.size)
                    held = None
                    continue
            if held is not None:
                _emit_meta(ops, run, held, src, meta_coder)
                held = None
            if same is not None:
                run.add(same.offset, same.size)
                continue
            run.flush()
            for op in _content_ops(item, src, pool):
                ops.emit(op)
        if held is not None:
            _emit_meta(ops, run, held, src, meta_coder)
        run.flush()
        ops.emit(meta_coder.finish())
        ops.drain()


class _CopyRun:
    """COPY ops of contiguous base bytes, merged into one until something else is emitted."""

    def __init__(self, ops: _OrderedOps) -> None:
        self._ops = ops
        self._start = 0
        self._size = 0

    def add(self, base_offset: int, size: int) -> None:
        if self._size and base_offset == self._start + self._size:
            self._size += size
            return
        self.flush()
        self._start, self._size = base_offset, size

    def flush(self) -> None:
        if self._size:
            self._ops.emit(fmt.encode_copy(self._start, self._size))
            self._size = 0


def _emit_meta(
    ops: _OrderedOps, run: _CopyRun, rng: Range, src: _Sources, meta_coder: MetaCoder
) -> None:
    run.flush()
    for piece in split(rng, META_OP_BYTES):
        ops.emit(meta_coder.encode(read_tar_range(src.target, piece)))
        src.stats.add("meta_bytes", piece.size)


def _same_content(member: Member, src: _Sources) -> Range | None:
    """The base range holding exactly this member's content, if any."""
    same = src.index.by_hash.get(hash_range(src.target, Range(member.offset, member.size)))
    return None if same is None else Range(same.offset, same.size)


def _base_has_before(src: _Sources, meta: Range, content: Range) -> bool:
    """Whether the base's bytes just before ``content`` equal the target's ``meta`` bytes."""
    if meta.size > content.offset or meta.size > META_OP_BYTES:
        return False
    before = Range(content.offset - meta.size, meta.size)
    return read_tar_range(src.base, before) == read_tar_range(src.target, meta)


def _segments(layout: Layout, limit: int) -> Iterator[Range | Member]:
    """The target in order: meta ranges and bulk members, covering every byte once."""
    pos = 0
    for member in bulk_members(layout, limit):
        if member.offset > pos:
            yield Range(pos, member.offset - pos)
        yield member
        pos = member.offset + member.size
    if layout.total_size > pos:
        yield Range(pos, layout.total_size - pos)


def _content_ops(
    member: Member, src: _Sources, pool: ThreadPoolExecutor
) -> Iterator[Future[bytes]]:
    """Coded jobs (futures, in order) for a member whose content the base does not hold."""
    whole = Range(member.offset, member.size)
    partner = src.index.partner(member.name, member.size)
    src.stats.add("coded_files")
    for piece in split(whole, src.options.piece_bytes):
        base_piece = partner_piece(partner, piece.offset - whole.offset, piece.size, src.options)
        for job in _jobs(Job(piece, base_piece), src):
            yield pool.submit(
                _code_job,
                job,
                read_tar_range(src.target, job.target),
                read_tar_range(src.base, job.base) if job.base else b"",
                src,
            )


def _jobs(job: Job, src: _Sources) -> list[Job]:
    if not segmentable(job, src.base, src.target, src.options) or _whole_elf(job, src):
        return [job]
    jobs = segments(job, src.options)
    src.stats.add("diff_segments", len(jobs))
    return jobs


def _whole_elf(job: Job, src: _Sources) -> bool:
    """An ELF pair that fits one diff op is not split: OP_ELF needs the whole file (its headers,
    sections and relocations), and beats two HDiffPatch segments by 3x (libcrypto.so.3)."""
    if not src.options.elf_transform or job.base is None:
        return False
    if not src.options.diff_allowed(job.target.size, job.base.size):
        return False
    head = Range(job.target.offset, 8)
    return looks_elf(read_tar_range(src.target, head)) and looks_elf(
        read_tar_range(src.base, Range(job.base.offset, 8))
    )


def _code_job(job: Job, data: bytes, base: bytes, src: _Sources) -> bytes:
    """Worker thread: the job's smallest op, counted under the encoding that won."""
    op, encoding = encode_piece(job, data, base, src.options)
    src.stats.add(encoding)
    return op
