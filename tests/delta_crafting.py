"""Making hostile deltas for the codec's tests: a valid pair to start from, and surgery.

Each crafted delta is re-signed (its sha256 trailer replaced) so that only
the codec's own checks (header, op limits, decoders, final digests) can
catch the change; ``apply_fails`` then checks that nothing was left behind.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
import struct
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from krill.delta import DeltaFormatError, apply_delta, create_delta
from krill.delta import format as fmt
from krill.delta.zstdlib import zstd
from tests.test_delta_support import Entry, build_tar, compress, mutated_bytes

__all__ = [
    "Pair",
    "apply_fails",
    "base_tar_head",
    "header_bytes",
    "join",
    "make_pair",
    "resign",
    "roomy",
    "zstd_frame",
]

Header = dict[str, Any]  # a delta header as JSON, to be edited


class Pair(NamedTuple):
    """A base blob, a valid delta to a changed target, and the target's bytes."""

    base: Path
    delta: Path
    target: bytes

    def parts(self) -> tuple[Header, bytes]:
        """The delta's header (JSON) and its ops, without the trailer."""
        data = self.delta.read_bytes()
        _, _, length = struct.unpack(">8sHI", data[:14])
        return json.loads(data[14 : 14 + length]), data[14 + length : -32]


def make_pair(root: Path) -> Pair:
    """Four 9 KB files, one changed, one added, one small config, all gzip-6."""
    rng = random.Random(11)
    files = {f"lib/f{i}": Entry("file", rng.randbytes(9000)) for i in range(4)}
    files["etc/conf"] = Entry("file", b"small")
    target_files = {n: Entry("file", e.data) for n, e in files.items()}
    target_files["lib/f0"].data = mutated_bytes(rng, files["lib/f0"].data, 4)
    target_files["lib/new"] = Entry("file", rng.randbytes(7000))
    base, target = root / "base.tgz", root / "target.tgz"
    base.write_bytes(compress(build_tar(files), "gzip6"))
    target_bytes = compress(build_tar(target_files), "gzip6")
    target.write_bytes(target_bytes)
    delta = root / "d.krd"
    create_delta(base, target, delta)
    return Pair(base, delta, target_bytes)


def resign(data: bytes) -> bytes:
    """Replace the trailer so only the codec's own checks can catch a crafted change."""
    body = data[:-32]
    return body + hashlib.sha256(body).digest()


def header_bytes(text: str, version: int = fmt.VERSION) -> bytes:
    """Magic, version and length before a header given as text."""
    body = text.encode()
    return struct.pack(">8sHI", fmt.MAGIC, version, len(body)) + body


def join(header: Header, ops: bytes, version: int = fmt.VERSION) -> bytes:
    """A signed delta of ``header`` and ``ops``."""
    return resign(header_bytes(json.dumps(header), version) + ops + bytes(32))


def roomy(header: Header, tar_size: int = 2**40) -> Header:
    """Declare a huge target (within gzip's ratio), so only per-op limits can stop an op."""
    header["target"]["tar_size"] = tar_size
    header["target"]["size"] = tar_size // 1000
    return header


def apply_fails(
    tmp: Path, base: Path, delta_bytes: bytes, error: type[Exception] = DeltaFormatError
) -> str:
    """Apply a crafted delta: it must raise ``error`` and leave nothing; returns the message."""
    tmp.mkdir(parents=True, exist_ok=True)
    delta = tmp / "crafted.krd"
    delta.write_bytes(delta_bytes)
    out_dir = tmp / "out"
    out_dir.mkdir()
    with pytest.raises(error) as info:
        apply_delta(base, delta, out_dir / "layer")
    assert list(out_dir.iterdir()) == [], "nothing may be left behind"
    return str(info.value)


def base_tar_head(base: Path, size: int) -> bytes:
    """The first ``size`` bytes of the (gzip) base's tar."""
    return gzip.decompress(base.read_bytes())[:size]


def zstd_frame(data: bytes) -> bytes:
    return zstd.compress(data)
