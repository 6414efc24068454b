"""The ELF-aware diff (OP_ELF): smaller on relinked code, and bit-exact for any input.

x86-64 libraries are built here with gcc (stripped and not); aarch64 files are
crafted byte by byte (no cross compiler on the machine): a .text of BL/ADRP
words and a .rela.dyn of RELATIVE entries, so every field kind is exercised.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import random
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from krill.delta import elf, hdiff
from krill.delta import format as fmt
from krill.delta.encode import EncodeOptions
from krill.delta.piececoder import zstd_literal
from tests.components import krill_command
from tests.test_delta_support import Entry, build_tar, compress, round_trip

_goflate = importlib.import_module("krill._goflate")

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc to build ELF")


def _c_source(functions: int, inserted: int) -> str:
    """A library whose functions call each other and share tables; ``inserted`` extra
    functions at the top move every later one, as a security fix does."""
    lines = ["#include <string.h>", "static const char *names[] = {"]
    lines += [f'"name{i}",' for i in range(functions)] + ["};", "int sink;"]
    for i in range(inserted):
        lines.append(f"int added{i}(int x) {{ sink += x * {i + 3}; return sink ^ {i}; }}")
    for i in range(functions):
        callee = f"f{i - 1}(x + 1)" if i else "0"
        lines.append(
            f"int f{i}(int x) {{ sink += (int)strlen(names[x % {functions}]) + {i}; "
            f"return x > {i} ? {callee} : sink; }}"
        )
    return "\n".join(lines) + "\n"


def _compile(tmp: Path, inserted: int) -> subprocess.Popen[bytes]:
    """Start compiling the library with ``inserted`` extra functions to ``lib{inserted}.o``."""
    src = tmp / f"lib{inserted}.c"
    src.write_text(_c_source(600, inserted))
    # Hidden visibility: calls go straight to the callee, not through the PLT, as in most
    # real libraries' internal code.
    gcc = ["gcc", "-O1", "-c", "-fPIC", "-fvisibility=hidden", "-o", f"{src}.o", str(src)]
    return subprocess.Popen(gcc)


def _link(tmp: Path, inserted: int, stripped: bool, relr: bool = False) -> bytes:
    """The shared library of ``lib{inserted}.o``; the same bytes ``gcc -shared`` makes from
    the source in one step (compiling is all of its cost, linking is milliseconds)."""
    out = tmp / f"lib{inserted}{'-relr' if relr else ''}{'-stripped' if stripped else ''}.so"
    relr_flags = ["-Wl,-z,pack-relative-relocs"] if relr else []  # .relr.dyn, as glibc's own
    subprocess.run(["gcc", "-shared", *relr_flags, "-o", out, tmp / f"lib{inserted}.c.o"],
                   check=True)
    if stripped:
        subprocess.run(["strip", out], check=True)
    return out.read_bytes()


@pytest.fixture(scope="module")
def x86_pairs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[bytes, bytes]]:
    """(old, new) of the same library stripped, not stripped, and stripped with .relr.dyn.

    Three sources are compiled, side by side (it is most of this module's time), and each
    object linked as each kind needs: a stripped library is its unstripped one after strip, as
    distributions ship them, and relr differs only at link time."""
    tmp = tmp_path_factory.mktemp("elf")
    # relr: enough new code to move .rodata by pages, so every RELR slot changes
    compiles = [_compile(tmp, inserted) for inserted in (0, 3, 150)]
    for compiling in compiles:
        assert compiling.wait() == 0, compiling.args
    return {
        "stripped": (_link(tmp, 0, True), _link(tmp, 3, True)),
        "unstripped": (_link(tmp, 0, False), _link(tmp, 3, False)),
        "relr": (_link(tmp, 0, True, relr=True), _link(tmp, 150, True, relr=True)),
    }


# --- crafted aarch64 ------------------------------------------------------------------------


def _a64_elf(shift: int, words: int = 4000) -> bytes:
    """An aarch64 ELF64: .text of BL, ADRP, ADRP+ADD and ADRP+LDR words pointing into itself
    and .data, and a .rela.dyn of R_AARCH64_RELATIVE entries; ``shift`` NOP words inserted
    mid-.text (and .data moved by as many pages and 24 bytes) move half the targets and the
    low 12 bits of every .data address, like a relinked library."""
    rng = random.Random(7)
    text_off, text_addr = 0x1000, 0x1000
    n_text = words + shift
    data_addr = 0x100000 + 0x1018 * shift

    def addr(i: int) -> int:  # where logical word i lands
        return text_addr + 4 * (i + (shift if i >= words // 2 else 0))

    body: list[int] = []
    user = 0  # the ADD/LDR word the previous ADRP asked for, or 0
    for i in range(words):
        if i == words // 2:
            body += [0xD503201F] * shift  # NOP
        pc = addr(i)
        pick = rng.randrange(6)
        low, reg = data_addr + 8 * rng.randrange(512), rng.randrange(31)
        if user:
            body.append(user)
            user = 0
        elif pick >= 4 and i not in (words // 2 - 1, words - 1):  # ADRP + ADD/LDR of `low`
            imm = ((low >> 12) - (pc >> 12)) & 0x1FFFFF
            body.append(0x90000000 | (imm & 3) << 29 | (imm >> 2) << 5 | reg)
            lo12 = low & 0xFFF
            user = (0x91000000 | lo12 << 10 if pick == 4 else 0xF9400000 | (lo12 >> 3) << 10)
            user |= reg << 5 | rng.randrange(31)
        elif pick == 0:  # BL to a function start (every 16th word)
            target = addr(16 * rng.randrange(words // 16))
            body.append(0x94000000 | (((target - pc) // 4) & 0x3FFFFFF))
        elif pick == 1:  # ADRP of a .data page
            page = ((data_addr + 0x1000 * rng.randrange(4)) >> 12) - (pc >> 12)
            imm = page & 0x1FFFFF
            body.append(0x90000000 | (imm & 3) << 29 | (imm >> 2) << 5 | rng.randrange(31))
        else:
            body.append(0x8B000000 | rng.randrange(1 << 21))  # ADD (register), no field
    text = struct.pack(f"<{n_text}I", *body)
    rela_off = text_off + len(text)
    relas = b"".join(
        struct.pack("<QQq", data_addr + 8 * i, 1027, addr(16 * i))
        for i in range(200)
    )
    data_off = rela_off + len(relas)
    data = bytes(8 * 200)
    sh_off = data_off + len(data)
    header = struct.pack(
        "<4sBBBBB7sHHIQQQIHHHHHH", b"\x7fELF", 2, 1, 1, 0, 0, bytes(7), 3, 183, 1, 0,
        64, sh_off, 0, 64, 56, 2, 64, 4, 0,
    )
    phdrs = struct.pack("<IIQQQQQQ", 1, 5, 0, 0, 0, data_off, data_off, 0x1000)
    phdrs += struct.pack("<IIQQQQQQ", 1, 6, data_off, data_addr, data_addr, len(data), 0x5000,
                         0x1000)  # .data then .bss: every address the code points at
    image = bytearray(header + phdrs)
    image += bytes(text_off - len(image)) + text + relas + data

    def section(kind: int, flags: int, addr: int, off: int, size: int, entsize: int) -> bytes:
        return struct.pack("<IIQQQQIIQQ", 0, kind, flags, addr, off, size, 0, 0, 4, entsize)

    image += bytes(64)
    image += section(1, 6, text_addr, text_off, len(text), 0)
    image += section(4, 2, 0, rela_off, len(relas), 24)
    image += section(1, 3, data_addr, data_off, len(data), 0)
    return bytes(image)


# --- the transform --------------------------------------------------------------------------


def _sizes(base: bytes, target: bytes) -> tuple[int, int]:
    """(ELF op payload, plain HDiffPatch payload), both zstd 19."""
    coded = elf.diff(base, target)
    assert coded is not None, "the transform should round-trip on a well-formed ELF"
    assert elf.patch(base, coded.side, coded.raw, len(target)) == target
    plain = len(zstd_literal(hdiff.diff(base, target), 19))
    return len(zstd_literal(coded.side + coded.raw, 19)), plain


@pytest.mark.parametrize("kind", ["stripped", "unstripped"])
def test_x86_64_libraries_round_trip_smaller(
    x86_pairs: dict[str, tuple[bytes, bytes]], kind: str
) -> None:
    base, target = x86_pairs[kind]
    coded, plain = _sizes(base, target)
    assert coded < plain, (coded, plain)  # real libraries: 0.3-0.65x bsdiff (docs/deltas.md)


def test_aarch64_fields_round_trip_smaller() -> None:
    base, target = _a64_elf(0), _a64_elf(5)
    coded, plain = _sizes(base, target)
    assert coded < 0.8 * plain, (coded, plain)


def test_aarch64_adrp_pairs_beat_adrp_alone() -> None:
    """Side data version 2 labels ADRP+ADD/LDR by their full address: when .data moves by
    other than whole pages, the ADD/LDR low bits no longer show up in the diff."""
    base, target = _a64_elf(0), _a64_elf(5)
    sizes = {}
    for version in (1, 2, 3):
        norm_base, norm_target, side = _goflate.elf_encode(base, target, version)
        assert side[0] == version
        assert _goflate.elf_base(base, version)[0] == norm_base
        assert elf.patch(base, side, hdiff.diff(norm_base, norm_target), len(target)) == target
        sizes[version] = len(zstd_literal(side + hdiff.diff(norm_base, norm_target), 19))
    assert sizes[3] <= sizes[2] < 0.7 * sizes[1], sizes
    with pytest.raises(ValueError, match="version 6"):
        _goflate.elf_base(base, 6)


def test_the_base_normalization_is_the_encoders() -> None:
    """The node derives the base's half from the base alone: it must equal the encoder's."""
    base, target = _a64_elf(0), _a64_elf(3)
    norm_base, _, _ = _goflate.elf_encode(base, target)
    assert _goflate.elf_base(base)[0] == norm_base
    assert norm_base != base  # fields were replaced


def _x86_elf_of_random_code(seed: int, size: int = 1 << 18) -> bytes:
    """An x86-64 ELF64 whose .text is seeded noise rich in prefixes, escapes and calls: every
    decoder path (legacy/REX/VEX/EVEX prefixes, 0F maps, ModRM/SIB forms, truncations)."""
    rng = random.Random(seed)
    hot = bytes([0x66, 0x67, 0xF0, 0xF2, 0xF3, 0x2E, 0x40, 0x48, 0x4C, 0x0F, 0x38, 0x3A, 0xC4,
                 0xC5, 0x62, 0xE8, 0xE9, 0xF6, 0xF7, 0x05, 0x04, 0x8D, 0x8B, 0x80, 0x8F])
    text = bytearray(rng.randbytes(size))
    for i in range(0, size - 8, 3):
        r = rng.randrange(8)
        if r < 3:
            text[i] = hot[rng.randrange(len(hot))]
        elif r == 3:  # a call into the image
            text[i:i + 5] = b"\xe8" + struct.pack("<i", rng.randrange(-i, size - i) - 5)
    text_off = text_addr = 0x1000
    sh_off = text_off + size
    header = struct.pack(
        "<4sBBBBB7sHHIQQQIHHHHHH", b"\x7fELF", 2, 1, 1, 0, 0, bytes(7), 3, 62, 1, 0,
        64, sh_off, 0, 64, 56, 1, 64, 2, 0,
    )
    image = bytearray(header + struct.pack("<IIQQQQQQ", 1, 5, 0, 0, 0, sh_off, sh_off, 0x1000))
    image += bytes(text_off - len(image)) + text + bytes(64)
    image += struct.pack("<IIQQQQIIQQ", 0, 1, 6, text_addr, text_off, size, 0, 0, 16, 0)
    return bytes(image)


def test_the_x86_decoder_finds_the_fields_it_always_found() -> None:
    """Deltas made by an older origin are applied by newer nodes: the node must find exactly
    the fields the origin replaced, so the decoder's answers are part of the format. This
    pins them (the normalized bytes and labels of seeded noise); the hash is that of the
    decoder the format-4 deltas were first made with. A faster decoder must keep it."""
    h = hashlib.sha256()
    for seed in range(4):
        norm, labels = _goflate.elf_base(_x86_elf_of_random_code(seed))
        h.update(norm)
        h.update(labels)
    assert h.hexdigest() == "fcf3f072b87aad5988b7461875ff4fd9992591ce31108c9cf3dafa9c60cc940f"


def _round_trips(base: bytes, data: bytes) -> None:
    coded = elf.diff(base, data)
    if coded is not None:
        assert elf.patch(base, coded.side, coded.raw, len(data)) == data


def test_truncated_and_odd_elf_files_round_trip(x86_pairs: dict[str, tuple[bytes, bytes]]) -> None:
    base, target = x86_pairs["unstripped"]
    a64 = _a64_elf(2)
    for cut in [0, 4, 6, 20, 63, 64, 65, 200, 4096, len(target) // 2, len(target) - 1]:
        _round_trips(base, target[:cut])
        _round_trips(a64[:cut], a64)
    _round_trips(base, b"\x7fELF\x02\x01" + bytes(range(256)) * 40)  # only looks like ELF
    _round_trips(b"not an elf at all", target)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_hostile_elf_round_trips_or_is_refused(
    x86_pairs: dict[str, tuple[bytes, bytes]], data: st.DataObject
) -> None:
    """Random overwrites of headers, section tables and code: bit-exact or no ELF op."""
    sources = [_a64_elf(0), _a64_elf(1, 600), *x86_pairs["stripped"], x86_pairs["relr"][1]]
    source = data.draw(st.sampled_from(sources))
    mutated = bytearray(source)
    for _ in range(data.draw(st.integers(1, 8))):
        region = data.draw(st.sampled_from(["header", "anywhere", "tail"]))
        lo = {"header": 0, "anywhere": 0, "tail": max(0, len(mutated) - 320)}[region]
        hi = 128 if region == "header" else len(mutated) - 8
        pos = data.draw(st.integers(lo, hi))
        mutated[pos : pos + 8] = data.draw(st.binary(min_size=8, max_size=8))
    _round_trips(source, bytes(mutated))
    _round_trips(bytes(mutated), source)


def _eh_frame_hdr(image: bytes) -> tuple[int, int]:
    """(file offset, size) of PT_GNU_EH_FRAME in an ELF64."""
    phoff, = struct.unpack_from("<Q", image, 32)
    phnum, = struct.unpack_from("<H", image, 56)
    for i in range(phnum):
        kind, _, off, _, _, size = struct.unpack_from("<IIQQQQ", image, phoff + 56 * i)
        if kind == 0x6474E550:
            return off, size
    raise AssertionError("no PT_GNU_EH_FRAME")


@pytest.mark.parametrize("kind", ["stripped", "unstripped"])
def test_eh_frame_and_symbol_fields_shrink_the_diff(
    x86_pairs: dict[str, tuple[bytes, bytes]], kind: str
) -> None:
    """Side data version 3 labels .eh_frame_hdr's table and FDE pc_begin fields too, version 4
    CIE pointers and symbol values."""
    base, target = x86_pairs[kind]
    sizes = {}
    for version in (2, 3, 4):
        norm_base, norm_target, side = _goflate.elf_encode(base, target, version)
        raw = hdiff.diff(norm_base, norm_target)
        assert elf.patch(base, side, raw, len(target)) == target
        sizes[version] = len(zstd_literal(side + raw, 19))
    assert sizes[4] < sizes[3] < sizes[2], sizes


def test_relr_fields_shrink_the_diff(x86_pairs: dict[str, tuple[bytes, bytes]]) -> None:
    """Side data version 5 reads SHT_RELR: its address entries and the slots it relocates."""
    base, target = x86_pairs["relr"]
    assert b".relr.dyn" in target
    sizes = {}
    for version in (4, 5):
        norm_base, norm_target, side = _goflate.elf_encode(base, target, version)
        raw = hdiff.diff(norm_base, norm_target)
        assert elf.patch(base, side, raw, len(target)) == target
        sizes[version] = len(zstd_literal(side + raw, 19))
    assert sizes[5] < sizes[4], sizes


def test_mangled_eh_frames_round_trip(x86_pairs: dict[str, tuple[bytes, bytes]]) -> None:
    """Encodings, counts, record lengths and CIE ids overwritten: bit-exact or no ELF op."""
    base, target = x86_pairs["stripped"]
    hdr, size = _eh_frame_hdr(target)
    eh_frame = hdr + 4 + struct.unpack_from("<i", target, hdr + 4)[0]  # vaddr == offset here
    rng = random.Random(5)
    for _ in range(60):
        mutated = bytearray(target)
        for _ in range(rng.randrange(1, 4)):
            at = rng.choice([hdr + rng.randrange(16), hdr + rng.randrange(size),
                             eh_frame + rng.randrange(64), eh_frame + rng.randrange(4096)])
            mutated[at] = rng.choice([0, 1, 0x1B, 0x3B, 0xFF, rng.randrange(256)])
        _round_trips(base, bytes(mutated))
        _round_trips(bytes(mutated), target)


@settings(max_examples=80, deadline=None)
@given(st.binary(max_size=64), st.binary(max_size=2048))
def test_restore_refuses_garbage_side_data(side: bytes, norm: bytes) -> None:
    labels = _goflate.elf_base(_a64_elf(0, 400))[1]
    a64 = _a64_elf(1, 400)
    for target in (norm, a64):
        try:
            _goflate.elf_restore(target, side, labels)
        except ValueError:
            pass


# --- in the codec ---------------------------------------------------------------------------


def _layer(libs: dict[str, bytes]) -> bytes:
    entries = {"usr/lib": Entry("dir", mode=0o755)}
    entries |= {f"usr/lib/{name}": Entry("file", data, mode=0o755) for name, data in libs.items()}
    entries["etc/notes"] = Entry("file", b"unchanged\n" * 50)
    return compress(build_tar(entries), "gzip6")


def test_layer_with_elf_files_is_bit_exact(
    tmp_path: Path, x86_pairs: dict[str, tuple[bytes, bytes]]
) -> None:
    (sa, sb), (ua, ub) = x86_pairs["stripped"], x86_pairs["unstripped"]
    base = _layer({"libs.so": sa, "libu.so": ua, "liba64.so": _a64_elf(0)})
    target = _layer({"libs.so": sb, "libu.so": ub, "liba64.so": _a64_elf(4)})
    result, rebuilt = round_trip(tmp_path / "elf", base, target)
    assert rebuilt == target
    assert result.stats.get("elf", 0) >= 2, result.stats
    without, rebuilt = round_trip(
        tmp_path / "plain", base, target, EncodeOptions(elf_transform=False)
    )
    assert rebuilt == target
    assert "elf" not in without.stats
    assert result.size < without.size


def test_cli_create_apply_on_elf_layer(
    tmp_path: Path, x86_pairs: dict[str, tuple[bytes, bytes]]
) -> None:
    (ua, ub) = x86_pairs["unstripped"]
    base, target = tmp_path / "base.tgz", tmp_path / "target.tgz"
    base.write_bytes(_layer({"libu.so": ua}))
    target.write_bytes(_layer({"libu.so": ub}))
    delta, out = tmp_path / "d.krd", tmp_path / "out.tgz"
    for args in (("create", base, target, delta), ("apply", base, delta, out)):
        done = subprocess.run(krill_command("delta", *map(str, args)), capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr
    assert out.read_bytes() == target.read_bytes()


def test_a_version_2_delta_still_applies(tmp_path: Path) -> None:
    """Deltas written before OP_ELF (format krill-delta/2) are read as before."""
    base = _layer({"lib.so": _a64_elf(0)})
    target = _layer({"lib.so": _a64_elf(0)[:-8] + b"changed!"})
    (tmp_path / "b.tgz").write_bytes(base)
    (tmp_path / "t.tgz").write_bytes(target)
    from krill.delta import apply_delta, create_delta

    delta = tmp_path / "d.krd"
    create_delta(tmp_path / "b.tgz", tmp_path / "t.tgz", delta, EncodeOptions(elf_transform=False))
    raw = delta.read_bytes()
    magic, _, length = struct.unpack(">8sHI", raw[:14])
    doc = json.loads(raw[14 : 14 + length])
    doc["format"] = "krill-delta/2"
    head = json.dumps(doc).encode()
    body = struct.pack(">8sHI", magic, 2, len(head)) + head + raw[14 + length : -32]
    old = tmp_path / "old.krd"
    old.write_bytes(body + hashlib.sha256(body).digest())
    applied = apply_delta(tmp_path / "b.tgz", old, tmp_path / "out")
    assert applied.path.read_bytes() == target
    assert fmt.FORMAT_NAMES[2] == "krill-delta/2"


def _elf_op_at(delta: bytes) -> int:
    """Offset of the first OP_ELF in a delta."""
    import io

    f = io.BytesIO(delta)
    header = fmt.read_header(f)
    reader = fmt.OpReader(
        f, base_size=header.base.tar_size, target_size=header.target.tar_size,
        delta_size=len(delta),
    )
    while True:
        at = f.tell()
        op = reader.next()
        assert op.kind != fmt.OP_END, "the delta should have an ELF op"
        if op.kind == fmt.OP_ELF:
            return at


def test_crafted_elf_ops_are_format_errors(
    tmp_path: Path, x86_pairs: dict[str, tuple[bytes, bytes]]
) -> None:
    """Side data longer than the payload, oversized, or a corrupt side table: refused."""
    from tests.delta_crafting import apply_fails, resign

    base = _layer({"lib.so": x86_pairs["unstripped"][0]})
    target = _layer({"lib.so": x86_pairs["unstripped"][1]})
    result, _ = round_trip(tmp_path / "ok", base, target)
    delta = (tmp_path / "ok" / "delta.krd").read_bytes()
    base_path = tmp_path / "ok" / "base.blob"
    at = _elf_op_at(delta)
    head = struct.Struct(">QIIIII")
    off, base_len, out_len, side_len, raw_len, comp_len = head.unpack_from(delta, at + 1)

    def crafted(*fields: int, payload: bytes | None = None) -> bytes:
        start = at + 1 + head.size
        body = delta[start:] if payload is None else payload + delta[start + comp_len :]
        return resign(delta[: at + 1] + head.pack(*fields) + body)

    from krill.delta.zstdlib import zstd

    raw = zstd.decompress(delta[at + 1 + head.size : at + 1 + head.size + comp_len])
    bad_side = zstd_literal(b"\x09" + raw[1:], 3)  # a side-data version no node knows

    cases = {
        "side": crafted(off, base_len, out_len, raw_len + 1, raw_len, comp_len),
        "huge": crafted(off, base_len, out_len, out_len + (2 << 20), raw_len, comp_len),
        # the side data shifted by a byte: the mask and table no longer fit the file
        "shifted": crafted(off, base_len, out_len, side_len - 1, raw_len, comp_len),
        "version": crafted(
            off, base_len, out_len, side_len, raw_len, len(bad_side), payload=bad_side
        ),
    }
    for name, data in cases.items():
        message = apply_fails(tmp_path / name, base_path, data)
        assert "ELF" in message or "HDIFF13" in message, (name, message)
    assert result.stats.get("elf") == 1


def test_a_format_3_delta_with_version_1_side_data_still_applies(
    tmp_path: Path, x86_pairs: dict[str, tuple[bytes, bytes]]
) -> None:
    """A delta written before side data v2 (format krill-delta/3, its ELF op's side data v1)
    applies as before: the node reads the base as that version did."""
    from krill.delta import apply_delta
    from tests.delta_crafting import resign

    lib_base, lib_target = x86_pairs["unstripped"]
    base, target = _layer({"lib.so": lib_base}), _layer({"lib.so": lib_target})
    round_trip(tmp_path / "ok", base, target)
    delta = (tmp_path / "ok" / "delta.krd").read_bytes()
    at = _elf_op_at(delta)
    head = struct.Struct(">QIIIII")
    off, base_len, out_len, _, _, comp_len = head.unpack_from(delta, at + 1)
    norm_base, norm_target, side = _goflate.elf_encode(lib_base, lib_target, 1)
    assert side[0] == 1
    payload = side + hdiff.diff(norm_base, norm_target)
    comp = zstd_literal(payload, 19)
    op = delta[at : at + 1] + head.pack(off, base_len, out_len, len(side), len(payload), len(comp))
    body = delta[: at] + op + comp + delta[at + 1 + head.size + comp_len :]
    magic, _, length = struct.unpack(">8sHI", body[:14])
    doc = json.loads(body[14 : 14 + length])
    doc["format"] = "krill-delta/3"
    text = json.dumps(doc).encode()
    old = tmp_path / "v3.krd"
    old.write_bytes(resign(struct.pack(">8sHI", magic, 3, len(text)) + text + body[14 + length :]))
    applied = apply_delta(tmp_path / "ok" / "base.blob", old, tmp_path / "out")
    assert applied.path.read_bytes() == target
