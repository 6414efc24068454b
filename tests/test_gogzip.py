"""krill._goflate against Go's own compress/gzip (the oracle, tests/goflate), byte for byte.

Every Go level, sizes around each internal boundary of Go's deflate (its
262-byte lookahead, 2^14-token blocks, 32/64 KiB window and slide, 64 KiB
level-1 and stored blocks, 16 MiB hash-offset rebase), random, text, runs,
a tar of real files, and hypothesis inputs fed in random pieces.
"""

from __future__ import annotations

import hashlib
import io
import random
import subprocess
import tarfile
import threading
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from krill.delta.gogzip import GO_LEVELS, GoGzipWriter, go_header
from tests.goflate.oracle import GoOracle

_goflate = pytest.importorskip("krill._goflate", reason="the C extension is not built")

# Around: tiny-block special cases (16, 128), lookahead (262), token blocks (2^14),
# window (2^15), slide point (65274 = 2^16 - 262), store/level-1 blocks (65535), 2^16, 2^17.
BOUNDARY_SIZES = [
    0, 1, 2, 3, 4, 5, 15, 16, 17, 18, 127, 128, 129, 258, 261, 262, 263, 4096, 16383, 16384,
    16385, 32767, 32768, 32769, 65273, 65274, 65275, 65278, 65534, 65535, 65536, 65537,
    98304, 131071, 131072, 131073, 200_003,
]  # fmt: skip


def gzip_c(data: bytes, level: int, feeds: list[int] | None = None) -> bytes:
    """Krill's Go gzip of ``data``, fed in pieces of the ``feeds`` sizes (cycled)."""
    writer = GoGzipWriter(go_header(level), level)
    out: list[bytes] = []
    pos, sizes = 0, feeds or [len(data) or 1]
    while pos < len(data):
        step = sizes[len(out) % len(sizes)]
        out.append(writer.feed(data[pos : pos + step]))
        pos += step
    out.append(writer.finish())
    return b"".join(out)


def text(rng: random.Random, size: int) -> bytes:
    words = [rng.randbytes(rng.randint(2, 9)).hex().encode() for _ in range(300)]
    out = bytearray()
    while len(out) < size:
        out += rng.choice(words) + rng.choice([b" ", b"\n", b", ", b"("])
    return bytes(out[:size])


def runs(rng: random.Random, size: int) -> bytes:
    out = bytearray()
    while len(out) < size:
        out += bytes([rng.randrange(4)]) * rng.choice([1, 3, 4, 5, 100, 258, 259, 1000, 40000])
    return bytes(out[:size])


def mixed(rng: random.Random, size: int) -> bytes:
    """Random, text and runs in turn: stored, fixed and dynamic blocks in one stream."""
    out = bytearray()
    while len(out) < size:
        kind = rng.choice([rng.randbytes, lambda n: text(rng, n), lambda n: runs(rng, n)])
        out += kind(rng.choice([50, 700, 5000, 30000]))
    return bytes(out[:size])


def kinds(seed: int, size: int) -> dict[str, bytes]:
    rng = random.Random(seed * 1_000_003 + size)
    return {
        "random": rng.randbytes(size),
        "text": text(rng, size),
        "runs": runs(rng, size),
        "mixed": mixed(rng, size),
    }


def assert_same(go: bytes, ours: bytes, what: str) -> None:
    if go != ours:
        at = next((i for i, (a, b) in enumerate(zip(go, ours, strict=False)) if a != b), None)
        pytest.fail(f"{what}: Go wrote {len(go)} bytes, we {len(ours)}; first difference at {at}")


@pytest.mark.parametrize("level", [-1, *GO_LEVELS])
def test_boundary_sizes_match_go(go_oracle: GoOracle, level: int) -> None:
    for size in BOUNDARY_SIZES:
        for name, data in kinds(level, size).items():
            go = go_oracle.gzip(data, level)
            assert_same(go, gzip_c(data, level), f"level {level}, {name}, {size} bytes")
            assert zlib.decompress(go, 31) == data


@pytest.mark.parametrize("level", GO_LEVELS)
def test_real_files_tar_matches_go(go_oracle: GoOracle, level: int) -> None:
    data = python_tar(3 << 20)
    assert_same(go_oracle.gzip(data, level), gzip_c(data, level, [1 << 20]), f"level {level}")


@pytest.mark.slow
@pytest.mark.parametrize("level", [1, 2, 6, 9])
def test_past_the_hash_offset_rebase_matches_go(
    go_oracle: GoOracle, tmp_path: Path, level: int
) -> None:
    """Over 16 MiB (512 window slides) Go rebases its hash chains' offsets (maxHashOffset)."""
    src = tmp_path / "in.tar"
    src.write_bytes(python_tar(20 << 20 if level != 9 else 17 << 20))
    go = tmp_path / "go.gz"
    go_oracle.gzip_file(src, level, go)
    writer = GoGzipWriter(go_header(level), level)
    with open(src, "rb") as f, open(go, "rb") as expected:
        while chunk := f.read(3 << 20):
            out = writer.feed(chunk)
            assert expected.read(len(out)) == out
        out = writer.finish()
        assert expected.read() == out


def test_feed_sizes_do_not_change_the_output() -> None:
    data = mixed(random.Random(7), 300_000)
    for level in GO_LEVELS:
        whole = gzip_c(data, level)
        for feeds in ([1], [7, 65535, 1, 262], [65274], [4096, 61178, 3]):
            if feeds == [1] and level in (8, 9):
                feeds = [3]  # byte-at-a-time at the slow levels costs seconds, not coverage
            assert gzip_c(data, level, feeds) == whole, (level, feeds)


def test_go_output_depends_on_write_splits_and_write_follows_go(go_oracle: GoOracle) -> None:
    """Go's Write steps before it fills: a Write ending near a full window changes the bytes.

    Here a 40-byte repeat at distance 32768 starts at 65274, where Go slides its
    window: one big Write finds it, Writes of 65535 bytes do not. ``compress``
    is one big Write whatever the feeds; ``write`` is exactly one Go Write.
    """
    rng = random.Random(3)
    buf = bytearray(rng.randbytes(200_000))
    buf[65274 : 65274 + 40] = buf[32506 : 32506 + 40]
    data = bytes(buf)
    for level in (2, 6, 9):
        whole, split = go_oracle.gzip(data, level), go_oracle.gzip(data, level, 65535)
        assert whole != split
        assert gzip_c(data, level, [65535]) == whole
        d = _goflate.Deflater(level)
        raw = b"".join(d.write(data[i : i + 65535]) for i in range(0, len(data), 65535))
        assert raw + d.finish() == split[10:-8]


def test_deflater_refuses_misuse() -> None:
    with pytest.raises(ValueError, match="invalid compression level"):
        _goflate.Deflater(10)
    d = _goflate.Deflater(6)
    d.compress(b"abc")
    d.finish()
    with pytest.raises(ValueError, match="finished"):
        d.compress(b"more")


_chunks = st.lists(st.integers(1, 70_000), min_size=1, max_size=6)


@st.composite
def layer_like(draw: st.DrawFn) -> bytes:
    """Pieces of random, repeated and text bytes, with repeats at window-sized distances."""
    rng = random.Random(draw(st.integers(0, 2**32)))
    out = bytearray()
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from(["random", "text", "runs", "repeat", "bytes"]))
        size = draw(st.sampled_from([1, 5, 258, 3000, 32768, 40000, 70000]))
        if kind == "repeat" and out:
            start = max(0, len(out) - draw(st.sampled_from([1, 4096, 32768, 32769, 40000])))
            out += out[start : start + size]
        elif kind == "bytes":
            out += draw(st.binary(max_size=300))
        elif kind == "text":
            out += text(rng, size)
        elif kind == "runs":
            out += runs(rng, size)
        else:
            out += rng.randbytes(size)
    return bytes(out)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.one_of(st.binary(max_size=5000), layer_like()),
    level=st.sampled_from(GO_LEVELS),
    feeds=st.lists(st.integers(1, 70_000), min_size=1, max_size=12),
)
def test_any_feed_sizes_give_the_single_feed_output(
    data: bytes, level: int, feeds: list[int]
) -> None:
    """No oracle needed: arbitrary bytes in arbitrary pieces give the one-piece stream."""
    assert gzip_c(data, level, feeds) == gzip_c(data, level)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=layer_like(), level=st.sampled_from(GO_LEVELS), feeds=_chunks)
def test_hypothesis_inputs_match_go(
    go_oracle: GoOracle, data: bytes, level: int, feeds: list[int]
) -> None:
    assert gzip_c(data, level, feeds) == go_oracle.gzip(data, level)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=layer_like(), level=st.sampled_from(GO_LEVELS), chunk=st.integers(1, 70_000))
def test_hypothesis_go_writes_match_go(
    go_oracle: GoOracle, data: bytes, level: int, chunk: int
) -> None:
    d = _goflate.Deflater(level)
    raw = b"".join(d.write(data[i : i + chunk]) for i in range(0, len(data), chunk))
    assert raw + d.finish() == go_oracle.gzip(data, level, chunk)[10:-8]


def python_tar(limit: int) -> bytes:
    """A tar of real files (the standard library's sources), cut to about ``limit`` bytes."""
    buf = io.BytesIO()
    root = Path(tarfile.__file__).parent
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(root.rglob("*.py")):
            if buf.tell() > limit:
                break
            tar.add(path, arcname=str(path.relative_to(root.parent)))
    return buf.getvalue()


@pytest.mark.slow
def test_level_1_past_its_offset_reset_matches_go(go_oracle: GoOracle) -> None:
    """Level 1 rebases its table's offsets once past 2^31 - 2 * 65535 input bytes (bufferReset).

    2.2 GB, mostly zeros with text every MiB (matches across blocks), streamed
    through Go and the port; the outputs' hashes are compared.
    """
    rng = random.Random(9)
    pieces = [text(rng, 60_000) + bytes((1 << 20) - 60_000) for _ in range(4)]
    count = 2100  # MiB: past 2^31 - 131070
    ours = hashlib.sha256()
    proc = subprocess.Popen(
        [str(go_oracle.binary), "1", str(1 << 15)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert proc.stdin is not None and proc.stdout is not None
    stdin = proc.stdin

    def feed() -> None:
        writer = GoGzipWriter(go_header(1), 1)
        with stdin:
            for i in range(count):
                stdin.write(pieces[i % 4])
                ours.update(writer.feed(pieces[i % 4]))
        ours.update(writer.finish())

    thread = threading.Thread(target=feed)
    thread.start()
    theirs = hashlib.sha256()
    while block := proc.stdout.read(1 << 20):
        theirs.update(block)
    thread.join()
    assert proc.wait() == 0
    assert ours.hexdigest() == theirs.hexdigest()


@pytest.mark.slow
@pytest.mark.parametrize("level", [1, 6, 9])
def test_docker_like_writes_of_real_files_reproduce(go_oracle: GoOracle, level: int) -> None:
    """Docker's Write splits (tar headers, 32 KiB pieces, unaligned file ends) on real files.

    A Write ending within 262 bytes of a full window could change Go's bytes
    (see the test above); here dozens of file ends fall there, and the one-big-
    Write model still gives Go's exact blob.
    """
    root = Path(tarfile.__file__).parent
    dirs = [str(root / d) for d in ("asyncio", "email", "encodings", "json", "xml", "unittest")]
    blob = subprocess.run(
        [str(go_oracle.binary), "-tar", str(level), *dirs], capture_output=True, check=True
    ).stdout
    tar = zlib.decompress(blob, 31)
    ends = 0
    with tarfile.open(fileobj=io.BytesIO(tar)) as members:
        for m in members:
            end = m.offset_data + m.size
            ends += m.isreg() and m.size > 0 and end > 65536 and end % 32768 >= 32768 - 258
    assert ends >= 5, "too few file ends near a window's end to exercise the case"
    writer = GoGzipWriter(blob[:10], level)
    ours = b"".join(writer.feed(tar[i : i + (1 << 20)]) for i in range(0, len(tar), 1 << 20))
    assert_same(blob, ours + writer.finish(), f"level {level}, {len(tar)} bytes of tar")


@st.composite
def long_chains(draw: st.DrawFn) -> bytes:
    """A short motif repeated with sparse mutations: hash chains of hundreds of candidates,
    many exactly 32 KiB back (the matcher reads its chain links four at a time, golevels.c
    ``insert_string``; every lane it uses must be the link Go reads)."""
    rng = random.Random(draw(st.integers(0, 2**32)))
    motif = rng.randbytes(draw(st.sampled_from([1, 3, 4, 7, 64, 4096, 32768])))
    out = bytearray()
    size = draw(st.sampled_from([5000, 40000, 70000, 140_000]))
    every = draw(st.sampled_from([1, 17, 300, 5000]))
    while len(out) < size:
        out += motif
        if rng.randrange(every) == 0:
            out[rng.randrange(len(out))] = rng.randrange(256)
    return bytes(out[:size])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=long_chains(), level=st.sampled_from([2, 3, 4, 5, 6, 7, 8, 9]))
def test_long_hash_chains_match_go(go_oracle: GoOracle, data: bytes, level: int) -> None:
    assert gzip_c(data, level) == go_oracle.gzip(data, level)
