"""krill._zdeflate against the system zlib, bit for bit (zdeflate_*.c).

The encoder is only worth having if every stream it writes is zlib's own: the
zlib recipe's restart points were proven against zlib's bytes, and a node's
rebuilt layer must hash to the original. So each case compresses the same
input with ``zlib.compressobj(level, DEFLATED, -15, mem_level, strategy,
zdict)`` and with ``Compressor`` and compares the concatenated outputs: random
and structured inputs (text, long matches, runs, incompressible bytes that
make stored blocks, inputs long enough to slide the window), every lazy level,
every memLevel, with and without a preset dictionary, split into compress()
calls at random, with zlib's other flush modes in between; and one real tar.

One known difference: where the empty marker block of a Z_PARTIAL_FLUSH, Z_SYNC_FLUSH or
Z_FULL_FLUSH fills the first 32 KiB of that flush() call's output, CPython's zlib writes it
twice (its flush() hands deflate() 32 KiB of output space first) and ``Compressor`` once;
the recipe never flushes so (compress() and Z_FINISH only). test_flush_modes_between_calls
leaves out runs with a flush of 32 KiB or more, test_marker_written_twice_at_32k pins the
difference down.
"""

from __future__ import annotations

import io
import itertools
import random
import sys
import tarfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

_zdeflate = pytest.importorskip("krill._zdeflate", reason="the C extension is not built")

# Flush modes a stream may see between compress() calls (Z_FINISH ends every stream).
_FLUSHES = (
    zlib.Z_NO_FLUSH,
    zlib.Z_PARTIAL_FLUSH,
    zlib.Z_SYNC_FLUSH,
    zlib.Z_FULL_FLUSH,
    zlib.Z_BLOCK,
)


class _Encoder(Protocol):
    def compress(self, data: bytes, /) -> bytes: ...
    def flush(self, mode: int = zlib.Z_FINISH, /) -> bytes: ...


def _run(deflate: _Encoder, pieces: Sequence[bytes | int]) -> bytes:
    """The stream an encoder writes for compress(piece) / flush(mode) calls, then Z_FINISH."""
    out = [deflate.compress(p) if isinstance(p, bytes) else deflate.flush(p) for p in pieces]
    return b"".join([*out, deflate.flush(zlib.Z_FINISH)])


def assert_same(
    pieces: Sequence[bytes | int],
    level: int,
    mem_level: int = 8,
    strategy: int = zlib.Z_DEFAULT_STRATEGY,
    zdict: bytes | None = None,
) -> None:
    extra = {"zdict": zdict} if zdict is not None else {}
    ref = zlib.compressobj(level, zlib.DEFLATED, -15, mem_level, strategy, **extra)
    ours = _zdeflate.Compressor(level, mem_level, strategy, zdict)
    want, got = _run(ref, pieces), _run(ours, pieces)
    if got != want:
        at = next((i for i, (a, b) in enumerate(zip(want, got, strict=False)) if a != b), None)
        at = min(len(want), len(got)) if at is None else at
        pytest.fail(
            f"level {level} memLevel {mem_level} strategy {strategy} zdict "
            f"{None if zdict is None else len(zdict)}: {len(got)} bytes against zlib's "
            f"{len(want)}, first difference at byte {at}"
        )


def _split(data: bytes, cuts: Sequence[float]) -> list[bytes]:
    points = sorted({int(c * len(data)) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def _text(rnd: random.Random, size: int) -> bytes:
    words = [
        bytes(rnd.choice(b"etaoinshrdlu") for _ in range(rnd.randrange(1, 9))) for _ in range(300)
    ]
    out = bytearray()
    while len(out) < size:
        out += rnd.choice(words) + rnd.choice([b" ", b" ", b"\n", b", "])
    return bytes(out[:size])


def _long_matches(rnd: random.Random, size: int) -> bytes:
    """Binary with repeats at every distance up to the window's, some over 258 bytes."""
    out = bytearray(rnd.randbytes(min(size, 512)))
    while len(out) < size:
        if rnd.random() < 0.3:
            out += rnd.randbytes(rnd.randrange(1, 64))
        else:
            dist = rnd.randrange(1, min(len(out), 40000) + 1)
            start = len(out) - dist
            length = rnd.choice([3, 4, 5, rnd.randrange(3, 300), rnd.randrange(200, 2000)])
            for i in range(length):  # overlapping copies as deflate does them
                out.append(out[start + i])
    return bytes(out[:size])


def _runs(rnd: random.Random, size: int) -> bytes:
    out = bytearray()
    while len(out) < size:
        out += bytes([rnd.choice(b"\x00\xffab")]) * rnd.randrange(1, 1000)
    return bytes(out[:size])


_KINDS = {
    "random": lambda rnd, n: rnd.randbytes(n),
    "text": _text,
    "matches": _long_matches,
    "runs": _runs,
    "mixed": lambda rnd, n: (
        _text(rnd, n // 3) + rnd.randbytes(n // 3) + _runs(rnd, n - 2 * (n // 3))
    ),
}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(sorted(_KINDS)),
    size=st.one_of(st.integers(0, 8), st.integers(0, 3000), st.integers(60_000, 200_000)),
    seed=st.integers(0, 2**32 - 1),
    level=st.integers(4, 9),
    mem_level=st.integers(1, 9),
    strategy=st.sampled_from([zlib.Z_DEFAULT_STRATEGY, zlib.Z_FILTERED]),
    zdict_size=st.one_of(st.none(), st.integers(0, 40_000)),
    cuts=st.lists(st.floats(0, 1), max_size=6),
)
def test_same_stream_as_zlib(
    kind: str,
    size: int,
    seed: int,
    level: int,
    mem_level: int,
    strategy: int,
    zdict_size: int | None,
    cuts: list[float],
) -> None:
    rnd = random.Random(seed)
    data = _KINDS[kind](rnd, size)
    # a dictionary that the data often repeats from, as a restart's window is
    zdict = None if zdict_size is None else (data[:zdict_size] + rnd.randbytes(64))[-zdict_size:]
    if zdict_size == 0:
        zdict = b""
    assert_same(_split(data, cuts), level, mem_level, strategy, zdict)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    level=st.integers(4, 9),
    mem_level=st.integers(1, 9),
    ops=st.lists(st.tuples(st.integers(0, 70_000), st.sampled_from(_FLUSHES)), max_size=8),
)
def test_flush_modes_between_calls(
    seed: int, level: int, mem_level: int, ops: list[tuple[int, int]]
) -> None:
    """The zlib recipe's tests write streams with sync and full flushes through the same
    compressobj: those modes follow zlib too (empty marker blocks, history forgotten),
    wherever no flush's output reaches 32 KiB (see test_marker_written_twice_at_32k)."""
    rnd = random.Random(seed)
    pieces: list[bytes | int] = []
    for size, mode in ops:
        pieces += [_long_matches(rnd, size), mode]
    ref = zlib.compressobj(level, zlib.DEFLATED, -15, mem_level)
    for piece in pieces:
        out = ref.compress(piece) if isinstance(piece, bytes) else ref.flush(piece)
        assume(isinstance(piece, bytes) or len(out) < 1 << 15)
    assert_same(pieces, level, mem_level)


@pytest.mark.parametrize("mode", [zlib.Z_SYNC_FLUSH, zlib.Z_FULL_FLUSH])
def test_marker_written_twice_at_32k(mode: int) -> None:
    """The documented difference: a flush whose empty stored block ends at byte 32768 of
    what the call returns. CPython's flush() gave deflate() those 32 KiB, so zlib is called
    again and writes a second marker (00 00 00 ff ff, the stream being byte-aligned after
    the first); the encoder writes one. The data is the same."""
    data = random.Random(65539).randbytes(65539)  # the flush returns 32768 + 5 bytes
    ref = zlib.compressobj(6, zlib.DEFLATED, -15, 9)
    head, flushed = ref.compress(data), ref.flush(mode)
    want = head + flushed + ref.flush()
    assert len(flushed) == (1 << 15) + 5 and flushed.endswith(b"\0\0\xff\xff\0\0\0\xff\xff")
    ours = _zdeflate.Compressor(6, 9)
    got = ours.compress(data) + ours.flush(mode) + ours.flush()
    at = len(head) + len(flushed) - 5
    assert got != want and got[:at] + b"\0\0\0\xff\xff" + got[at:] == want
    assert zlib.decompress(got, -15) == data


@pytest.mark.parametrize("level", range(4, 10))
def test_window_slides_with_chunking(level: int) -> None:
    """Several windows of input, fed whole and in odd chunks (the slide happens at
    different calls), with a 32 KiB dictionary as a restart primes it."""
    rnd = random.Random(level)
    data = _long_matches(rnd, 400_000)
    zdict = rnd.randbytes(1 << 15)
    assert_same([data], level, 8, zlib.Z_DEFAULT_STRATEGY, zdict)
    chunks = [data[i : i + 4099] for i in range(0, len(data), 4099)]
    assert_same(chunks, level, 9)


def test_tiny_and_empty() -> None:
    for data in [b"", b"a", b"ab", b"abc", b"abcabc", b"\x00" * 259]:
        for level in range(4, 10):
            assert_same([data], level)
            assert_same([b"", data, b""], level, 1)


def test_huge_zdict_uses_its_tail() -> None:
    rnd = random.Random(3)
    zdict = rnd.randbytes(200_000)
    assert_same([zdict[-5000:] * 3], 6, 8, zlib.Z_DEFAULT_STRATEGY, zdict)


def test_memoryview_input_and_finished_stream() -> None:
    data = _text(random.Random(1), 50_000)
    ours = _zdeflate.Compressor(6)
    stream = ours.compress(memoryview(data)[100:]) + ours.flush()
    ref = zlib.compressobj(6, zlib.DEFLATED, -15)
    assert stream == ref.compress(data[100:]) + ref.flush()
    with pytest.raises(ValueError, match="finished"):
        ours.compress(b"more")


def _site_packages_tar(limit: int) -> bytes:
    """A tar of this interpreter's installed packages: real files of many kinds."""
    root = Path(next(p for p in sys.path if p.endswith("site-packages")))
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for path in sorted(root.rglob("*")):
            if out.tell() > limit:
                break
            if path.is_file() and not path.is_symlink():
                tar.add(path, arcname=str(path.relative_to(root)), recursive=False)
    return out.getvalue()


@pytest.mark.slow
def test_real_tar_is_zlibs() -> None:
    """About 40 MB of real files at the recipe's common settings, and in 1 MiB calls."""
    data = _site_packages_tar(40 << 20)
    assert len(data) > 20 << 20
    assert_same([data], 6, 8)
    assert_same([data[i : i + (1 << 20)] for i in range(0, len(data), 1 << 20)], 9, 9)
    assert_same([data[: 8 << 20]], 4, 1, zlib.Z_FILTERED, data[-(1 << 15) :])


def test_zlib_setting_uses_it_where_it_can() -> None:
    """The recipe's segments use the native encoder at the lazy levels when the system zlib
    is the version it reproduces; other settings (and other zlibs) keep zlib's."""
    from krill.delta.zlibrestarts import ZlibSetting

    native = zlib.ZLIB_RUNTIME_VERSION == "1.2.13"
    lazy = ZlibSetting(6, 8, zlib.Z_DEFAULT_STRATEGY).compressobj(b"window")
    assert isinstance(lazy, _zdeflate.Compressor) is native
    assert not isinstance(ZlibSetting(3, 8, 0).compressobj(), _zdeflate.Compressor)
    assert not isinstance(ZlibSetting(6, 8, zlib.Z_RLE).compressobj(), _zdeflate.Compressor)
    data = _text(random.Random(2), 100_000)
    ref = zlib.compressobj(6, zlib.DEFLATED, -15, 8, 0, zdict=b"window")
    assert lazy.compress(data) + lazy.flush() == ref.compress(data) + ref.flush()
