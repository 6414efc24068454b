"""The C extensions under misuse (krill/_native/): an error, never a crash.

Each case is one a review of the C found: a crafted restart point whose sums wrap, a
Deflater re-initialised or asked for its restart points while another thread compresses
with the GIL released, a list emptied under a C loop by an item's ``__index__``, token
buffers at odd addresses, an allocation failure reported as a bad stream, and the order
of the checks in ``Compressor.compress`` (a ``__buffer__`` method runs Python code there
on 3.12+). The threads wait on events, never on time.
"""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import zlib
from typing import Any

import pytest

_goflate: Any = pytest.importorskip("krill._goflate", reason="the C extension is not built")
_zdeflate: Any = pytest.importorskip("krill._zdeflate", reason="the C extension is not built")


def _text(seed: int, size: int) -> bytes:
    """Input with matches at many distances (a stream with restart points and tokens)."""
    rnd = random.Random(seed)
    words = [rnd.randbytes(rnd.randrange(3, 40)) for _ in range(200)]
    out = bytearray()
    while len(out) < size:
        out += rnd.choice(words)
    return bytes(out[:size])


def _inflate(stream: bytes) -> bytes:
    return zlib.decompress(stream, -15)


# --- goflate.c: restart points -----------------------------------------------------------------


@pytest.mark.parametrize(
    "start",
    [
        (2**31 - 1, 1, 3, 0, 0),  # win + avail wrapped to INT_MIN: a SEGV before the fix
        (2**31 - 1, 0, 3, 0, 0),
        (2**31 - 2, 1, 258, 1, 0),  # win + length wraps
        (2**31 - 1, 1, 258, 32768, 0),
        (-(2**31), 1, 3, 0, 0),
        (1000, 1, 3, 0, 0),  # just past the data
    ],
)
def test_segment_refuses_a_restart_point_past_the_data(start: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="does not fit the data"):
        _goflate.segment(6, b"x" * 1000, start, -1, True)


# --- goflate.c: one Deflater, two threads ------------------------------------------------------


def test_deflater_is_initialised_once() -> None:
    data = _text(1, 100_000)
    d = _goflate.Deflater(6, record_every=10_000)
    for args in ((6,), (9,), (4, 1000)):
        with pytest.raises(RuntimeError, match="initialised once"):
            d.__init__(*args)
    assert _inflate(d.compress(data) + d.finish()) == data
    with pytest.raises(RuntimeError, match="initialised once"):
        d.__init__(6)
    # An object whose first __init__ failed is not initialised: it may try again.
    bare = _goflate.Deflater.__new__(_goflate.Deflater)
    with pytest.raises(ValueError, match="level"):
        bare.__init__(42)
    with pytest.raises(ValueError, match="not initialised"):
        bare.compress(b"x")
    bare.__init__(6)
    assert _inflate(bare.compress(data) + bare.finish()) == data


def _compress_in_thread(
    d: Any, data: bytes
) -> tuple[threading.Thread, threading.Event, list[bytes]]:
    """Start d.compress(data) in a thread: (thread, set when it has returned, [output])."""
    started, done = threading.Event(), threading.Event()
    out: list[bytes] = []

    def work() -> None:
        started.set()
        try:
            out.append(d.compress(data))
        finally:
            done.set()

    thread = threading.Thread(target=work)
    thread.start()
    started.wait()
    return thread, done, out


def test_reinit_while_another_thread_compresses_is_refused() -> None:
    """Before the fix, __init__ freed the buffers the other thread was compressing with."""
    data = _text(2, 4 << 20)
    d = _goflate.Deflater(9)
    thread, done, out = _compress_in_thread(d, data)
    while True:  # at least once, and as long as the compress runs
        with pytest.raises(RuntimeError, match="initialised once"):
            d.__init__(9)
        if done.is_set():
            break
    thread.join()
    assert _inflate(out[0] + d.finish()) == data


def test_restart_points_while_another_thread_compresses() -> None:
    """restart_points() during a compress() (GIL released, the points growing) is refused;
    before or after it, it is the points so far. Before the fix it read past its list."""
    data = random.Random(3).randbytes(1 << 20) * 8
    for _attempt in range(5):  # until a call lands inside the compress (almost always the first)
        d = _goflate.Deflater(4, record_every=1)
        thread, done, _out = _compress_in_thread(d, data)
        seen: list[list[tuple[int, ...]]] = []
        refused = 0
        while not done.is_set():
            try:
                seen.append(d.restart_points())
            except RuntimeError as err:
                assert "another thread" in str(err)
                refused += 1
        thread.join()
        final = d.restart_points()
        assert final and all(points == final[: len(points)] for points in seen)
        if refused:
            return
    pytest.fail("no restart_points() call landed inside a compress() in 5 attempts")


# --- goreuse.c: sequences changed under the loop, tokens at odd addresses ----------------------


class _Clears:
    """An index whose conversion empties a list, as a hostile caller's could."""

    def __init__(self, victim: list[Any], value: int = 0) -> None:
        self.victim, self.value = victim, value

    def __index__(self) -> int:
        self.victim.clear()
        return self.value


def test_reuse_spans_ranges_emptied_while_parsed() -> None:
    ranges: list[Any] = []
    ranges += [(_Clears(ranges), 1, 0), (1, 2, 0), (2, 3, 0)]
    assert _goflate.reuse_spans(b"", b"", ranges, [], 0, 0) == []
    assert ranges == []


def test_reuse_spans_cuts_emptied_while_parsed() -> None:
    cuts: list[Any] = []
    cuts += [_Clears(cuts, 1), 2, 3]
    assert _goflate.reuse_spans(b"", b"", [(0, 1, 0)], cuts, 0, 0) == []
    assert cuts == []


def test_segment_reuse_emptied_while_parsed() -> None:
    data = b"x" * 100
    reuse: list[Any] = []
    reuse += [(_Clears(reuse), 5, b"", 0), (6, 7, b"", 0)]
    got = _goflate.segment(6, data, None, -1, True, reuse=reuse)
    assert got == _goflate.segment(6, data, None, -1, True, reuse=[(0, 5, b"", 0), (6, 7, b"", 0)])
    assert _inflate(got[0]) == data


def test_token_buffers_at_odd_addresses() -> None:
    """Tokens are native uint32s in any bytes-like object; a memoryview slice one byte in
    gives the same spans and the same segment as the aligned bytes."""
    data = _text(5, 400_000)
    d = _goflate.Deflater(6)
    stream = d.compress(data) + d.finish()
    tokens = _goflate.deflate_tokens(stream)[0]
    odd = memoryview(b"\0" + tokens)[1:]
    args = ([(0, len(data), 0)], [], 0, len(data))
    spans = _goflate.reuse_spans(tokens, tokens, *args)
    assert spans and _goflate.reuse_spans(odd, odd, *args) == spans
    for toks in (tokens, odd):
        reuse = [(p1, p2, toks, 0) for p1, p2, _q1 in spans]
        assert _goflate.segment(6, data, None, -1, True, reuse=reuse)[0] == stream


# --- zblocks.c: out of memory is MemoryError, not "invalid deflate stream" ---------------------

_OOM_SCRIPT = """
import resource
import krill._goflate as g

positions = [0] * (4 << 20)  # 32 MiB of list: each of the three arrays wants as much again
vm = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (vm + (16 << 20), resource.RLIM_INFINITY))
try:
    g.deflate_token_bits(b"\\x03\\x00", 0, positions)
except MemoryError:
    print("MemoryError")
except Exception as err:
    print(type(err).__name__, err)
"""


def test_token_bits_out_of_memory_is_memory_error() -> None:
    """Before the fix, a failed malloc was written through (a SEGV here)."""
    run = subprocess.run(
        [sys.executable, "-c", _OOM_SCRIPT], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "MemoryError"


# --- zdeflate_py.c: the buffer before the checks -----------------------------------------------


def test_compressor_takes_the_buffer_before_its_checks() -> None:
    """compress() gets the buffer, then checks the object, then marks it busy: a non-buffer
    is a TypeError whatever the object's state (the order a __buffer__ method needs)."""
    done = _zdeflate.Compressor(6)
    done.flush()
    bare = _zdeflate.Compressor.__new__(_zdeflate.Compressor)
    for obj in (done, bare):
        with pytest.raises(TypeError):
            obj.compress("not bytes")
    with pytest.raises(ValueError, match="finished"):
        done.compress(b"bytes")
    with pytest.raises(ValueError, match="not initialised"):
        bare.compress(b"bytes")
