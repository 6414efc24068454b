"""The Krill delta container: a versioned, self-describing file.

Layout::

    magic "KRLDELTA" | u16 version | u32 header length | header (JSON, UTF-8)
    ops ... | OP_END | sha256 of every byte before it (32 bytes)

The header names the base and target layers (compressed digest and size,
uncompressed digest and size), the recipe that recompresses the rebuilt tar,
and the parameters of the meta stream. Ops rebuild the target tar in order.
Every length read from a delta is checked against hard limits and against
the sizes the header declares *before* anything is allocated, so a crafted
or truncated delta fails with DeltaFormatError, never with a huge allocation.
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass, field
from typing import Any, BinaryIO, NoReturn

from krill.digests import Digest, DigestError

MAGIC = b"KRLDELTA"
# Version 2 added OP_HDIFF, version 3 OP_ELF, version 4 OP_ELF side data versions 2-5 (aarch64
# ADRP+ADD/LDR/STR pairs, .eh_frame, symbols, RELR: a version-3 reader would misapply
# them); older deltas are still read.
VERSION = 4
FORMAT_NAME = "krill-delta/4"
FORMAT_NAMES = {1: "krill-delta/1", 2: "krill-delta/2", 3: "krill-delta/3", 4: "krill-delta/4"}
MEDIA_TYPE = "application/vnd.krill.delta.v1"

MAX_HEADER_BYTES = 1 << 20
# The most content one op may rebuild in memory; the encoder splits bigger files.
MAX_PIECE_BYTES = 256 << 20
# The meta stream (headers, padding, small files) references at most this much of the base's.
MAX_META_PREFIX_BYTES = 32 << 20
MAX_META_WINDOW_LOG = 27
# A meta op carries at most this much output (the encoder flushes well below it).
MAX_META_OP_BYTES = 64 << 20
# Tars up to 1 PiB; a larger declared size is a crafted header.
MAX_TAR_BYTES = 1 << 50
# bsdiff/hdiff ops hold base range, diff and output in memory at once (about 3x, bsdiff up to
# 5x). The encoder emits ops of at most EncodeOptions.bsdiff_max_bytes (32 MiB) of file and
# base each (bigger files in segments); the applier allows that plus a margin, so a crafted
# op cannot cost 5 x 256 MiB.
MAX_DIFF_OP_BYTES = 40 << 20

OP_END = 0
OP_META = 1  # next piece of the meta stream (zstd, shares one frame and the base-meta prefix)
OP_COPY = 2  # bytes from the base tar, unchanged
OP_ZPREFIX = 3  # zstd frame decompressed with a base range as prefix
OP_ZLIT = 4  # zstd frame on its own
OP_BSDIFF = 5  # bsdiff control/diff/extra blocks (zstd) against a base range
OP_HDIFF = 6  # (v2) an uncompressed HDiffPatch diff (HDIFF13), one zstd frame, against a base range
OP_ELF = 7  # (v3) ELF side data + HDIFF13 diff of the normalized files, one zstd frame (elf.py)

_HEAD = struct.Struct(">8sHI")
_U32 = struct.Struct(">I")
_COPY = struct.Struct(">QQ")
_META = struct.Struct(">II")
_ZPREFIX = struct.Struct(">QIII")
_ZLIT = struct.Struct(">II")
_BSDIFF = struct.Struct(">QIIIII")  # base_off, base_len, out_len, ctrl, diff, extra lengths
_HDIFF = struct.Struct(">QIIII")  # base_off, base_len, out_len, raw diff length, comp length
_ELF = struct.Struct(">QIIIII")  # base_off, base_len, out_len, side length, raw diff length, comp
# The numbers each op carries after its kind byte (OP_END carries none): for tools and tests
# that take a delta apart.
OP_FIELDS = {
    OP_META: _META,
    OP_COPY: _COPY,
    OP_ZPREFIX: _ZPREFIX,
    OP_ZLIT: _ZLIT,
    OP_BSDIFF: _BSDIFF,
    OP_HDIFF: _HDIFF,
    OP_ELF: _ELF,
}


def max_hdiff_raw(out_len: int) -> int:
    """The largest uncompressed HDIFF13 diff an op of ``out_len`` bytes may carry."""
    return out_len + out_len // 4 + (1 << 20)


class DeltaFormatError(ValueError):
    """A delta that is malformed, truncated, or does not fit the files given with it."""


@dataclass(frozen=True, slots=True)
class LayerInfo:
    """One layer as a registry stores it (``digest``/``size``) and as a tar (``diff_id``)."""

    digest: str
    size: int
    diff_id: str
    tar_size: int

    @classmethod
    def from_json(cls, doc: Any, what: str) -> LayerInfo:
        if not isinstance(doc, dict):
            raise DeltaFormatError(f"delta header: {what} must be an object")
        try:
            info = cls(
                str(Digest.parse(doc["digest"])),
                _bounded_int(doc["size"], f"{what}.size"),
                str(Digest.parse(doc["diff_id"])),
                _bounded_int(doc["tar_size"], f"{what}.tar_size"),
            )
        except (KeyError, TypeError, DigestError) as exc:
            raise DeltaFormatError(f"delta header: bad {what}: {exc}") from exc
        return info


@dataclass(frozen=True, slots=True)
class MetaParams:
    """How the meta stream was compressed: which base prefix and which window."""

    prefix_len: int
    prefix_sha256: str
    window_log: int
    small_file_limit: int


@dataclass(frozen=True, slots=True)
class DeltaHeader:
    base: LayerInfo
    target: LayerInfo
    recipe: dict[str, Any]
    meta: MetaParams
    stats: dict[str, int] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        doc = {"format": FORMAT_NAME, **asdict(self)}
        body = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
        return _HEAD.pack(MAGIC, VERSION, len(body)) + body


def _bounded_int(value: Any, what: str, limit: int = MAX_TAR_BYTES) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= limit:
        raise DeltaFormatError(f"delta header: {what} must be an integer in 0..{limit}")
    return value


def read_header(f: BinaryIO) -> DeltaHeader:
    """Read and validate the header; leave ``f`` at the first op."""
    head = f.read(_HEAD.size)
    if len(head) != _HEAD.size or head[:8] != MAGIC:
        raise DeltaFormatError("not a Krill delta (bad magic)")
    _, version, length = _HEAD.unpack(head)
    if version not in FORMAT_NAMES:
        raise DeltaFormatError(
            f"delta format version {version} is not supported (this reads 1..{VERSION})"
        )
    if length > MAX_HEADER_BYTES:
        raise DeltaFormatError(f"delta header of {length} bytes exceeds {MAX_HEADER_BYTES}")
    body = f.read(length)
    if len(body) != length:
        raise DeltaFormatError("delta truncated inside its header")
    try:
        doc = json.loads(body, parse_constant=_refuse_json_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DeltaFormatError(f"delta header is not JSON: {exc}") from exc
    except RecursionError as exc:  # a megabyte of "[[[[": nesting no header of ours has
        raise DeltaFormatError("delta header is not JSON: nested too deeply") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAMES[version]:
        raise DeltaFormatError(f"delta header does not declare format {FORMAT_NAMES[version]!r}")
    return DeltaHeader(
        base=LayerInfo.from_json(doc.get("base"), "base"),
        target=LayerInfo.from_json(doc.get("target"), "target"),
        recipe=_recipe_doc(doc.get("recipe")),
        meta=_meta_params(doc.get("meta")),
        stats=_stats(doc.get("stats")),
    )


def _refuse_json_constant(name: str) -> NoReturn:
    """NaN and Infinity are not JSON; Python would accept them and fail later (int(inf))."""
    raise DeltaFormatError(f"delta header is not JSON: {name} is not a JSON number")


def _stats(doc: Any) -> dict[str, int]:
    """Informative counts: kept as the encoder wrote them, an empty dict if not an object."""
    return doc if isinstance(doc, dict) else {}


def _recipe_doc(doc: Any) -> dict[str, Any]:
    if not isinstance(doc, dict) or not isinstance(doc.get("kind"), str):
        raise DeltaFormatError("delta header: recipe must be an object with a 'kind'")
    return doc


def _meta_params(doc: Any) -> MetaParams:
    if not isinstance(doc, dict):
        raise DeltaFormatError("delta header: meta must be an object")
    sha = doc.get("prefix_sha256")
    if not isinstance(sha, str) or len(sha) != 64:
        raise DeltaFormatError("delta header: meta.prefix_sha256 must be 64 hex digits")
    return MetaParams(
        prefix_len=_bounded_int(doc.get("prefix_len"), "meta.prefix_len", MAX_META_PREFIX_BYTES),
        prefix_sha256=sha,
        window_log=max(
            10, _bounded_int(doc.get("window_log"), "meta.window_log", MAX_META_WINDOW_LOG)
        ),
        small_file_limit=_bounded_int(
            doc.get("small_file_limit"), "meta.small_file_limit", 1 << 24
        ),
    )


# --- ops -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Op:
    """One decoded op: ``kind``, base range, output length, payload blocks.

    ``raw_len`` is the decompressed size of an OP_HDIFF or OP_ELF payload (0 for other ops);
    ``side_len`` how much of an OP_ELF's is side data (mask and label table).
    """

    kind: int
    out_len: int
    base_off: int = 0
    base_len: int = 0
    payload: tuple[bytes, ...] = ()
    raw_len: int = 0
    side_len: int = 0


def encode_meta(raw_len: int, comp: bytes) -> bytes:
    return bytes([OP_META]) + _META.pack(raw_len, len(comp)) + comp


def encode_copy(base_off: int, length: int) -> bytes:
    return bytes([OP_COPY]) + _COPY.pack(base_off, length)


def encode_zprefix(base_off: int, base_len: int, out_len: int, comp: bytes) -> bytes:
    return bytes([OP_ZPREFIX]) + _ZPREFIX.pack(base_off, base_len, out_len, len(comp)) + comp


def encode_zlit(out_len: int, comp: bytes) -> bytes:
    return bytes([OP_ZLIT]) + _ZLIT.pack(out_len, len(comp)) + comp


def encode_bsdiff(
    base_off: int, base_len: int, out_len: int, blocks: tuple[bytes, bytes, bytes]
) -> bytes:
    lengths = (len(b) for b in blocks)
    return (
        bytes([OP_BSDIFF]) + _BSDIFF.pack(base_off, base_len, out_len, *lengths) + b"".join(blocks)
    )


def encode_hdiff(base_off: int, base_len: int, out_len: int, raw_len: int, comp: bytes) -> bytes:
    head = _HDIFF.pack(base_off, base_len, out_len, raw_len, len(comp))
    return bytes([OP_HDIFF]) + head + comp


def encode_elf(
    base_off: int, base_len: int, out_len: int, side_len: int, raw_len: int, comp: bytes
) -> bytes:
    head = _ELF.pack(base_off, base_len, out_len, side_len, raw_len, len(comp))
    return bytes([OP_ELF]) + head + comp


def max_elf_side(out_len: int) -> int:
    """The largest side data (mask + label table) an OP_ELF of ``out_len`` bytes may carry."""
    return out_len + (1 << 20)


class OpReader:
    """Reads ops, validating every length before reading or allocating.

    ``remaining_out`` is what the target tar still needs; ``base_size`` the base
    tar's size; ``remaining_in`` the delta bytes left before the trailer.
    """

    def __init__(self, f: BinaryIO, *, base_size: int, target_size: int, delta_size: int) -> None:
        self._f = f
        self._base_size = base_size
        self.remaining_out = target_size
        self._remaining_in = delta_size - f.tell() - 32

    def _read(self, n: int) -> bytes:
        if n > self._remaining_in:
            raise DeltaFormatError("delta truncated (an op runs past the end of the file)")
        data = self._f.read(n)
        if len(data) != n:
            raise DeltaFormatError("delta truncated")
        self._remaining_in -= n
        return data

    def _unpack(self, st: struct.Struct) -> tuple[int, ...]:
        return st.unpack(self._read(st.size))

    def _claim_out(self, n: int, limit: int) -> None:
        if n > limit:
            raise DeltaFormatError(f"op rebuilds {n} bytes, over the limit of {limit}")
        if n > self.remaining_out:
            raise DeltaFormatError("delta rebuilds more bytes than the target tar's declared size")
        self.remaining_out -= n

    def _check_base(self, off: int, length: int) -> None:
        if off + length > self._base_size:
            raise DeltaFormatError("op references bytes beyond the end of the base tar")

    def next(self) -> Op:
        kind = self._read(1)[0]
        if kind == OP_END:
            return Op(OP_END, 0)
        if kind == OP_META:
            raw_len, comp_len = self._unpack(_META)
            self._claim_out(raw_len, MAX_META_OP_BYTES)
            return Op(kind, raw_len, payload=(self._read(comp_len),))
        if kind == OP_COPY:
            off, length = self._unpack(_COPY)
            self._check_base(off, length)
            self._claim_out(length, MAX_TAR_BYTES)
            return Op(kind, length, off, length)
        if kind == OP_ZPREFIX:
            off, base_len, out_len, comp_len = self._unpack(_ZPREFIX)
            return self._with_base(kind, off, base_len, out_len, (comp_len,))
        if kind == OP_ZLIT:
            out_len, comp_len = self._unpack(_ZLIT)
            self._claim_out(out_len, MAX_PIECE_BYTES)
            return Op(kind, out_len, payload=(self._read(comp_len),))
        if kind == OP_BSDIFF:
            off, base_len, out_len, *lengths = self._unpack(_BSDIFF)
            return self._with_base(kind, off, base_len, out_len, tuple(lengths))
        if kind == OP_HDIFF:
            off, base_len, out_len, raw_len, comp_len = self._unpack(_HDIFF)
            if raw_len > max_hdiff_raw(out_len):
                raise DeltaFormatError(f"hdiff op: a {raw_len}-byte diff for {out_len} bytes")
            op = self._with_base(kind, off, base_len, out_len, (comp_len,))
            return Op(kind, out_len, off, base_len, op.payload, raw_len)
        if kind == OP_ELF:
            off, base_len, out_len, side_len, raw_len, comp_len = self._unpack(_ELF)
            if side_len > max_elf_side(out_len) or raw_len - side_len > max_hdiff_raw(out_len):
                raise DeltaFormatError(f"ELF op: {raw_len} payload bytes for {out_len} bytes")
            if side_len > raw_len:
                raise DeltaFormatError("ELF op: side data longer than its payload")
            op = self._with_base(kind, off, base_len, out_len, (comp_len,))
            return Op(kind, out_len, off, base_len, op.payload, raw_len, side_len)
        raise DeltaFormatError(f"unknown op {kind}")

    def _with_base(
        self, kind: int, off: int, base_len: int, out_len: int, lengths: tuple[int, ...]
    ) -> Op:
        if kind in (OP_BSDIFF, OP_HDIFF, OP_ELF) and max(base_len, out_len) > MAX_DIFF_OP_BYTES:
            name = {OP_BSDIFF: "bsdiff", OP_HDIFF: "hdiff", OP_ELF: "ELF"}[kind]
            raise DeltaFormatError(
                f"{name} op of {out_len} bytes against {base_len} base bytes: binary-diff ops "
                f"are limited to {MAX_DIFF_OP_BYTES} bytes (the encoder's ops cover up to 32 MiB); "
                f"the delta is crafted or from an encoder with a larger --bsdiff-max"
            )
        if base_len > MAX_PIECE_BYTES:
            raise DeltaFormatError(f"op uses {base_len} base bytes, over {MAX_PIECE_BYTES}")
        self._check_base(off, base_len)
        self._claim_out(out_len, MAX_PIECE_BYTES)
        payload = tuple(self._read(n) for n in lengths)
        return Op(kind, out_len, off, base_len, payload)

    def read_trailer(self) -> bytes:
        if self._remaining_in != 0:
            raise DeltaFormatError("delta has bytes after its last op")
        self._remaining_in = 32
        return self._read(32)
