"""Rebuild a target layer blob from a base layer blob and a delta, verified.

The output is streamed: ops are decoded (content ops in worker threads:
zstd and bsdiff4 release the GIL), written in order into the recipe's
compressor, and hashed twice (tar = diff_id, blob = digest). Memory is
bounded by the largest piece an op may rebuild plus its base range and the
in-flight budget, never by the layer. The result is written to a temp file
beside OUT and renamed only when both digests match the delta's header.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import bsdiff4.core

from krill.delta import format as fmt
from krill.delta import hdiff
from krill.delta.format import DeltaFormatError
from krill.delta.layerfiles import TarFile, materialize_tar, window_log_for
from krill.delta.recipes import Recipe, RecipeError, blob_kind
from krill.delta.tarscan import scan_meta_prefix
from krill.delta.zstdlib import zstd
from krill.digests import Digest, sha256_file

log = logging.getLogger(__name__)

IN_FLIGHT_BYTES = 32 << 20
COPY_CHUNK = 1 << 20
# Content ops rebuilding more than this are decoded in the writer, streaming, not in a worker:
# memory then stays near base range + window instead of base + window + output + copies.
STREAM_OP_BYTES = 4 << 20


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
    workers = workers or min(4, os.cpu_count() or 1)
    if blob_kind(base_blob) == "tar":
        return _apply_on_plain_base(base_blob, delta, header, recipe, out, workers)
    base_tar = materialize_tar(base_blob, out.parent)
    try:
        _check_base(base_tar.diff_id, base_tar.size, header)
        return _rebuild(base_tar, delta, header, recipe, out, workers, lambda: None)
    finally:
        base_tar.discard()


def _apply_on_plain_base(
    base_blob: Path, delta: Path, header: fmt.DeltaHeader, recipe: Recipe, out: Path, workers: int
) -> ApplyResult:
    """An uncompressed base is hashed in a thread while the delta is applied.

    Nothing is published before the hash is checked, so overlapping the two
    is safe; it saves one full read of the base from the critical path.
    """
    size = base_blob.stat().st_size
    _check_base(header.base.diff_id, size, header)
    base_tar = TarFile(base_blob, header.base.diff_id, size, temporary=False)
    with ThreadPoolExecutor(1, thread_name_prefix="krill-delta-hash") as hasher:
        digest = hasher.submit(sha256_file, str(base_blob))
        return _rebuild(
            base_tar,
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

    Output on disk is bounded by ``target.size`` (see _Sink); this bounds the
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


def _verified_header(delta: Path) -> fmt.DeltaHeader:
    """Check the trailer (sha256 of the rest) first, so truncation fails before any work."""
    size = delta.stat().st_size
    if size < 32:
        raise DeltaFormatError("delta truncated (shorter than its trailer)")
    hasher = hashlib.sha256()
    with open(delta, "rb") as f:
        left = size - 32
        while left:
            chunk = f.read(min(left, 1 << 20))
            if not chunk:
                raise DeltaFormatError("delta truncated")
            hasher.update(chunk)
            left -= len(chunk)
        if f.read(32) != hasher.digest():
            raise DeltaFormatError("delta is truncated or corrupt (trailer checksum mismatch)")
        f.seek(0)
        return fmt.read_header(f)


def _rebuild(
    base_tar: TarFile,
    delta: Path,
    header: fmt.DeltaHeader,
    recipe: Recipe,
    out: Path,
    workers: int,
    check_base: Callable[[], None],
) -> ApplyResult:
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".krill-tmp", dir=out.parent)
    tmp = Path(tmp_name)
    try:
        with open(base_tar.path, "rb") as base, open(delta, "rb") as df, os.fdopen(fd, "wb") as dst:
            meta = _meta_decoder(base, base_tar.size, header.meta)
            fmt.read_header(df)
            compressor = recipe.compressor(header.target.tar_size)
            sink = _Sink(
                dst, compressor, identity=recipe.kind == "identity", max_size=header.target.size
            )
            reader = fmt.OpReader(
                df,
                base_size=base_tar.size,
                target_size=header.target.tar_size,
                delta_size=delta.stat().st_size,
            )
            _run_ops(reader, base, meta, sink, workers)
            if reader.remaining_out:
                raise DeltaFormatError("delta ended before rebuilding the whole target tar")
            reader.read_trailer()
            sink.finish()
            check_base()
            _check(sink, header)
            dst.flush()
            os.fsync(dst.fileno())
        tmp.chmod(0o644)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    log.info("delta.applied out=%s digest=%s recipe=%s", out.name, sink.digest(), recipe.describe())
    return ApplyResult(
        out, sink.digest(), sink.diff_id(), sink.size, sink.tar_size, recipe.describe()
    )


def _check(sink: _Sink, header: fmt.DeltaHeader) -> None:
    if sink.diff_id() != header.target.diff_id or sink.tar_size != header.target.tar_size:
        raise DeltaFormatError(
            f"rebuilt tar has digest {sink.diff_id()}, expected {header.target.diff_id}"
        )
    if sink.digest() != header.target.digest or sink.size != header.target.size:
        raise RecipeError(
            f"recompressed layer has digest {sink.digest()}, expected {header.target.digest} "
            f"(the recipe did not reproduce the layer on this node)"
        )


class _Sink:
    """Tar bytes in; hashes the tar, recompresses, hashes and writes the blob."""

    def __init__(self, dst: BinaryIO, compressor: object, identity: bool, max_size: int) -> None:
        self._dst = dst
        self._max_size = max_size
        self._compressor = compressor
        self._tar_hash = hashlib.sha256()
        # An uncompressed layer's blob is its tar: one hash serves as both digests.
        self._blob_hash = self._tar_hash if identity else hashlib.sha256()
        self._identity = identity
        self.tar_size = 0
        self.size = 0

    def write(self, data: bytes) -> None:
        self._tar_hash.update(data)
        self.tar_size += len(data)
        self._emit(self._compressor.feed(data))  # type: ignore[attr-defined]

    def finish(self) -> None:
        self._emit(self._compressor.finish())  # type: ignore[attr-defined]

    def _emit(self, blob: bytes) -> None:
        """Write blob bytes, never more than the header declares (a crafted delta fills no disk)."""
        if blob:
            if self.size + len(blob) > self._max_size:
                raise DeltaFormatError(
                    f"rebuilt layer grows past the {self._max_size} bytes the delta's header "
                    f"declares (target.size): the delta is corrupt or crafted"
                )
            if not self._identity:
                self._blob_hash.update(blob)
            self.size += len(blob)
            self._dst.write(blob)

    def diff_id(self) -> str:
        return str(Digest.from_hasher(self._tar_hash))

    def digest(self) -> str:
        return str(Digest.from_hasher(self._blob_hash))


def _meta_decoder(base: BinaryIO, base_size: int, meta: fmt.MetaParams) -> zstd.ZstdDecompressor:
    prefix = scan_meta_prefix(base, base_size, meta.small_file_limit, meta.prefix_len)
    if len(prefix) != meta.prefix_len or hashlib.sha256(prefix).hexdigest() != meta.prefix_sha256:
        raise DeltaFormatError(
            "the base's header stream differs from the one the delta was made against "
            "(different base, or a delta from an incompatible Krill version)"
        )
    options = {zstd.DecompressionParameter.window_log_max: meta.window_log}
    zstd_dict = zstd.ZstdDict(prefix, is_raw=True).as_prefix if len(prefix) >= 8 else None
    return zstd.ZstdDecompressor(zstd_dict=zstd_dict, options=options)


@dataclass(frozen=True, slots=True)
class _Copy:
    offset: int
    size: int


@dataclass(frozen=True, slots=True)
class _Stream:
    op: fmt.Op


_Item = bytes | Future[bytes] | _Copy | _Stream


def _run_ops(
    reader: fmt.OpReader, base: BinaryIO, meta: zstd.ZstdDecompressor, sink: _Sink, workers: int
) -> None:
    """Decode ops in order; content ops run in threads, output is written in op order."""
    queue: deque[tuple[_Item, int]] = deque()
    in_flight = 0

    def drain_one() -> None:
        nonlocal in_flight
        item, size = queue.popleft()
        in_flight -= size
        if isinstance(item, _Copy):
            _copy_base(base, item.offset, item.size, sink.write)
        elif isinstance(item, _Stream):
            _stream_content(item.op, base, sink.write)
        elif isinstance(item, Future):
            sink.write(item.result())
        else:
            sink.write(item)

    def start(op: fmt.Op, pool: ThreadPoolExecutor) -> _Item:
        if op.kind == fmt.OP_META:
            return _decode_meta(meta, op)
        if op.kind == fmt.OP_COPY:
            return _Copy(op.base_off, op.out_len)
        if op.out_len > STREAM_OP_BYTES:
            return _Stream(op)  # decoded alone, by the writer: bounded memory
        return pool.submit(_decode_content, op, _pread(base, op.base_off, op.base_len))

    with ThreadPoolExecutor(workers, thread_name_prefix="krill-delta-apply") as pool:
        try:
            while (op := reader.next()).kind != fmt.OP_END:
                cost = _queued_bytes(op)
                # Make room *before* decoding or reading the base range, so what is held stays
                # under the budget plus one op, whatever the ops claim.
                while queue and (in_flight + cost > IN_FLIGHT_BYTES or len(queue) > 4 * workers):
                    drain_one()
                queue.append((start(op, pool), cost))
                in_flight += cost
            while queue:
                drain_one()
        finally:
            for item, _ in queue:
                if isinstance(item, Future):
                    item.cancel()


def _queued_bytes(op: fmt.Op) -> int:
    """Memory an op holds while it waits in the queue (counted against IN_FLIGHT_BYTES).

    META: its decoded bytes. Content ops (in a worker, or streamed later by the
    writer): base range + output, plus the payload read from the delta. COPY
    holds nothing; it is read from the base in 1 MiB chunks when written.
    """
    if op.kind == fmt.OP_COPY:
        return 0
    payload = sum(len(block) for block in op.payload)
    if op.kind == fmt.OP_META:
        return op.out_len + payload
    return op.out_len + op.base_len + payload


def _pread(f: BinaryIO, offset: int, size: int) -> bytes:
    f.seek(offset)
    data = f.read(size)
    if len(data) != size:
        raise DeltaFormatError("base tar shorter than the delta expects")
    return data


def _copy_base(base: BinaryIO, offset: int, size: int, write: Callable[[bytes], None]) -> None:
    base.seek(offset)
    left = size
    while left:
        chunk = base.read(min(left, COPY_CHUNK))
        if not chunk:
            raise DeltaFormatError("base tar shorter than the delta expects")
        write(chunk)
        left -= len(chunk)


def _decode_meta(decoder: zstd.ZstdDecompressor, op: fmt.Op) -> bytes:
    try:
        data = decoder.decompress(op.payload[0], max_length=op.out_len)
    except (zstd.ZstdError, EOFError) as exc:
        raise DeltaFormatError(f"corrupt meta stream: {exc}") from exc
    if len(data) != op.out_len:
        raise DeltaFormatError("meta stream piece has the wrong length")
    return data


def _decode_content(op: fmt.Op, base: bytes) -> bytes:
    """Rebuild one content piece (worker thread); exactly ``op.out_len`` bytes or an error."""
    try:
        if op.kind == fmt.OP_ZLIT:
            data = _unzstd(op.payload[0], op.out_len, window_log_for(op.out_len))
        elif op.kind == fmt.OP_ZPREFIX:
            window = window_log_for(op.base_len + op.out_len)
            data = _unzstd(op.payload[0], op.out_len, window, base)
        elif op.kind == fmt.OP_BSDIFF:
            data = _unbsdiff(op, base)
        elif op.kind == fmt.OP_HDIFF:
            data = _unhdiff(op, base)
        else:
            raise DeltaFormatError(f"op {op.kind} carries no content")
    except (zstd.ZstdError, EOFError, ValueError, MemoryError) as exc:
        if isinstance(exc, DeltaFormatError):
            raise
        raise DeltaFormatError(f"corrupt content op: {exc}") from exc
    if len(data) != op.out_len:
        raise DeltaFormatError("content op rebuilt the wrong number of bytes")
    return data


def _stream_content(op: fmt.Op, base: BinaryIO, write: Callable[[bytes], None]) -> None:
    """Decode a large op straight into the output (zstd a chunk at a time)."""
    if op.kind in (fmt.OP_BSDIFF, fmt.OP_HDIFF):  # whole buffers: about 3x the file, alone
        data = _decode_content(op, _pread(base, op.base_off, op.base_len))
        for start in range(0, len(data), COPY_CHUNK):
            write(data[start : start + COPY_CHUNK])
        return
    window = window_log_for(op.base_len + op.out_len if op.kind == fmt.OP_ZPREFIX else op.out_len)
    zstd_dict = None
    if op.kind == fmt.OP_ZPREFIX:
        if op.base_len < 8:
            raise DeltaFormatError("prefix op with a base range under 8 bytes")
        zstd_dict = zstd.ZstdDict(_pread(base, op.base_off, op.base_len), is_raw=True).as_prefix
    decoder = zstd.ZstdDecompressor(
        zstd_dict=zstd_dict, options={zstd.DecompressionParameter.window_log_max: window}
    )
    left = op.out_len
    data = op.payload[0]
    try:
        while left:
            chunk = decoder.decompress(data, max_length=min(left, COPY_CHUNK))
            data = b""
            if not chunk:
                raise DeltaFormatError("content frame ends before its op's length")
            left -= len(chunk)
            write(chunk)
        _expect_frame_end(decoder)
        if not decoder.eof or decoder.unused_data:
            raise DeltaFormatError("content frame is longer than its op declares, or incomplete")
    except (zstd.ZstdError, EOFError) as exc:
        raise DeltaFormatError(f"corrupt content op: {exc}") from exc


def _expect_frame_end(decoder: zstd.ZstdDecompressor) -> None:
    """Let the decoder read the frame's end (it stops early when output hit max_length)."""
    if not decoder.eof and decoder.decompress(b"", max_length=1):
        raise DeltaFormatError("content frame is longer than its op declares")


def _unzstd(comp: bytes, out_len: int, window_log: int, prefix: bytes | None = None) -> bytes:
    """One complete zstd frame, at most ``out_len`` bytes, window bounded by the op's sizes."""
    if prefix is not None and len(prefix) < 8:
        raise DeltaFormatError("prefix op with a base range under 8 bytes")
    zstd_dict = zstd.ZstdDict(prefix, is_raw=True).as_prefix if prefix is not None else None
    decoder = zstd.ZstdDecompressor(
        zstd_dict=zstd_dict, options={zstd.DecompressionParameter.window_log_max: window_log}
    )
    chunks = []
    left = out_len
    while left and not decoder.eof:
        chunk = decoder.decompress(comp, max_length=min(left, STREAM_OP_BYTES))
        comp = b""
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    _expect_frame_end(decoder)
    if not decoder.eof or decoder.unused_data:
        raise DeltaFormatError("content frame is longer than its op declares, or incomplete")
    del decoder  # frees the window before the pieces are joined
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _unbsdiff(op: fmt.Op, base: bytes) -> bytes:
    control_z, diff_z, extra_z = op.payload
    control_max = max(1 << 20, op.out_len)
    control = _unzstd(control_z, control_max, window_log_for(control_max))
    diff = _unzstd(diff_z, op.out_len, window_log_for(op.out_len))
    extra = _unzstd(extra_z, op.out_len, window_log_for(op.out_len))
    if len(control) % 24:
        raise DeltaFormatError("bsdiff control block is not a whole number of entries")
    return bsdiff4.core.patch(base, op.out_len, control, diff, extra)


def _unhdiff(op: fmt.Op, base: bytes) -> bytes:
    raw = _unzstd(op.payload[0], op.raw_len, window_log_for(op.raw_len))
    if len(raw) != op.raw_len:
        raise DeltaFormatError("hdiff diff is shorter than its op declares")
    try:
        return hdiff.patch(base, raw, op.out_len)
    except hdiff.HDiffError as exc:
        raise DeltaFormatError(str(exc)) from exc
