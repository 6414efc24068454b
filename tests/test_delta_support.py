"""Helpers for the delta codec tests: tar trees, layer blobs by recipe, round trips."""

from __future__ import annotations

import gzip
import io
import random
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from krill.delta import apply_delta, create_delta
from krill.delta.encode import EncodeOptions, EncodeResult
from krill.delta.zstdlib import zstd


@dataclass
class Entry:
    """One tar member as the generator models it."""

    kind: str  # "file", "dir", "symlink", "hardlink"
    data: bytes = b""
    mode: int = 0o644
    target: str = ""
    xattrs: dict[str, str] = field(default_factory=dict)
    mtime: int = 1_700_000_000


def build_tar(entries: dict[str, Entry], tar_format: int = tarfile.PAX_FORMAT) -> bytes:
    """A tar holding ``entries`` in name order; hard links point at earlier files."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tar_format) as tar:
        written: set[str] = set()
        for name in sorted(entries):
            entry = entries[name]
            info = tarfile.TarInfo(name)
            info.mode = entry.mode
            info.mtime = entry.mtime
            if entry.xattrs and tar_format == tarfile.PAX_FORMAT:
                info.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in entry.xattrs.items()}
            if entry.kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif entry.kind == "symlink":
                info.type = tarfile.SYMTYPE
                info.linkname = entry.target
                tar.addfile(info)
            elif entry.kind == "hardlink" and entry.target in written:
                info.type = tarfile.LNKTYPE
                info.linkname = entry.target
                tar.addfile(info)
            else:
                info.size = len(entry.data)
                tar.addfile(info, io.BytesIO(entry.data))
            written.add(name)
    return buf.getvalue()


def compress(tar: bytes, recipe: str) -> bytes:
    """The tar as a registry would store it under ``recipe``."""
    if recipe == "identity":
        return tar
    if recipe.startswith("gzip"):
        level = int(recipe.removeprefix("gzip") or 6)
        deflate = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS, 8, 0)
        header = gzip.compress(b"", compresslevel=level, mtime=0)[:10]
        body = deflate.compress(tar) + deflate.flush()
        return (
            header + body + zlib.crc32(tar).to_bytes(4, "little") + len(tar).to_bytes(4, "little")
        )
    if recipe.startswith("zstd"):
        level = int(recipe.removeprefix("zstd") or 3)
        c = zstd.ZstdCompressor(
            options={
                zstd.CompressionParameter.compression_level: level,
                zstd.CompressionParameter.checksum_flag: 1,
            }
        )
        c.set_pledged_input_size(len(tar))
        return (
            b"".join(c.compress(tar[i : i + 65536]) for i in range(0, len(tar), 65536)) + c.flush()
        )
    raise ValueError(recipe)


def round_trip(
    tmp: Path, base: bytes, target: bytes, options: EncodeOptions | None = None
) -> tuple[EncodeResult, bytes]:
    """create + apply through files; returns the encode result and the rebuilt bytes."""
    tmp.mkdir(parents=True, exist_ok=True)
    base_path, target_path = tmp / "base.blob", tmp / "target.blob"
    base_path.write_bytes(base)
    target_path.write_bytes(target)
    delta = tmp / "delta.krd"
    result = create_delta(base_path, target_path, delta, options)
    out_dir = tmp / "out"
    out_dir.mkdir(exist_ok=True)
    applied = apply_delta(base_path, delta, out_dir / "layer")
    assert sorted(p.name for p in out_dir.iterdir()) == ["layer"]
    return result, applied.path.read_bytes()


def mutated_bytes(rng: random.Random, data: bytes, edits: int) -> bytes:
    """``data`` with a few spliced insertions, deletions and overwrites."""
    out = bytearray(data)
    for _ in range(edits):
        pos = rng.randrange(len(out) + 1)
        action = rng.randrange(3)
        if action == 0:
            out[pos:pos] = rng.randbytes(rng.randint(1, 64))
        elif action == 1:
            del out[pos : pos + rng.randint(1, 64)]
        else:
            out[pos : pos + 8] = rng.randbytes(8)
    return bytes(out)
