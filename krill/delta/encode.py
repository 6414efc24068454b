"""Compute a delta that rebuilds a target layer's tar from a base layer's tar.

Per file (member content larger than the small-file limit), smallest wins:

* copy from the base, when a base file has the same content (by sha256),
* zstd with the paired base file as prefix (paired by path, then by name),
  with long-distance matching and a window covering prefix + file: a cheap
  level-3 gate first, a higher level only where no diff won clearly,
* a binary diff for changed files up to ``bsdiff_max_bytes``, tried only
  where the gate left a lot: HDiffPatch by default (OP_HDIFF, see
  hdiff.py), bsdiff4 with ``diff_engine="bsdiff"``; binaries over
  ``diff_segment_bytes`` are diffed in one segment per worker, in parallel,
* literal zstd for files with no partner.

Everything else (headers, padding, small files, end-of-archive) is the meta
stream: one zstd frame whose prefix is the base's meta stream, so unchanged
headers cost almost nothing. Files bigger than MAX_PIECE_BYTES are coded in
pieces so the applier's memory stays bounded.
"""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
import re
import tempfile
import threading
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import bsdiff4.core

from krill.delta import format as fmt
from krill.delta import hdiff
from krill.delta.layerfiles import TarFile, materialize_tar, window_log_for
from krill.delta.recipes import Recipe, detect_recipe
from krill.delta.tarscan import Layout, Member, bulk_members, meta_ranges, read_meta_prefix, scan
from krill.delta.zstdlib import zstd
from krill.digests import sha256_file

log = logging.getLogger(__name__)

META_OP_BYTES = 4 << 20


@dataclass(frozen=True, slots=True)
class EncodeOptions:
    """Tuning knobs; the defaults are what the benchmark measured."""

    content_level: int = 19
    # A cheap first try (~1/15 the time of level 12): the fallback op, and the yardstick that
    # decides whether a binary diff and zstd's higher levels are worth running.
    gate_level: int = 3
    # Files over top_level_max_bytes get this level instead of content_level (and a diff).
    probe_level: int = 12
    top_level_max_bytes: int = 8 << 20
    meta_level: int = 19
    small_file_limit: int = 4096
    # Largest file (and partner) a binary diff is tried on; 0 turns binary diffs off.
    bsdiff_max_bytes: int = 32 << 20
    # "hdiff" (HDiffPatch: 4-6x faster, mostly smaller) or "bsdiff" (bsdiff4, format v1 ops).
    diff_engine: str = "hdiff"
    # Binary files larger than this are diffed in `workers` segments, each against the
    # same-proportion window of the partner, in parallel (+0.1-0.5% size at 2 segments).
    diff_segment_bytes: int = 4 << 20
    workers: int = max(1, min(4, os.cpu_count() or 1))
    piece_bytes: int = fmt.MAX_PIECE_BYTES

    def __post_init__(self) -> None:
        # Appliers refuse binary-diff ops over MAX_DIFF_OP_BYTES (their memory bound), so
        # a delta made with a larger limit would be thrown away after all the work.
        if not 0 <= self.bsdiff_max_bytes <= fmt.MAX_DIFF_OP_BYTES:
            raise ValueError(
                f"the binary-diff size limit must be 0..{fmt.MAX_DIFF_OP_BYTES} bytes "
                f"(what appliers accept), got {self.bsdiff_max_bytes}"
            )


@dataclass(frozen=True, slots=True)
class EncodeResult:
    path: Path
    size: int
    target_size: int
    recipe: Recipe
    stats: dict[str, int]


@dataclass(frozen=True, slots=True)
class _Range:
    offset: int
    size: int


@dataclass(frozen=True, slots=True)
class _Job:
    """One piece of target content and the base range it may be coded against."""

    target: _Range
    base: _Range | None


class _Stats:
    """Counts of encodings chosen, updated from worker threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def add(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counts[key] += n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


class _BaseIndex:
    """The base's bulk files by content hash, and by name keys from exact to loose."""

    def __init__(self, f: BinaryIO, members: list[Member]) -> None:
        self.by_hash: dict[bytes, _Range] = {}
        # Exact path, path without versions/hashes, file name, file name without versions.
        self.by_key: list[dict[str, list[tuple[int, _Range]]]] = [{}, {}, {}, {}]
        for m in members:
            rng = _Range(m.offset, m.size)
            self.by_hash.setdefault(_hash_range(f, rng), rng)
            for table, key in zip(self.by_key, _name_keys(m.name), strict=True):
                table.setdefault(key, []).append((m.size, rng))

    def partner(self, name: str, size: int) -> _Range | None:
        """The base file most likely to resemble target file ``name``.

        Renames in real layers are mostly version or hash changes in a path
        (``numpy-2.2.5.dist-info``, ``libfoo-56d6093b.so``), so those are
        matched after exact paths and before bare file names.
        """
        for table, key in zip(self.by_key, _name_keys(name), strict=True):
            found = table.get(key)
            if found:
                return min(found, key=lambda item: abs(item[0] - size))[1]
        return None


_VERSIONISH = re.compile(r"[0-9a-f]{7,}|[0-9]+")


def _name_keys(name: str) -> tuple[str, str, str, str]:
    path = _norm(name)
    base = posixpath.basename(path)
    return path, _VERSIONISH.sub("#", path), base, _VERSIONISH.sub("#", base)


def _norm(name: str) -> str:
    return name.removeprefix("./").rstrip("/")


def _hash_range(f: BinaryIO, rng: _Range) -> bytes:
    hasher = hashlib.sha256()
    f.seek(rng.offset)
    left = rng.size
    while left:
        chunk = f.read(min(left, 1 << 20))
        if not chunk:
            raise OSError("tar shrank while reading")
        hasher.update(chunk)
        left -= len(chunk)
    return hasher.digest()


def _pread(f: BinaryIO, rng: _Range) -> bytes:
    f.seek(rng.offset)
    data = f.read(rng.size)
    if len(data) != rng.size:
        raise OSError("tar shrank while reading")
    return data


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
            )
    finally:
        target_tar.discard()
        if base_tar is not None:
            base_tar.discard()


def _layer_infos(
    base_blob: Path, base_tar: TarFile, target_blob: Path, target_tar: TarFile
) -> tuple[fmt.LayerInfo, fmt.LayerInfo]:
    return (
        fmt.LayerInfo(
            str(sha256_file(str(base_blob))),
            base_blob.stat().st_size,
            base_tar.diff_id,
            base_tar.size,
        ),
        fmt.LayerInfo(
            str(sha256_file(str(target_blob))),
            target_blob.stat().st_size,
            target_tar.diff_id,
            target_tar.size,
        ),
    )


def _encode_tars(
    base_tar: TarFile,
    target_tar: TarFile,
    infos: tuple[fmt.LayerInfo, fmt.LayerInfo],
    recipe_future: Future[Recipe],
    out: Path,
    options: EncodeOptions,
) -> EncodeResult:
    stats = _Stats()
    with open(base_tar.path, "rb") as base, open(target_tar.path, "rb") as target:
        base_layout = scan(base, base_tar.size)
        target_layout = scan(target, target_tar.size)
        limit = options.small_file_limit
        prefix = read_meta_prefix(base, base_layout, limit, fmt.MAX_META_PREFIX_BYTES)
        target_meta_size = sum(n for _, n in meta_ranges(target_layout, limit))
        meta = fmt.MetaParams(
            prefix_len=len(prefix),
            prefix_sha256=hashlib.sha256(prefix).hexdigest(),
            window_log=min(fmt.MAX_META_WINDOW_LOG, window_log_for(len(prefix) + target_meta_size)),
            small_file_limit=limit,
        )
        index = _BaseIndex(base, bulk_members(base_layout, limit))
        fd, body_name = tempfile.mkstemp(prefix=".krill-delta-", suffix=".tmp", dir=out.parent)
        body_path = Path(body_name)
        try:
            with os.fdopen(fd, "wb") as body:
                _write_ops(
                    body,
                    base,
                    target,
                    target_layout,
                    index,
                    prefix,
                    meta,
                    options,
                    stats,
                    recipe_future,
                )
            recipe = recipe_future.result()
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


def _assemble(out: Path, header: bytes, body_path: Path) -> int:
    """header + ops + OP_END + sha256(everything before), written beside ``out`` then renamed."""
    hasher = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(prefix=".krill-delta-", suffix=".tmp", dir=out.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as dst, open(body_path, "rb") as body:
            for chunk in _chain(header, body, bytes([fmt.OP_END])):
                hasher.update(chunk)
                dst.write(chunk)
            dst.write(hasher.digest())
            dst.flush()
            os.fsync(dst.fileno())
        tmp.chmod(0o644)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out.stat().st_size


def _chain(head: bytes, body: BinaryIO, tail: bytes) -> Iterator[bytes]:
    yield head
    while chunk := body.read(1 << 20):
        yield chunk
    yield tail


def _write_ops(
    body: BinaryIO,
    base: BinaryIO,
    target: BinaryIO,
    layout: Layout,
    index: _BaseIndex,
    prefix: bytes,
    meta: fmt.MetaParams,
    options: EncodeOptions,
    stats: _Stats,
    recipe_future: Future[Recipe],
) -> None:
    meta_coder = _MetaCoder(prefix, meta, options.meta_level)
    pending: deque[Future[bytes]] = deque()
    max_pending = options.workers * 2
    with ThreadPoolExecutor(options.workers, thread_name_prefix="krill-delta-enc") as pool:

        def emit(op: bytes | Future[bytes]) -> None:
            if isinstance(op, bytes):
                if not pending:
                    body.write(op)
                    return
                done: Future[bytes] = Future()
                done.set_result(op)
                op = done
            pending.append(op)
            while pending and (len(pending) > max_pending or pending[0].done()):
                body.write(pending.popleft().result())

        for item in _segments(target, layout, meta.small_file_limit):
            if recipe_future.done():
                recipe_future.result()  # an unreproducible target stops the work here
            if isinstance(item, _Range):  # meta bytes
                for piece in _split(item, META_OP_BYTES):
                    emit(meta_coder.encode(_pread(target, piece)))
                    stats.add("meta_bytes", piece.size)
                continue
            for op in _content_ops(item, base, target, index, options, stats, pool):
                emit(op)
        emit(meta_coder.finish())
        while pending:
            body.write(pending.popleft().result())


def _segments(target: BinaryIO, layout: Layout, limit: int) -> Iterator[_Range | Member]:
    """The target in order: meta ranges and bulk members, covering every byte once."""
    pos = 0
    for member in bulk_members(layout, limit):
        if member.offset > pos:
            yield _Range(pos, member.offset - pos)
        yield member
        pos = member.offset + member.size
    if layout.total_size > pos:
        yield _Range(pos, layout.total_size - pos)


def _split(rng: _Range, piece: int) -> Iterator[_Range]:
    for off in range(0, rng.size, piece):
        yield _Range(rng.offset + off, min(piece, rng.size - off))


def _content_ops(
    member: Member,
    base: BinaryIO,
    target: BinaryIO,
    index: _BaseIndex,
    options: EncodeOptions,
    stats: _Stats,
    pool: ThreadPoolExecutor,
) -> Iterator[bytes | Future[bytes]]:
    whole = _Range(member.offset, member.size)
    same = index.by_hash.get(_hash_range(target, whole))
    if same is not None:
        stats.add("copy_files")
        yield fmt.encode_copy(same.offset, same.size)
        return
    partner = index.partner(member.name, member.size)
    stats.add("coded_files")
    for piece in _split(whole, options.piece_bytes):
        base_piece = _partner_piece(partner, piece.offset - whole.offset, piece.size, options)
        for job in _segment_jobs(_Job(piece, base_piece), base, target, options, stats):
            yield pool.submit(
                _encode_piece,
                job,
                _pread(target, job.target),
                _pread(base, job.base) if job.base else b"",
                options,
                stats,
            )


def _segment_jobs(
    job: _Job, base: BinaryIO, target: BinaryIO, options: EncodeOptions, stats: _Stats
) -> list[_Job]:
    """A large binary's job as segments, each with the proportional window of its partner.

    Relinked binaries keep their layout (sections in the same order, code
    shifted a little), so target bytes at 40% of the file match base bytes
    near 40% of the partner; a margin of 1/8 segment on each side covers the
    shift. HDiffPatch releases the GIL, so segments diff in parallel threads:
    measured on 4.7-25 MB libraries, 2-7 segments cost 0.1-0.5% size and
    halve the time on 2 cores. Text and data files are not split (their
    matches can be anywhere in the partner).
    """
    seg = options.diff_segment_bytes
    rng, partner = job.target, job.base
    if (
        partner is None
        or options.diff_engine != "hdiff"
        or seg <= 0
        or rng.size <= seg
        or not _diff_allowed(rng.size, partner.size, options)
        or not (_looks_binary(target, rng) and _looks_binary(base, partner))
    ):
        return [job]
    count = min(options.workers, -(-rng.size // seg))
    step = -(-rng.size // count)
    margin = max(64 << 10, step // 8)
    jobs = []
    for start in range(0, rng.size, step):
        end = min(rng.size, start + step)
        lo = max(0, start * partner.size // rng.size - margin)
        hi = min(partner.size, end * partner.size // rng.size + margin)
        window = _Range(partner.offset + lo, hi - lo)
        jobs.append(_Job(_Range(rng.offset + start, end - start), window))
    stats.add("diff_segments", len(jobs))
    return jobs


def _looks_binary(f: BinaryIO, rng: _Range) -> bool:
    """A NUL byte in the first 8 KiB: executables, libraries, archives, not text."""
    return b"\0" in _pread(f, _Range(rng.offset, min(rng.size, 8192)))


def _partner_piece(
    partner: _Range | None, offset: int, size: int, options: EncodeOptions
) -> _Range | None:
    """The base bytes at the same position as a target piece (whole partner if it fits)."""
    if partner is None or partner.size < 64:
        return None
    if partner.size <= options.piece_bytes:
        return partner
    start = min(offset, partner.size - 64)
    return _Range(partner.offset + start, min(options.piece_bytes, partner.size - start))


def _encode_piece(
    job: _Job, data: bytes, base: bytes, options: EncodeOptions, stats: _Stats
) -> bytes:
    """The smallest op that rebuilds ``data`` (runs in a worker thread).

    A fast zstd probe first; bsdiff where the probe left a lot (changed
    binaries: on relinked code bsdiff is both smaller and faster than zstd's
    top levels); zstd's top level last, and only where it can still win.
    """
    top_level = options.content_level if len(data) <= options.top_level_max_bytes else 0
    if job.base is None:
        stats.add("zstd_literal")
        level = top_level or options.probe_level
        return fmt.encode_zlit(len(data), _zstd_literal(data, level))
    window = window_log_for(len(base) + len(data))

    def prefixed(level: int) -> bytes:
        comp = _zstd_prefixed(data, base, window, level)
        return fmt.encode_zprefix(job.base.offset, job.base.size, len(data), comp)

    gate = best = prefixed(min(options.gate_level, options.content_level))
    kind = "zstd_prefix"
    if _worth_bsdiff(len(gate), len(data), len(base), options):
        candidate, engine = _binary_diff_op(job, base, data, options)
        if candidate is not None and len(candidate) < len(best):
            best, kind = candidate, engine
    # A diff that beat the gate by over 25% is rarely beaten by zstd's higher levels (they
    # save ~20-25% over level 3 on binaries): only then is their time skipped.
    if len(best) > 0.75 * len(gate):
        level = top_level or options.probe_level
        if level > options.gate_level:
            candidate = prefixed(min(level, options.content_level))
            if len(candidate) < len(best):
                best, kind = candidate, "zstd_prefix"
    stats.add(kind)
    return best


def _binary_diff_op(
    job: _Job, base: bytes, data: bytes, options: EncodeOptions
) -> tuple[bytes | None, str]:
    """The op of the configured binary-diff engine, or None where it cannot be used."""
    assert job.base is not None
    level = min(options.content_level, 19)
    if options.diff_engine == "hdiff":
        raw = hdiff.diff(base, data)
        if len(raw) > fmt.max_hdiff_raw(len(data)):
            return None, "hdiff"
        comp = _zstd_literal(raw, level)
        return fmt.encode_hdiff(job.base.offset, job.base.size, len(data), len(raw), comp), "hdiff"
    blocks = _bsdiff_blocks(base, data, level)
    if blocks is None:
        return None, "bsdiff"
    return fmt.encode_bsdiff(job.base.offset, job.base.size, len(data), blocks), "bsdiff"


def _worth_bsdiff(coded: int, size: int, base_size: int, options: EncodeOptions) -> bool:
    """Binary diffs cost time and memory (bsdiff ~16x the base): only where zstd left a lot."""
    return _diff_allowed(size, base_size, options) and coded > max(4096, size // 50)


def _diff_allowed(size: int, base_size: int, options: EncodeOptions) -> bool:
    return size <= options.bsdiff_max_bytes and base_size <= options.bsdiff_max_bytes


def _zstd_literal(data: bytes, level: int) -> bytes:
    options = {
        zstd.CompressionParameter.compression_level: level,
        zstd.CompressionParameter.window_log: window_log_for(len(data)),
    }
    return zstd.compress(data, options=options)


def _zstd_prefixed(data: bytes, base: bytes, window: int, level: int) -> bytes:
    params = {
        zstd.CompressionParameter.compression_level: level,
        zstd.CompressionParameter.window_log: window,
        zstd.CompressionParameter.enable_long_distance_matching: 1,
    }
    prefix = zstd.ZstdDict(base, is_raw=True).as_prefix
    return zstd.compress(data, options=params, zstd_dict=prefix)


def _bsdiff_blocks(base: bytes, data: bytes, level: int) -> tuple[bytes, bytes, bytes] | None:
    """bsdiff4's control/diff/extra blocks, zstd-compressed; None if the control is oversized."""
    control, diff, extra = bsdiff4.core.diff(base, data)
    if len(control) > max(1 << 20, len(data)):
        return None
    return tuple(_zstd_literal(block, level) for block in (control, diff, extra))  # type: ignore[return-value]


class _MetaCoder:
    """One zstd frame over the meta stream, flushed per op, prefixed by the base's meta."""

    def __init__(self, prefix: bytes, meta: fmt.MetaParams, level: int) -> None:
        params = {
            zstd.CompressionParameter.compression_level: level,
            zstd.CompressionParameter.window_log: meta.window_log,
            zstd.CompressionParameter.enable_long_distance_matching: 1,
        }
        zstd_dict = zstd.ZstdDict(prefix, is_raw=True).as_prefix if len(prefix) >= 8 else None
        self._c = zstd.ZstdCompressor(options=params, zstd_dict=zstd_dict)

    def encode(self, data: bytes) -> bytes:
        return fmt.encode_meta(len(data), self._c.compress(data, mode=self._c.FLUSH_BLOCK))

    def finish(self) -> bytes:
        return fmt.encode_meta(0, self._c.flush(mode=self._c.FLUSH_FRAME))
