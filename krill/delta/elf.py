"""ELF-aware binary diffs (OP_ELF): Courgette's idea for x86-64 and aarch64 ELF files.

When a library is rebuilt, code moves and every relative call, jump,
RIP-relative load, ADRP/BL and RELATIVE relocation pointing across the move
changes: a generic diff (bsdiff, HDiffPatch) pays for thousands of 4-byte
changes. ``krill._goflate.elf_*`` (krill/_native/elfnorm.c) replaces each
such field by a label index matched between base and target, so the
*normalized* files differ only where the code changed; the op carries the
target's label table (as shifts against the base's, which the node derives
from the base alone) and an HDiffPatch diff of the normalized files.
Measured on Debian's libssl3 3.0.20 -> 3.0.22 (amd64): libcrypto.so.3 67 KB
against bsdiff's 204 KB, libpython3.11 49 KB against 179 KB (docs/deltas.md).

Correctness does not rest on the parser: the encoder restores the target
from the normalized bytes exactly as a node will, and keeps the op only if
that gives back the target byte for byte. A file the parser misreads (or
that only looks like ELF) costs size, never bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

from krill.delta import format as fmt
from krill.delta import hdiff
from krill.delta.goflatemod import load_goflate

__all__ = ["ElfDiff", "ElfError", "available", "diff", "looks_elf", "patch"]

MAGIC = b"\x7fELF\x02\x01"  # ELF64, little-endian: the only layout the transform reads
# What elf_encode writes (format 4; 2: aarch64 ADRP+ADD/LDR/STR pairs, 3: and .eh_frame,
# 4: and symbol values, 5: and SHT_RELR); every earlier version is still restored.
SIDE_VERSION = 5


class ElfError(ValueError):
    """An ELF op whose side data or diff does not fit its base and declared sizes."""


@dataclass(frozen=True, slots=True)
class ElfDiff:
    """What an OP_ELF carries before compression: side data, then an HDIFF13 diff."""

    side: bytes
    raw: bytes


def available() -> bool:
    """Whether this install has the C transform (the encoder skips OP_ELF without it)."""
    try:
        _native()
    except ElfError:
        return False
    return True


def _native() -> ModuleType:
    return load_goflate(ElfError, "apply deltas with ELF ops")


def looks_elf(data: bytes | memoryview) -> bool:
    """An ELF64 little-endian header: worth trying the transform (x86-64 and aarch64 gain)."""
    return bytes(data[:6]) == MAGIC


def diff(base: bytes, data: bytes) -> ElfDiff | None:
    """The ELF diff rebuilding ``data`` from ``base``, or None when it would not round-trip."""
    native = _native()
    norm_base, norm_target, side = native.elf_encode(base, data)
    if len(side) > fmt.max_elf_side(len(data)):  # what appliers accept
        return None
    _, labels = native.elf_base(base)
    try:
        restored = native.elf_restore(norm_target, side, labels)
    except ValueError:
        return None
    if restored != data:
        return None
    del restored
    return ElfDiff(side, hdiff.diff(norm_base, norm_target))


def patch(base: bytes, side: bytes, raw: bytes, out_len: int) -> bytes:
    """Rebuild ``out_len`` bytes from ``base``, the side data and the normalized diff."""
    native = _native()
    try:  # the side data's version says how the base is read (format 3 deltas carry 1)
        norm_base, labels = native.elf_base(base, side[0] if side else SIDE_VERSION)
    except ValueError as exc:
        raise ElfError(f"ELF op does not fit its base: {exc}") from exc
    try:
        norm_target = hdiff.patch(norm_base, raw, out_len)
    except hdiff.HDiffError as exc:
        raise ElfError(str(exc)) from exc
    del norm_base
    try:
        out: bytes = native.elf_restore(norm_target, side, labels)
    except ValueError as exc:
        raise ElfError(f"ELF op does not fit its base: {exc}") from exc
    return out
